"""quantize-dynamic-int8: linears to int8 × int8 GEMMs, activations quantized per token at run time.

Each chosen linear's weight ``W`` (out × in) is quantized once, at compile time, to int8 with one symmetric scale
per output channel (``s_w = max |W_row| / 127``). Its input rows are quantized when the graph runs, to uint8 with
one scale and zero point per row (token), from the row's range: ``s_x = (max(x, 0) - min(x, 0)) / 255``,
``z = round(-min(x, 0) / s_x)``, ``q_x = clamp(round(x · (1/s_x)) + z, 0, 255)``. Per-token scales follow each
token's own range, so a token with an outlier does not crush the resolution of every other token, as one scale
per tensor would (PT2E's dynamic mode). The activations are unsigned because oneDNN's fast int8 kernels take
u8 × s8; s8 × s8 falls to its reference kernel (thousands of times slower here).

The product runs in int32 in oneDNN's ``onednn.qlinear_pointwise`` on a weight prepacked once
(:mod:`fxopt.onednn_int8`; Inductor's freezing folds the prepack into a constant), which returns
``Σ q_x · q_w · s_w``; the zero point is removed with the weight's scaled row sums and the row scale applied:
``y = (acc - z · Σ_k q_w · s_w) · s_x`` (+ bias). This epilogue fuses into neighbouring pointwise kernels. The
quantization of ``x`` is one op, ``fxopt::quantize_rows`` (:mod:`fxopt.native_kernels`), so Inductor stores ``x``
once instead of recomputing its producer (a GELU's erf) for the row's range and again to quantize; where fxopt's
native kernels do not build, it is the same arithmetic as aten ops (amin, amax, round, clamp), which Inductor
fuses. ``tests/test_quantize_dynamic_int8.py`` reads Inductor's generated code to prove
the int8 kernel runs.

Lossy (``tolerance="budget"``): the accuracy is held end to end by the planner (:mod:`fxopt.quant_planner`) or
measured by ``fxopt bench``. ``only`` restricts the pass to linears whose weight name or module path contains
one of its strings; ``skip`` keeps those in their current precision (``skip=[lm_head,down_proj]``).

Before::

    %proj.weight = const : f32[32, 64]
    %linear = aten.linear(%x, %proj.weight, %proj.bias) : f32[batch, 10, 32]

After::

    %_fxopt_linear_int8 = const : i8[32, 64]
    %_fxopt_linear_scales = const : f32[32]
    %_fxopt_linear_colsum = const : f32[32]
    %view_default = aten.view(%x, [-1, 64]) : f32[10*batch, 64]
    %quantize_rows_default = fxopt.quantize_rows(%view_default) : (u8[10*batch, 64], f32[10*batch, 1], f32[10*batch, 1])
    %getitem = getitem(%quantize_rows_default, 0) : u8[10*batch, 64]
    %getitem_1 = getitem(%quantize_rows_default, 1) : f32[10*batch, 1]
    %getitem_2 = getitem(%quantize_rows_default, 2) : f32[10*batch, 1]
    %qlinear_prepack_default = onednn.qlinear_prepack(%_fxopt_linear_int8, None) : i8[64, 32]
    %qlinear_pointwise_default = onednn.qlinear_pointwise(%getitem, 1.0, 0, %qlinear_prepack_default, %_fxopt_linear_scales, None, None, 1.0, 0, float32, 'none', [], '') : f32[10*batch, 32]
    %mul_tensor = aten.mul.Tensor(%getitem_2, %_fxopt_linear_colsum) : f32[10*batch, 32]
    %sub_tensor = aten.sub.Tensor(%qlinear_pointwise_default, %mul_tensor) : f32[10*batch, 32]
    %mul_tensor_1 = aten.mul.Tensor(%sub_tensor, %getitem_1) : f32[10*batch, 32]
    %add_tensor = aten.add.Tensor(%mul_tensor_1, %proj.bias) : f32[10*batch, 32]
    %sym_size_int = aten.sym_size.int(%x, 0) : sym batch
    %view_default_1 = aten.view(%add_tensor, [%sym_size_int, 10, 32]) : f32[batch, 10, 32]
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from fxopt import native_kernels
from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.onednn_int8 import emit_qlinear
from fxopt.passes.quantize_weights_int8 import quantize_per_channel, rewrite_linears

aten = torch.ops.aten

#: smallest per-token scale: a row of zeros quantizes to zeros instead of dividing by zero
MIN_SCALE = 1e-10


@dataclass
class DynamicInt8Options:
    only: tuple[str, ...] = ()  # quantize only linears whose weight name or module path contains one of these
    skip: tuple[str, ...] = ()  # keep these linears as they are (by weight name or module path substring)


def scaled_row_sums(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``Σ_k q_w · s_w`` per output channel: what a per-token zero point adds to each accumulator, once scaled."""
    return q.sum(dim=1, dtype=torch.int32).float() * scales


