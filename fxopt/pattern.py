"""Declarative rewrites: a pattern and a replacement written as ordinary Python functions over tensors.

    def rms_norm(x, weight, eps=1e-6):                       # the pattern, as modeling code writes it
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def fused(x, weight, eps):                                 # what replaces each match
        return aten.rms_norm(x, [x.shape[-1]], weight, eps)

    fuse_rms_norm = pattern_pass("fuse-rms-norm", rms_norm, fused,
                                 example_inputs=(torch.randn(2, 5, 8), torch.randn(8)))

The pattern is traced with ``torch.export`` to the same ATen level as captured models and cleaned by
``eliminate-dead-nodes`` and ``canonicalize`` (the graph it runs on is too), so it survives no-op casts
and views, and the several spellings of a transpose or softmax dim, in modeling code.

* Tensor parameters match any value; a variable used twice must be the same value both times.
* Parameters with a number default (``eps=1e-6``) match any literal in the place where the pattern uses
  them, and the replacement receives the value found. The pattern is traced with a distinctive value for
  each, so only those places are slots; every other literal must be equal.
* Operands of commutative ops (``mul``, ``add``, …) match in either order (``commutative=False`` on a
  :class:`PatternRule` turns that off).
* The replacement is called on proxies of the matched values (``.shape``/``.dtype``/``.dim()`` read the
  match's metadata) and must call operators (``torch.ops.aten.silu.default``, or the overload packet
  ``aten.silu``, resolved by the arguments); a Python function such as ``torch.nn.functional.silu`` is
  rejected when the pass is created.
* ``where(match) -> bool | str`` can reject a match (a string says why).

Rejections, differing literals, variables bound to two values and operands in an order a rule does not take
are reported in the pass's diagnostics, so a pattern that stops firing after a modeling change says where
and why. When the pass is created, pattern and replacement are run on the example inputs and must agree.

Several rules in one pass, highest ``priority`` first::

    fuse_attention = pattern_pass("fuse-attention", rules=[
        PatternRule("masked attention", masked_attention, masked_sdpa, (q, k, v, mask), priority=1),
        PatternRule("attention", attention, sdpa, (q, k, v)),
    ])
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.fx
from torch.fx.proxy import GraphAppendingTracer, Proxy

from fxopt.errors import PassError
from fxopt.graph_pass import GraphPass, PassContext, PassResult, graph_pass
from fxopt.ir.meta import infer_meta, symbol_map
from fxopt.ir import ops
from fxopt.pattern_matcher import GraphMatcher, bind_literals, explain_near_misses, sentinels
from fxopt.rewriter import Rewriter, inherit_location, is_erased


class PatternError(PassError):
    """A pattern cannot be traced, or its replacement does not compute the same thing."""


@dataclass
class Match:
    """One match, as ``where`` sees it: matched values by parameter name, scalars, and the anchor node."""

    values: dict[str, torch.fx.Node]
    scalars: dict[str, Any]
    anchor: torch.fx.Node
    gm: torch.fx.GraphModule

    def val(self, name: str):
        """The matched value's fake tensor (shape, dtype)."""
        return self.values[name].meta.get("val")

    def constant(self, name: str) -> torch.Tensor | None:
        """The real tensor when the matched value is a weight or buffer, else None."""
        return Rewriter(self.gm).constant(self.values[name])


