"""A third-party-style imperative pass: ``transpose(transpose(x, a, b), a, b)`` → ``x``.

Before::

    %transpose = aten.transpose.int(%x, 1, 2) : f32[batch, 4, 3]
    %transpose_1 = aten.transpose.int(%transpose, 1, 2) : f32[batch, 3, 4]
    %relu = aten.relu(%transpose_1) : f32[batch, 3, 4]

After::

    %relu = aten.relu(%x) : f32[batch, 3, 4]
"""
import torch

import fxopt

aten = torch.ops.aten


def _dims(node):
    a, b = node.args[1], node.args[2]
    rank = node.meta["val"].dim()
    return frozenset((a % rank, b % rank))


@fxopt.node_rewrite("cancel-transpose-pairs")
def cancel_transpose_pairs(node, rw):
    """Two transposes of the same pair of dimensions cancel."""
    if node.target is not aten.transpose.int:
        return None
    inner = node.args[0]
    if isinstance(inner, torch.fx.Node) and inner.target is aten.transpose.int and _dims(inner) == _dims(node):
        rw.count("cancelled")
        return inner.args[0]
    return None
