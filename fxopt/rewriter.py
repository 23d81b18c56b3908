"""Imperative rewrites: a function on one node that returns its replacement, or ``None``.

For what declarative patterns cannot say. Every edit goes through a :class:`Rewriter`, which records
it; the pass's ``changed`` flag and its stats come from those records, not from the author's word::

    @node_rewrite("remove-dropout")
    def remove_dropout(node, rw):
        if node.target is aten.dropout.default:
            rw.count("dropout")
            return node.args[0]          # every use of `node` now uses its input

Before / after::

    %dropout = aten.dropout(%add, 0.1, False) : f32[batch, seq, 384]
    %layer_norm = aten.layer_norm(%dropout, ...)
    →
    %layer_norm = aten.layer_norm(%add, ...)
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import torch
import torch.fx

from fxopt.constant_pool import pool_of
from fxopt.graph_pass import GraphPass, PassContext, PassResult, graph_pass
from fxopt.ir.meta import infer_meta
from fxopt.ir.ops import OWN_CONSTANT_PREFIX  # noqa: F401 - re-exported: where passes and lowering look for it
from fxopt.ir.printer import format_node

aten = torch.ops.aten


class Rewriter:
    """Records every edit made to a graph module; the source of a pass's ``changed`` and stats."""

    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.graph = gm.graph
        self.counts: Counter[str] = Counter()
        self.edits = 0

    # -- reading ------------------------------------------------------------------------------------
    def constant(self, node: torch.fx.Node) -> torch.Tensor | None:
        """The tensor behind a ``get_attr`` node, else None."""
        if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
            return None
        obj = self.gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, torch.Tensor) else None

    # -- editing ------------------------------------------------------------------------------------
    def count(self, what: str, n: int = 1) -> None:
        """Add to the stat ``what`` (e.g. ``"fused qkv"``); shown in the pass's stats."""
        self.counts[what] += n

    def replace(self, node: torch.fx.Node, value: Any) -> None:
        """Make every user of ``node`` use ``value`` (a node or a literal) instead, then erase ``node``."""
        if value is node:
            return
        node.replace_all_uses_with(value) if isinstance(value, torch.fx.Node) else _replace_with_literal(node, value)
        self.graph.erase_node(node)
        self.edits += 1

    def update(self, node: torch.fx.Node, *, args: tuple | None = None, kwargs: dict | None = None) -> None:
        """Change a node's arguments in place (same target), recorded as an edit; its metadata is recomputed
        (users whose shapes then change are caught by ``verify(gm, deep=True)``)."""
        if args is not None:
            node.args = tuple(args)
        if kwargs is not None:
            node.kwargs = dict(kwargs)
        if node.op == "call_function":
            infer_meta(self.gm, node)
        self.edits += 1

    def erase(self, node: torch.fx.Node) -> None:
        if node.users:
            raise ValueError(f"cannot erase a node that is still used: {format_node(node)}")
        self.graph.erase_node(node)
        self.edits += 1

    def call(self, target, args: tuple, kwargs: dict | None = None, *, before: torch.fx.Node) -> torch.fx.Node:
        """Insert ``target(*args, **kwargs)`` before ``before``, with its shape/dtype metadata."""
        with self.graph.inserting_before(before):
            new = self.graph.call_function(target, tuple(args), dict(kwargs or {}))
        inherit_location(new, before)
        infer_meta(self.gm, new)
        self.edits += 1
        return new

    def sizes(self, shape, source: torch.fx.Node, *, before: torch.fx.Node) -> list:
        """``shape`` as view arguments: each symbolic size read from ``source`` at the same axis
        (``aten.sym_size.int``), the others as ints."""
        return [self.call(aten.sym_size.int, (source, i), before=before) if isinstance(d, torch.SymInt) else int(d)
                for i, d in enumerate(shape)]

    def add_constant(self, name_hint: str, tensor: torch.Tensor | Callable[[], torch.Tensor], *,
                     before: torch.fx.Node, key: tuple | None = None) -> torch.fx.Node:
        """Register a constant as a buffer of the graph module and return a ``get_attr`` node for it.

        ``tensor`` is the value or a function that builds it. With ``key`` (a recipe name and the source
        tensors, e.g. ``("cat", w_q, w_k, w_v)``) the value comes from the model's constant pool when the
        graph has one: built once, shared by every graph compiled from the model (:mod:`fxopt.constant_pool`).
        """
        pool = pool_of(self.gm)
        build = tensor if callable(tensor) else (lambda: tensor)
        tensor = pool.get(key, build) if (pool is not None and key is not None) else build().detach().contiguous()
        base = OWN_CONSTANT_PREFIX + "".join(c if c.isalnum() else "_" for c in name_hint)
        name, i = base, 0
        while hasattr(self.gm, name):
            i += 1
            name = f"{base}_{i}"
        self.gm.register_buffer(name, tensor)
        with self.graph.inserting_before(before):
            node = self.graph.get_attr(name)
        infer_meta(self.gm, node)
        self.edits += 1
        return node

    def remove_unused(self) -> int:
        """Erase pure nodes (and unused constants) that nothing uses; returns how many went."""
        removed = 0
        changed = True
        while changed:
            changed = False
            for node in reversed(list(self.graph.nodes)):
                if node.op in ("call_function", "get_attr") and not node.users and not node.is_impure():
                    self.graph.erase_node(node)
                    removed += 1
                    changed = True
        self.edits += removed
        return removed

    def result(self) -> PassResult:
        if self.edits:
            self.graph.lint()
            self.gm.recompile()
        return PassResult(changed=self.edits > 0, stats=dict(self.counts))


def inherit_location(new: torch.fx.Node, origin: torch.fx.Node) -> None:
    """Give a new node the module path and source line of the node it stands in for."""
    for key in ("nn_module_stack", "stack_trace"):
        if key in origin.meta and key not in new.meta:
            new.meta[key] = origin.meta[key]


def _replace_with_literal(node: torch.fx.Node, value) -> None:
    for user in list(node.users):
        user.args = torch.fx.node.map_arg(user.args, lambda a: value if a is node else a)
        user.kwargs = torch.fx.node.map_arg(user.kwargs, lambda a: value if a is node else a)


NodeFn = Callable[[torch.fx.Node, Rewriter], Any]


def node_rewrite(name: str, *, options: type | None = None, level: int = 1,
                 after: tuple[str, ...] = (), before: tuple[str, ...] = (), stage: str = "portable",
                 tolerance: float | str = "exact"):
    """Decorator: a pass that calls ``fn(node, rewriter)`` (or ``fn(node, rewriter, options)``) on every
    ``call_function`` node in order; a non-``None`` return replaces the node. Unused nodes are removed
    at the end."""

    def wrap(fn: NodeFn) -> GraphPass:
        takes_options = fn.__code__.co_argcount >= 3

        def run(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
            rw = Rewriter(gm)
            for node in list(gm.graph.nodes):
                if node.op != "call_function" or node.graph is not gm.graph or is_erased(node):
                    continue
                out = fn(node, rw, ctx.options) if takes_options else fn(node, rw)
                if out is not None:
                    rw.replace(node, out)
            rw.remove_unused()
            return rw.result()

        run.__doc__ = fn.__doc__
        run.__name__ = fn.__name__
        return graph_pass(name, options=options, level=level, after=after, before=before, stage=stage,
                          tolerance=tolerance)(run)

    return wrap


def is_erased(node: torch.fx.Node) -> bool:
    """True once a node was removed from its graph (it may still sit in a list built before)."""
    return getattr(node, "_erased", False)
