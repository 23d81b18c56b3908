"""canonicalize: one spelling for operations that modeling code writes several ways.

So that a pattern written once matches every model: ``transpose(x, -1, -2)`` and ``transpose(x, 3, 2)``
become ``transpose(x, 2, 3)`` (non-negative dims, smaller first) and reductions/softmax over a
negative dim name it positively. Declarative patterns are canonicalized the same way before matching.

Before::

    %transpose = aten.transpose.int(%x, -1, -2) : f32[batch, 4, 3]
    %softmax = aten.softmax.int(%transpose, -1) : f32[batch, 4, 3]

After::

    %transpose = aten.transpose.int(%x, 1, 2) : f32[batch, 4, 3]
    %softmax = aten.softmax.int(%transpose, 2) : f32[batch, 4, 3]
"""
from __future__ import annotations

import torch

from fxopt.ir.meta import tensor_val
from fxopt.rewriter import node_rewrite

aten = torch.ops.aten
DIM_ARG1 = {aten.softmax.int, aten._softmax.default, aten._log_softmax.default, aten.log_softmax.int}


@node_rewrite("canonicalize", after=("eliminate-dead-nodes",))
def canonicalize(node, rw):
    """Normalize dims: transpose pairs sorted and non-negative, softmax dims non-negative."""
    source = tensor_val(node.args[0]) if node.args else None
    if source is None:
        return None
    rank = source.dim()
    if node.target is aten.transpose.int and rank:
        a, b = sorted((node.args[1] % rank, node.args[2] % rank))
        if (a, b) != tuple(node.args[1:3]):
            rw.update(node, args=(node.args[0], a, b))
            rw.count("transposes")
    elif node.target in DIM_ARG1 and rank and isinstance(node.args[1], int) and node.args[1] < 0:
        rw.update(node, args=(node.args[0], node.args[1] % rank, *node.args[2:]))
        rw.count("softmax dims")
    return None
