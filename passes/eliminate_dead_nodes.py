"""eliminate-dead-nodes: drop nodes that do no work in an inference graph.

Removes dropout (identity in eval mode), export's runtime assertions (``_assert_*``; fxopt checks
inputs at call time instead), no-op conversions and views (``to`` to the same dtype and device,
``view``/``reshape``/``expand``/full ``slice`` to the same shape, ``alias``, ``detach``), arithmetic
identities (``x + 0``, ``x * 1``, ``x - 0``, ``x / 1``) and every node whose result nothing uses.

Before::

    %_assert_tensor_metadata_default = aten._assert_tensor_metadata(%x, dtype=float32, device='cpu', layout=torch.strided) : ?
    %to = aten.to.dtype(%x, float32) : f32[batch, 5, 4]
    %dropout = aten.dropout(%to, 0.1, False) : f32[batch, 5, 4]
    %add_1 = aten.add.Tensor(%dropout, 1) : f32[batch, 5, 4]

After::

    %add_1 = aten.add.Tensor(%x, 1) : f32[batch, 5, 4]

Precondition: the graph is an inference graph (captured in eval mode under ``no_grad``).
"""
from __future__ import annotations

import torch

from fxopt.ir.meta import tensor_val
from fxopt.ir.ops import ALIASES, ASSERTIONS, CONVERSIONS, IDENTITY_SCALAR, VIEWS
from fxopt.rewriter import node_rewrite

aten = torch.ops.aten

def _same_type(a, b) -> bool:
    """Same dtype, device and (symbolic) shape."""
    va, vb = tensor_val(a), tensor_val(b)
    if va is None or vb is None or va.dtype != vb.dtype or va.device != vb.device:
        return False
    if va.dim() != vb.dim():
        return False
    return all(str(x) == str(y) for x, y in zip(va.shape, vb.shape))


@node_rewrite("eliminate-dead-nodes", level=1)
def eliminate_dead_nodes(node, rw):
    """Drop dropout, assertions, no-op conversions/views, arithmetic identities and unused nodes."""
    target = node.target
    if target in ASSERTIONS:
        rw.count("assertions")
        rw.erase(node)
        return None
    if target is aten.dropout.default:
        rw.count("dropout")
        return node.args[0]
    source = node.args[0] if node.args else None
    if target in ALIASES and _same_type(node, source):
        rw.count("aliases")
        return source
    if target in CONVERSIONS and _same_type(node, source) and "memory_format" not in node.kwargs:
        rw.count("no-op conversions")
        return source
    if target in VIEWS and _same_type(node, source):
        if target is aten.slice.Tensor and not _is_full_slice(node):
            return None
        rw.count("no-op views")
        return source
    identity = IDENTITY_SCALAR.get(target)
    if identity is not None and len(node.args) == 2 and not isinstance(node.args[1], torch.fx.Node):
        if node.args[1] == identity and not node.kwargs and _same_type(node, source):
            rw.count("arithmetic identities")
            return source
    return None


def _is_full_slice(node) -> bool:
    args = list(node.args) + [None] * (5 - len(node.args))
    start, step = args[2], args[4]
    return start in (None, 0) and step in (None, 1)