def quantize_per_token(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-token quantization of a 2-D fp32 ``rows``, eagerly: ``(q, scale, zero_point)`` with ``q`` uint8 and
    the other two of shape (rows, 1), ``rows ≈ (q - zero_point) · scale``. What the graph computes, bit for bit:
    ``fxopt::quantize_rows`` where fxopt's native kernels build (:mod:`fxopt.native_kernels`), these aten ops
    elsewhere."""
    if native_kernels.available("quantize_rows"):
        return torch.ops.fxopt.quantize_rows(rows)
    low = rows.amin(-1, keepdim=True).clamp_max(0.0)
    high = rows.amax(-1, keepdim=True).clamp_min(0.0)
    scale = ((high - low) / 255.0).clamp_min(MIN_SCALE)
    zero_point = torch.round(-low / scale)
    q = (torch.round(rows * scale.reciprocal()) + zero_point).clamp(0.0, 255.0).to(torch.uint8)
    return q, scale, zero_point


def quantize_rows(rw, rows, before):
    """Emit the per-token asymmetric uint8 quantization of a 2-D fp32 ``rows``: ``(q, scale, zero_point)``, the
    last two of shape (rows, 1), with ``rows ≈ (q - zero_point) · scale`` (:func:`quantize_per_token`). One
    ``fxopt::quantize_rows`` where fxopt's native kernels build: as an extern op it has Inductor store ``rows``
    once, where a fused loop would compute what produced them (a GELU) once for the row's range and again to
    quantize; elsewhere the aten ops, which Inductor fuses into the producer."""
    def call(op, *args):
        return rw.call(op, args, before=before)

    if native_kernels.available("quantize_rows"):
        out = call(torch.ops.fxopt.quantize_rows.default, rows)
        return tuple(call(operator.getitem, out, i) for i in range(3))
    low = call(aten.clamp_max.default, call(aten.amin.default, rows, [-1], True), 0.0)
    high = call(aten.clamp_min.default, call(aten.amax.default, rows, [-1], True), 0.0)
    scale = call(aten.clamp_min.default, call(aten.div.Tensor, call(aten.sub.Tensor, high, low), 255.0), MIN_SCALE)
    zero_point = call(aten.round.default, call(aten.div.Tensor, call(aten.neg.default, low), scale))
    scaled = call(aten.mul.Tensor, rows, call(aten.reciprocal.default, scale))
    shifted = call(aten.add.Tensor, call(aten.round.default, scaled), zero_point)
    q = rw.call(aten._to_copy.default, (call(aten.clamp.default, shifted, 0.0, 255.0),), {"dtype": torch.uint8},
                before=before)
    return q, scale, zero_point


@graph_pass("quantize-dynamic-int8", options=DynamicInt8Options, level=2, tolerance="budget",
            after=("fuse-sibling-linears",), before=("select-gemm-backend",))
def quantize_dynamic_int8(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Linears → oneDNN int8 GEMMs: per-token dynamic activation scales, per-channel weight scales."""
    opts: DynamicInt8Options = ctx.options
    quantized: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def quantize(w):
        if id(w) not in quantized:
            q, scales = quantize_per_channel(w)
            scales = scales.float()
            quantized[id(w)] = q, scales, scaled_row_sums(q, scales)
        return quantized[id(w)]

    def constants(w):
        return [("int8", ("int8-per-channel", w), lambda: quantize(w)[0]),
                ("scales", ("int8-scales", "float32", w), lambda: quantize(w)[1]),
                ("colsum", ("int8-scaled-row-sums", w), lambda: quantize(w)[2])]

    def kernel(rw, rows, consts, before):
        q_rows, row_scale, zero_point = quantize_rows(rw, rows, before)
        acc = emit_qlinear(rw, q_rows, consts[0], consts[1], before)  # Σ q_x·q_w·s_w, zero point not removed
        correction = rw.call(aten.mul.Tensor, (zero_point, consts[2]), before=before)
        out = rw.call(aten.sub.Tensor, (acc, correction), before=before)
        return rw.call(aten.mul.Tensor, (out, row_scale), before=before)

    rw = rewrite_linears(gm, opts.skip, torch.float32, kernel, constants, only=opts.only, precision="int8")
    return rw.result()
