"""Matching a traced pattern graph against a model's graph: commutative operands, number slots, near-misses.

:mod:`fxopt.pattern` traces a pattern function to an ATen graph; this module finds that graph in a model's:

* **commutative operands**: ``x * sigmoid(x)`` also matches ``sigmoid(x) * x`` (``mul``, ``add`` without
  ``alpha``, ``maximum``, … :data:`fxopt.ir.ops.COMMUTATIVE`), trying the written order first and the
  swapped one when it fails. The choice is made node by node, without backtracking across nodes (patterns are small trees);
* **number slots**: the pattern is traced with a distinctive value for each number parameter
  (:func:`sentinels`), so a literal is that parameter's slot only where the sentinel landed, never because
  the default happened to equal another literal (``pow(x, 2) * k`` with ``k=2``);
* **near-misses**: a pattern variable bound to two different values (``x * sigmoid(y)`` against
  ``x * sigmoid(x)``), an operand order a non-commutative rule does not accept, or a differing literal is
  reported with the node where it happened (:func:`explain_near_misses`, :func:`bind_literals`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch.fx.passes.utils.matcher_utils import InternalMatch, SubgraphMatcher

from fxopt.ir import ops
from fxopt.ir.printer import format_node

def is_commutative(node: torch.fx.Node) -> bool:
    """A call whose first two arguments can be swapped (``add`` only without a non-1 ``alpha``)."""
    if node.op != "call_function" or not ops.is_commutative(node.target) or len(node.args) != 2:
        return False
    return node.kwargs.get("alpha", 1) == 1


def sentinels(defaults: dict[str, Any]) -> dict[str, Any]:
    """A distinctive value per number parameter, of the default's type, to trace the pattern with: a literal
    in the traced graph is a parameter's slot exactly when it equals that parameter's sentinel."""
    out = {}
    for i, (name, default) in enumerate(defaults.items()):
        out[name] = 7919 + 2 * i if isinstance(default, int) else (7919 + 2 * i) / 8192  # exact binary fractions
    return out


class GraphMatcher(SubgraphMatcher):
    """torch.fx's matcher, with tensors matching only tensors, literals matching any literal of the same kind
    (values are checked afterwards by :func:`bind_literals`, which says which one differed) and, with
    ``commutative``, the operands of :data:`fxopt.ir.ops.COMMUTATIVE` ops matched in either order."""

    def __init__(self, pattern: torch.fx.Graph, *, commutative: bool = True):
        super().__init__(pattern, match_output=False, match_placeholder=False, remove_overlapping_matches=True,
                         ignore_literals=False)
        self.commutative = commutative

    def _match_literals(self, pn, gn, match) -> bool:
        if isinstance(pn, torch.fx.Node) or isinstance(gn, torch.fx.Node):
            return False
        number = (int, float)
        if isinstance(pn, number) and not isinstance(pn, bool):
            return isinstance(gn, number) and not isinstance(gn, bool)
        return type(pn) is type(gn)

    def _match_nodes(self, pn, gn, match: InternalMatch, node_name_match: str = "") -> bool:
        if pn.op == "placeholder" and pn not in match.nodes_map:
            # Two pattern variables may be the same value (``a * sigmoid(b)`` matches ``x * sigmoid(x)``), but
            # a variable never is a node the pattern itself computes.
            if any(g is gn and p.op != "placeholder" for p, g in match.nodes_map.items()):
                return False
            match.nodes_map[pn] = gn
            return True
        if not (self.commutative and pn not in match.nodes_map and is_commutative(pn) and is_commutative(gn)
                and pn.target == gn.target):
            return super()._match_nodes(pn, gn, match, node_name_match)
        saved = dict(match.nodes_map)
        if super()._match_nodes(pn, gn, match, node_name_match):
            return True
        _restore(match, saved)
        pn.args = (pn.args[1], pn.args[0])  # try the other order; the pattern graph is ours and put back below
        try:
            found = super()._match_nodes(pn, gn, match, node_name_match)
        finally:
            pn.args = (pn.args[1], pn.args[0])
        if not found:
            _restore(match, saved)
        return found


def _restore(match: InternalMatch, saved: dict) -> None:
    # torch's matcher leaves partial entries behind when a subtree fails; undo them before the next try
    match.nodes_map.clear()
    match.nodes_map.update(saved)


def aligned_args(pnode: torch.fx.Node, gnode: torch.fx.Node, nodes_map: dict[str, torch.fx.Node]) -> tuple:
    """``gnode``'s arguments in the order of ``pnode``'s (swapped when a commutative match swapped them)."""
    args = tuple(gnode.args)
    if is_commutative(pnode) and len(args) == 2:
        for i, pa in enumerate(pnode.args):
            if isinstance(pa, torch.fx.Node) and pa.name in nodes_map:
                if nodes_map[pa.name] is not args[i] and nodes_map[pa.name] is args[1 - i]:
                    return args[1], args[0]
                break
    return args


def bind_literals(pattern: torch.fx.Graph, nodes_map: dict[str, torch.fx.Node],
                  slots: dict[tuple[str, int], str], symbols) -> tuple[dict[str, Any] | None, str | None]:
    """The number parameters' values found at their slots, or the first literal that differs."""
    scalars: dict[str, Any] = {}
    for pnode in pattern.nodes:
        if pnode.op != "call_function":
            continue
        gnode = nodes_map[pnode.name]
        for i, (pa, ga) in enumerate(zip(pnode.args, aligned_args(pnode, gnode, nodes_map))):
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