@dataclass
class PatternRule:
    """One pattern → replacement rule; see the module docstring."""

    name: str
    pattern: Callable
    replacement: Callable
    example_inputs: tuple
    where: Callable[[Match], bool | str] | None = None
    priority: int = 0
    rtol: float = 1e-5
    commutative: bool = True
    _graph: torch.fx.Graph | None = field(default=None, repr=False)
    _tensor_params: list[str] = field(default_factory=list, repr=False)
    _scalar_params: dict[str, Any] = field(default_factory=dict, repr=False)
    _slots: dict[tuple[str, int], str] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        sig = inspect.signature(self.pattern)
        for p in sig.parameters.values():
            if isinstance(p.default, (int, float)) and not isinstance(p.default, bool):
                self._scalar_params[p.name] = p.default
            else:
                self._tensor_params.append(p.name)
        if len(self._tensor_params) != len(self.example_inputs):
            raise PatternError(f"pattern {self.name!r} takes tensors {self._tensor_params} but "
                               f"{len(self.example_inputs)} example inputs were given")
        self._check_numerics()  # cheap: runs both functions on the small example inputs
        self._check_replacement_ops()

    @property
    def graph(self) -> torch.fx.Graph:
        """The traced pattern (traced on first use, so that defining passes costs no export at import)."""
        if self._graph is None:
            self._graph = self._trace()
        return self._graph

    def _check_numerics(self) -> None:
        with torch.no_grad():
            expected = self.pattern(*self.example_inputs, **self._scalar_params)
            actual = self.replacement(*self.example_inputs, **self._scalar_params)
        if not torch.allclose(actual, expected, rtol=self.rtol, atol=self.rtol):
            err = (actual - expected).abs().max().item()
            raise PatternError(f"the replacement of pattern {self.name!r} differs from the pattern by {err:.3g} "
                               "on the example inputs")

    def _check_replacement_ops(self) -> None:
        """Call the replacement on proxies of the example inputs: it must emit operators only."""
        graph = torch.fx.Graph()
        gm = torch.fx.GraphModule(torch.nn.Module(), graph)
        inputs = []
        for name, example in zip(self._tensor_params, self.example_inputs):
            node = graph.placeholder(name)
            node.meta["val"] = example
            inputs.append(node)
        out = graph.output(None)
        with torch.no_grad():
            _insert_replacement(self, gm, out, inputs, self._scalar_params)

    def _trace(self) -> torch.fx.Graph:
        from fxopt.passes.canonicalize import canonicalize
        from fxopt.passes.eliminate_dead_nodes import eliminate_dead_nodes

        pattern, names = self.pattern, self._tensor_params
        scalars = sentinels(self._scalar_params)

        class Wrapper(torch.nn.Module):
            def forward(self, *args):
                return pattern(*args, **scalars)

        try:
            with torch.no_grad():
                gm = torch.export.export(Wrapper(), tuple(self.example_inputs), strict=False).module()
        except Exception as e:  # noqa: BLE001
            hint = (f" (it is traced with distinctive values for its number parameters {list(scalars)}: a number "
                    "that sets a shape or a dim cannot be a parameter; write it as a literal)" if scalars else "")
            raise PatternError(f"pattern {self.name!r} could not be traced{hint}: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}") from e
        for node in list(gm.graph.find_nodes(op="call_module")):
            gm.graph.erase_node(node)
        eliminate_dead_nodes(gm)
        canonicalize(gm)
        graph = gm.graph
        for node, name in zip(graph.find_nodes(op="placeholder"), names):
            node.name = node.target = name
        if any(n.op == "get_attr" for n in graph.nodes):
            raise PatternError(f"pattern {self.name!r} creates constants; pass tensors in as parameters")
        slots = _sentinel_slots(graph, scalars)
        missing = [name for name in scalars if name not in slots.values()]
        if missing:
            raise PatternError(f"pattern {self.name!r}: number parameter(s) {missing} do not appear as a literal in "
                               "the traced graph (used only in arithmetic on other numbers, or in a shape); "
                               "make them literals of the pattern")
        self._slots = slots
        return graph

    def literal_slots(self) -> dict[tuple[str, int], str]:
        """(pattern node name, arg index) → number parameter name: where the pattern uses each parameter."""
        self.graph  # noqa: B018 - tracing finds the slots
        return self._slots


def _sentinel_slots(graph: torch.fx.Graph, values: dict[str, Any]) -> dict[tuple[str, int], str]:
    slots = {}
    for node in graph.nodes:
        for i, a in enumerate(node.args):
            for name, value in values.items():
                if not isinstance(a, (torch.fx.Node, bool)) and isinstance(a, (int, float)) and a == value:
                    slots[(node.name, i)] = name
    return slots


