"""fuse-gelu-quantize-rows: a dynamic int8 linear's epilogue, its GELU and the next int8 linear's per-token
quantization as one native kernel.

In a transformer's MLP on ``quantize-dynamic-int8``, the up projection's int32 product is dequantized (its rows'
zero points removed, their scales and the bias applied), passed through GELU and quantized again, per token, for
the down projection. Unfused, Inductor runs the epilogue and the GELU as one loop that writes fp32 rows, and
``fxopt::quantize_rows`` reads them back: on MiniLM (1024 × 1,536 per layer) that is 12.6 MB of fp32 traffic
per layer for a result that is 1.5 MB of uint8 codes, and Inductor's vectorized ``erf`` is slower than the
rational approximation the kernel uses. ``fxopt::gelu_quantize_rows`` (:mod:`fxopt.native_kernels`) reads each
row of the product once, keeps its GELU in L1 and writes only the codes, scales and zero points.

Runs after the precision passes; only where fxopt's native kernels build (elsewhere the graph is left as it is).
The match is exact in form: ``quantize_rows(view?(gelu(view?(add?(mul(sub(acc, mul(zero_point, colsum)),
scale), bias)))))``, where ``acc`` is a ``onednn.qlinear_pointwise``, the GELU is the erf form, and nothing else
reads the epilogue or the GELU's values (a read of their sizes moves to the product's, or to the size a view in
the chain was given). Lossy at fp32 rounding (``tolerance="budget"``): the kernel's ``erf`` is within 5e-7 of
ATen's, and a value on a rounding boundary can quantize one step away.

Before::

    %mul = aten.mul.Tensor(%getitem_2, %w_colsum) : f32[10*batch, 32]
    %sub = aten.sub.Tensor(%qlinear_pointwise, %mul) : f32[10*batch, 32]
    %mul_1 = aten.mul.Tensor(%sub, %getitem_1) : f32[10*batch, 32]
    %add = aten.add.Tensor(%mul_1, %bias) : f32[10*batch, 32]
    %gelu = aten.gelu(%add) : f32[10*batch, 32]
    %quantize_rows_1 = fxopt.quantize_rows(%gelu) : (u8[10*batch, 32], f32[10*batch, 1], f32[10*batch, 1])
    %getitem_3 = getitem(%quantize_rows_1, 0) : u8[10*batch, 32]
    %getitem_4 = getitem(%quantize_rows_1, 1) : f32[10*batch, 1]
    %getitem_5 = getitem(%quantize_rows_1, 2) : f32[10*batch, 1]
    %to = aten.to.dtype(%getitem_3, float32) : f32[10*batch, 32]
    %sub_1 = aten.sub.Tensor(%to, %getitem_5) : f32[10*batch, 32]
    %mul_2 = aten.mul.Tensor(%sub_1, %getitem_4) : f32[10*batch, 32]

After::

    %gelu_quantize_rows_default = fxopt.gelu_quantize_rows(%qlinear_pointwise, %getitem_2, %getitem_1, %w_colsum, %bias) : (u8[10*batch, 32], f32[10*batch, 1], f32[10*batch, 1])
    %getitem_6 = getitem(%gelu_quantize_rows_default, 0) : u8[10*batch, 32]
    %getitem_7 = getitem(%gelu_quantize_rows_default, 1) : f32[10*batch, 1]
    %getitem_8 = getitem(%gelu_quantize_rows_default, 2) : f32[10*batch, 1]
    %to = aten.to.dtype(%getitem_6, float32) : f32[10*batch, 32]
    %sub_1 = aten.sub.Tensor(%to, %getitem_8) : f32[10*batch, 32]
    %mul_2 = aten.mul.Tensor(%sub_1, %getitem_7) : f32[10*batch, 32]
"""
from __future__ import annotations

import operator

import torch

from fxopt import native_kernels
from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.rewriter import Rewriter

aten = torch.ops.aten


