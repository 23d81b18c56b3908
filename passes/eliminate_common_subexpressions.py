"""eliminate-common-subexpressions: compute each pure expression once.

Two nodes with the same target and the same arguments (after earlier merges) become one. Random ops
(dropout, rand*, bernoulli…), mutating ops and impure nodes are never merged.

Before::

    %tanh_1 = aten.tanh(%x) : f32[batch, 4]
    %mul = aten.mul.Tensor(%tanh, %tanh_1) : f32[batch, 4]

After::

    %mul = aten.mul.Tensor(%tanh, %tanh) : f32[batch, 4]
"""
from __future__ import annotations

import torch
import torch.fx

from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.ir.ops import is_pure
from fxopt.rewriter import Rewriter


def _key(value):
    if isinstance(value, torch.fx.Node):
        return ("node", value)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _key(v)) for k, v in value.items())))
    if isinstance(value, float):
        return ("float", repr(value))  # keeps 0.0 and -0.0, nan and nan apart/together correctly
    try:
        hash(value)
        return (type(value).__name__, value)
    except TypeError:
        return ("repr", repr(value))


@graph_pass("eliminate-common-subexpressions", after=("eliminate-dead-nodes",))
def eliminate_common_subexpressions(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Merge pure nodes that compute the same thing from the same inputs."""
    rw = Rewriter(gm)
    seen: dict = {}
    for node in list(gm.graph.nodes):
        if not is_pure(node):
            continue
        key = (node.target, _key(node.args), _key(node.kwargs))
        first = seen.setdefault(key, node)
        if first is not node:
            rw.replace(node, first)
            rw.count("merged")
    return rw.result()