def one_placeholder_per_use(pattern: torch.fx.Graph) -> tuple[torch.fx.Graph, dict[str, str]] | None:
    """A copy of ``pattern`` where each use of a variable used more than once reads its own placeholder, and
    the map from the new placeholders to the variable; ``None`` when every variable is used once."""
    if all(len(p.users) <= 1 and _uses(p) <= 1 for p in pattern.find_nodes(op="placeholder")):
        return None
    relaxed = torch.fx.Graph()
    relaxed.output(relaxed.graph_copy(pattern, {}))
    origin: dict[str, str] = {}
    for ph in list(relaxed.find_nodes(op="placeholder")):
        uses = [(user, i) for user in ph.users for i, a in enumerate(user.args) if a is ph]
        if len(uses) <= 1:
            origin[ph.name] = ph.name
            continue
        for k, (user, i) in enumerate(uses):
            with relaxed.inserting_before(ph):
                new = relaxed.placeholder(f"{ph.name}__use{k}")
            new.meta = dict(ph.meta)
            origin[new.name] = ph.name
            args = list(user.args)
            args[i] = new
            user.args = tuple(args)
        if not ph.users:
            relaxed.erase_node(ph)
    return relaxed, origin


def _uses(node: torch.fx.Node) -> int:
    return sum(1 for user in node.users for a in user.args if a is node)


def explain_near_misses(rule_name: str, pattern: torch.fx.Graph, graph: torch.fx.Graph, *, commutative: bool,
                        symbols, skip: set[torch.fx.Node]) -> list[str]:
    """Why a pattern that almost matches did not: a variable bound to different values, or operands in an
    order a non-commutative rule does not take. ``skip``: anchors already matched or explained."""
    relaxed = one_placeholder_per_use(pattern)
    if relaxed is None and commutative:
        return []
    relaxed_graph, origin = relaxed if relaxed is not None else (pattern, {p.name: p.name for p in
                                                                           pattern.find_nodes(op="placeholder")})
    notes = []
    for m in GraphMatcher(relaxed_graph, commutative=True).match(graph):
        anchor = m.returning_nodes[0]
        if anchor in skip:
            continue
        bound: dict[str, list[torch.fx.Node]] = {}
        for pn, gn in m.nodes_map.items():
            if pn.op == "placeholder":
                bound.setdefault(origin[pn.name], []).append(gn)
        split = {name: nodes for name, nodes in bound.items() if any(n is not nodes[0] for n in nodes)}
        where = format_node(anchor, symbols)
        if split:
            name, nodes = next(iter(split.items()))
            values = " and ".join(sorted({f"%{n.name}" if isinstance(n, torch.fx.Node) else repr(n) for n in nodes}))
            notes.append(f"pattern {rule_name!r} near-match at %{anchor.name}: {name} is bound to {values}, "
                         f"which the pattern needs to be one value ({where})")
        elif not commutative and _needs_swap(m):
            notes.append(f"pattern {rule_name!r} near-match at %{anchor.name}: it matches only with the operands "
                         f"of a commutative op swapped, and this rule has commutative=False ({where})")
    return notes


def _needs_swap(m: InternalMatch) -> bool:
    for pn, gn in m.nodes_map.items():
        if pn.op == "call_function" and is_commutative(pn):
            for pa, ga in zip(pn.args, gn.args):
                if isinstance(pa, torch.fx.Node) and m.nodes_map.get(pa) is not ga:
                    return True
    return False