def pattern_pass(name: str, pattern: Callable | None = None, replacement: Callable | None = None, *,
                 example_inputs: Sequence[torch.Tensor] = (), where=None, priority: int = 0,
                 rules: Sequence[PatternRule] = (), level: int = 1, description: str | None = None,
                 after: tuple[str, ...] = ("eliminate-dead-nodes", "canonicalize"), before: tuple[str, ...] = ()) -> GraphPass:
    """A pass that applies one pattern (``pattern``/``replacement``) or several ``rules`` (highest
    ``priority`` first) everywhere in the graph. Stats: matches replaced per rule; diagnostics: why
    near-matches were rejected. ``description`` is the one line ``fxopt passes`` shows (default: the
    pattern's docstring)."""
    all_rules = list(rules)
    if pattern is not None:
        all_rules.append(PatternRule(name, pattern, replacement, tuple(example_inputs), where, priority))
    if not all_rules:
        raise PatternError(f"pattern pass {name!r} has no pattern")
    all_rules.sort(key=lambda r: -r.priority)

    def run(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        rw = Rewriter(gm)
        for rule in all_rules:
            _apply(rule, gm, rw, ctx)
        rw.remove_unused()
        return rw.result()

    run.__doc__ = description or (pattern.__doc__ if pattern is not None else None) or f"Pattern rewrite {name}."
    return graph_pass(name, level=level, after=after, before=before)(run)


def _apply(rule: PatternRule, gm: torch.fx.GraphModule, rw: Rewriter, ctx: PassContext) -> None:
    """Replace matches until none is left (a replacement can be the input of the next match)."""
    matcher = GraphMatcher(rule.graph, commutative=rule.commutative)
    slots = rule.literal_slots()
    rejected: set[torch.fx.Node] = set()
    while True:
        stale = False
        for m in matcher.match(gm.graph):
            anchor = m.returning_nodes[0]
            if anchor in rejected:
                continue
            if any(is_erased(n) for n in m.nodes_map.values()):
                stale = True  # an earlier replacement in this round consumed part of it: match again
                continue
            if not _apply_one(rule, gm, rw, ctx, m, slots):
                rejected.add(anchor)
        if not stale:
            break
    for note in explain_near_misses(rule.name, rule.graph, gm.graph, commutative=rule.commutative,
                                    symbols=symbol_map(gm), skip=rejected):
        ctx.note(note)


def _apply_one(rule, gm, rw, ctx, m, slots) -> bool:
    nodes_map = {p.name: g for p, g in m.nodes_map.items()}
    anchor = m.returning_nodes[0]
    scalars, mismatch = bind_literals(rule.graph, nodes_map, slots, symbol_map(gm))
    if mismatch:
        ctx.note(f"pattern {rule.name!r} near-match at %{anchor.name}: {mismatch}")
        return False
    values = dict(zip(rule._tensor_params, m.placeholder_nodes))
    match = Match(values, scalars, anchor, gm)
    verdict = rule.where(match) if rule.where else True
    if verdict is not True:
        reason = verdict if isinstance(verdict, str) else "where() returned False"
        ctx.note(f"pattern {rule.name!r} matched at %{anchor.name} but was rejected: {reason}")
        rw.count(f"{rule.name} rejected")
        return False
    new_value = _insert_replacement(rule, gm, anchor, m.placeholder_nodes, scalars)
    rw.replace(anchor, new_value)
    rw.count(rule.name)
    return True


class _ValueProxy(Proxy):
    """A proxy for a matched value that answers ``.shape``/``.dtype``/``.dim()`` from the match's metadata."""

    @property
    def shape(self):
        return self.node.meta["val"].shape

    @property
    def dtype(self):
        return self.node.meta["val"].dtype

    def dim(self):
        return self.node.meta["val"].dim()


def _insert_replacement(rule, gm, anchor, inputs, scalars) -> torch.fx.Node:
    graph = gm.graph
    existing = set(graph.nodes)
    tracer = GraphAppendingTracer(graph)
    with graph.inserting_before(anchor):
        proxies = [_ValueProxy(n, tracer) for n in inputs]
        out = rule.replacement(*proxies, **scalars)
    if not isinstance(out, Proxy):
        raise PatternError(f"the replacement of pattern {rule.name!r} must return a tensor computed from its inputs")
    for node in graph.nodes:
        if node not in existing:
            _resolve_overload(rule, node)
            inherit_location(node, anchor)
            infer_meta(gm, node)
    return out.node


def _resolve_overload(rule: PatternRule, node: torch.fx.Node) -> None:
    """Turn a call of an overload packet (``aten.silu``) into its overload (``aten.silu.default``); reject a
    call of anything that is not an operator, which Inductor and the cost model would not see as one."""
    target = node.target
    if isinstance(target, torch._ops.OpOverloadPacket):
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta.get("val"))
        try:
            overload = torch._C._jit_resolve_packet(target._qualified_op_name, *args, **kwargs)
        except RuntimeError as e:
            raise PatternError(f"the replacement of pattern {rule.name!r} calls {target} with arguments none of its "
                               f"overloads takes: {str(e).splitlines()[0]}") from e
        node.target = getattr(target, overload)
    elif node.op == "call_function" and not ops.is_graph_op(target):
        what = f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', target)}"
        raise PatternError(f"the replacement of pattern {rule.name!r} calls {what}, which is not an operator: "
                           "graphs hold torch.ops.* calls only; call the ATen op (for example "
                           "torch.ops.aten.silu.default(x) instead of torch.nn.functional.silu(x))")
    elif node.op == "call_method":
        raise PatternError(f"the replacement of pattern {rule.name!r} calls the tensor method .{target}(), which "
                           "is not an operator: call the ATen op (torch.ops.aten...) instead")