def _value_users(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The users that read ``node``'s values (reads of its sizes aside)."""
    return [u for u in node.users if u.target is not aten.sym_size.int]


def _size_sources(nodes: list[torch.fx.Node], acc: torch.fx.Node) -> dict[torch.fx.Node, object] | None:
    """For each size read (``aten.sym_size.int``) of a node about to go, what gives the same size without it: the
    product's own size where the shapes agree, else the size a view in the chain was given. None when one has no
    such source."""
    views = [n for n in nodes if n.target is aten.view.default]
    sources = {}
    for node in nodes:
        for user in node.users:
            if user.target is not aten.sym_size.int:
                continue
            dim = user.args[1]
            if tuple(node.meta["val"].shape) == tuple(acc.meta["val"].shape):
                sources[user] = ("size", dim)
                continue
            given = [v.args[1][dim] for v in views if tuple(v.meta["val"].shape) == tuple(node.meta["val"].shape)
                     and isinstance(v.args[1][dim], torch.fx.Node)]
            if not given:
                return None
            sources[user] = ("node", given[0])
    return sources


def _match(rows: torch.fx.Node):
    """``(acc, zero_point, scale, colsum, bias, size_sources)`` when ``quantize_rows``'s input is a GELU of a
    dynamic int8 linear's epilogue, else None; ``size_sources`` as :func:`_size_sources` gives them for the nodes
    the fused op replaces."""
    nodes, x = [], rows
    if x.target is aten.view.default:
        nodes.append(x)
        x = x.args[0]
    if x.target is not aten.gelu.default or x.kwargs.get("approximate", "none") != "none" or len(x.args) > 1:
        return None
    nodes.append(x)
    x = x.args[0]
    if x.target is aten.view.default:
        nodes.append(x)
        x = x.args[0]
    bias = None
    if x.target is aten.add.Tensor:
        nodes.append(x)
        x, bias = x.args
    if not isinstance(x, torch.fx.Node) or x.target is not aten.mul.Tensor:
        return None
    nodes.append(x)
    sub, scale = x.args
    if not isinstance(sub, torch.fx.Node) or sub.target is not aten.sub.Tensor:
        return None
    nodes.append(sub)
    acc, correction = sub.args
    if (not isinstance(acc, torch.fx.Node) or acc.target is not torch.ops.onednn.qlinear_pointwise.default
            or not isinstance(correction, torch.fx.Node) or correction.target is not aten.mul.Tensor):
        return None
    nodes.append(correction)
    zero_point, colsum = correction.args
    values = [acc, zero_point, scale, colsum] + ([bias] if bias is not None else [])
    if not all(isinstance(v, torch.fx.Node) and v.meta["val"].dtype == torch.float32 for v in values):
        return None
    out = acc.meta["val"]
    if (out.dim() != 2 or tuple(colsum.meta["val"].shape) != (out.shape[1],)
            or bias is not None and tuple(bias.meta["val"].shape) != (out.shape[1],)
            or tuple(zero_point.meta["val"].shape) != (out.shape[0], 1)
            or tuple(scale.meta["val"].shape) != (out.shape[0], 1)):
        return None
    if any(len(_value_users(n)) != 1 for n in [acc, *nodes]):  # nothing else may read the values that go
        return None
    sources = _size_sources(nodes, acc)
    if sources is None:
        return None
    return acc, zero_point, scale, colsum, bias, sources


@graph_pass("fuse-gelu-quantize-rows", level=2, tolerance="budget",
            after=("quantize-dynamic-int8", "quantize-static-int8", "cast-linears-bf16"),
            before=("select-gemm-backend",))
def fuse_gelu_quantize_rows(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """dequantize → GELU → per-token quantize, between two dynamic int8 linears → one ``fxopt::gelu_quantize_rows``."""
    rw = Rewriter(gm)
    candidates = list(gm.graph.find_nodes(op="call_function", target=torch.ops.fxopt.quantize_rows.default))
    if not candidates:
        return rw.result()
    if not native_kernels.available("gelu_quantize_rows"):
        rw.count(f"left alone (native kernel unavailable: {native_kernels.why_unavailable('gelu_quantize_rows')})")
        return rw.result()
    for quantize in candidates:
        matched = _match(quantize.args[0])
        if matched is None:
            continue
        acc, zero_point, scale, colsum, bias, sources = matched
        for read, (kind, source) in sources.items():  # size reads of what goes, from what stays
            if kind == "size":
                rw.update(read, args=(acc, source))
            else:
                rw.replace(read, source)
        fused = rw.call(torch.ops.fxopt.gelu_quantize_rows.default, (acc, zero_point, scale, colsum, bias),
                        before=quantize)
        for user in list(quantize.users):
            rw.replace(user, rw.call(operator.getitem, (fused, user.args[1]), before=user))
        rw.count("fused")
    rw.remove_unused()
    return rw.result()
