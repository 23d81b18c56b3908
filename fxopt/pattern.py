"""Declarative rewrites: a pattern and a replacement written as ordinary Python functions over tensors.

    def rms_norm(x, weight, eps=1e-6):                       # the pattern, as modeling code writes it
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def fused(x, weight, eps):                                 # what replaces each match
        return aten.rms_norm(x, [x.shape[-1]], weight, eps)

    fuse_rms_norm = pattern_pass("fuse-rms-norm", rms_norm, fused,
                                 example_inputs=(torch.randn(2, 5, 8), torch.randn(8)))

The pattern is traced with ``torch.export`` to the same ATen level as captured models and cleaned by
``eliminate-dead-nodes`` and ``canonicalize`` (the graph it runs on is too), so it survives no-op casts
and views, and the several spellings of a transpose or softmax dim, in modeling code. Tensor parameters match any value; parameters with a number default (``eps=1e-6``) match any
literal in that position and are handed to the replacement with the value found; every other literal must
be equal. The replacement is called on proxies of the matched values (``.shape``/``.dtype``/``.dim()``
read the match's metadata) and should call ``torch.ops.aten`` ops. ``where(match) -> bool | str`` can reject
a match (a string says why); rejections and literal mismatches are reported in the pass's diagnostics,
so a pattern that stops firing after a modeling change says where and why.

When the pass is created, pattern and replacement are run on the example inputs and must agree.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.fx
from torch.fx.passes.utils.matcher_utils import SubgraphMatcher
from torch.fx.proxy import GraphAppendingTracer, Proxy

from fxopt.errors import PassError
from fxopt.graph_pass import GraphPass, PassContext, PassResult, graph_pass
from fxopt.ir.meta import infer_meta, symbol_map
from fxopt.ir.printer import format_node
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
    _graph: torch.fx.Graph | None = field(default=None, repr=False)
    _tensor_params: list[str] = field(default_factory=list, repr=False)
    _scalar_params: dict[str, Any] = field(default_factory=dict, repr=False)

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

    def _trace(self) -> torch.fx.Graph:
        from fxopt.passes.canonicalize import canonicalize
        from fxopt.passes.eliminate_dead_nodes import eliminate_dead_nodes

        pattern, scalars, names = self.pattern, self._scalar_params, self._tensor_params

        class Wrapper(torch.nn.Module):
            def forward(self, *args):
                return pattern(*args, **scalars)

        try:
            with torch.no_grad():
                gm = torch.export.export(Wrapper(), tuple(self.example_inputs), strict=False).module()
        except Exception as e:  # noqa: BLE001
            raise PatternError(f"pattern {self.name!r} could not be traced: {type(e).__name__}: {e}") from e
        for node in list(gm.graph.find_nodes(op="call_module")):
            gm.graph.erase_node(node)
        eliminate_dead_nodes(gm)
        canonicalize(gm)
        graph = gm.graph
        for node, name in zip(graph.find_nodes(op="placeholder"), names):
            node.name = node.target = name
        if any(n.op == "get_attr" for n in graph.nodes):
            raise PatternError(f"pattern {self.name!r} creates constants; pass tensors in as parameters")
        return graph

    def literal_slots(self) -> dict[tuple[str, int], str]:
        """(pattern node name, arg index) → scalar parameter name, for literals equal to a scalar default."""
        slots = {}
        for node in self.graph.nodes:
            for i, a in enumerate(node.args):
                for name, default in self._scalar_params.items():
                    if not isinstance(a, (torch.fx.Node, bool)) and isinstance(a, (int, float)) and a == default:
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
    matcher = _Matcher(rule.graph, match_output=False, match_placeholder=False,
                       remove_overlapping_matches=True, ignore_literals=False)
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
            return


def _apply_one(rule, gm, rw, ctx, m, slots) -> bool:
    nodes_map = {p.name: g for p, g in m.nodes_map.items()}
    anchor = m.returning_nodes[0]
    scalars, mismatch = _bind_literals(rule, nodes_map, slots, symbol_map(gm))
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


class _Matcher(SubgraphMatcher):
    """torch.fx's matcher, with tensors matching only tensors and literals matching any literal of the same
    kind; literal *values* are checked afterwards by ``_bind_literals``, which can say which one differed."""

    def _match_literals(self, pn, gn, match) -> bool:
        if isinstance(pn, torch.fx.Node) or isinstance(gn, torch.fx.Node):
            return False
        number = (int, float)
        if isinstance(pn, number) and not isinstance(pn, bool):
            return isinstance(gn, number) and not isinstance(gn, bool)
        return type(pn) is type(gn)


def _bind_literals(rule, nodes_map, slots, symbols):
    scalars: dict[str, Any] = {}
    for pnode in rule.graph.nodes:
        if pnode.op != "call_function":
            continue
        gnode = nodes_map[pnode.name]
        for i, (pa, ga) in enumerate(zip(pnode.args, gnode.args)):
            if isinstance(pa, torch.fx.Node):
                continue
            param = slots.get((pnode.name, i))
            if param is not None:
                if param in scalars and scalars[param] != ga:
                    return None, f"{param} is {scalars[param]} in one place and {ga} in another"
                scalars[param] = ga
            elif pa != ga:
                return None, f"literal {ga!r} ≠ pattern's {pa!r} in {format_node(gnode, symbols)}"
        literal_kwargs = {k: v for k, v in pnode.kwargs.items() if not isinstance(v, torch.fx.Node)}
        if any(gnode.kwargs.get(k) != v for k, v in literal_kwargs.items()):
            return None, f"keyword arguments differ in {format_node(gnode, symbols)}"
    return scalars, None


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
            inherit_location(node, anchor)
            infer_meta(gm, node)
    return out.node
