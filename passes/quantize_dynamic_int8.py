"""quantize-dynamic-int8: linears to int8 × int8 GEMMs, activations quantized per token at run time.

Each chosen linear's weight ``W`` (out × in) is quantized once, at compile time, to int8 with one symmetric scale
per output channel (``s_w = max |W_row| / 127``). Its input rows are quantized when the graph runs, one symmetric
scale per row (token): ``s_x = max |x_row| / 127``, ``q_x = round(x / s_x)``. Per-token scales follow each token's
own range, so a token with an outlier does not crush the resolution of every other token, as one scale per
tensor would (PT2E's dynamic mode). The product runs in int32 and is scaled back: ``y = (q_x @ q_wᵀ) · s_x · s_w``.

The IR form is the one Inductor's x86 freezing pass recognises (``_register_smooth_quant_int_mm_pattern`` in
``torch/_inductor/fx_passes/quantization.py``, the pattern torchao's int8 dynamic linear produces):
``mul(mul(convert(_int_mm(q_x, q_wᵀ)), s_x), s_w)`` with a constant ``q_wᵀ`` becomes oneDNN's int8 GEMM
``onednn.qlinear_pointwise`` on a weight prepacked once; the quantization of ``x`` and the scaling fuse into the
neighbouring pointwise kernels. ``tests/test_quantize_dynamic_int8.py`` reads Inductor's generated code to
prove the int8 kernel runs.

Lossy (``tolerance="budget"``): the accuracy is held end to end by the planner (:mod:`fxopt.quant_planner`) or
measured by ``fxopt bench``. ``only`` restricts the pass to linears whose weight name or module path contains
one of its strings; ``skip`` keeps those in their current precision (``skip=[lm_head,down_proj]``).

Before::

    %linear_2 = aten.linear(%layer_norm, %_fxopt_linear_fused_weight, %_fxopt_linear_fused_bias) : f32[batch, seq, 1152]

After::

    %_fxopt_linear_2_int8_t = const : i8[384, 1152]
    %_fxopt_linear_2_scales = const : f32[1152]
    %view = aten.view(%layer_norm, [-1, 384]) : f32[batch*seq, 384]
    %abs_1 = aten.abs(%view) : f32[batch*seq, 384]
    %amax = aten.amax(%abs_1, [-1], True) : f32[batch*seq, 1]
    %div = aten.div(%amax, 127.0) : f32[batch*seq, 1]
    %clamp_min = aten.clamp_min(%div, 1e-10) : f32[batch*seq, 1]
    %div_1 = aten.div(%view, %clamp_min) : f32[batch*seq, 384]
    %round_1 = aten.round(%div_1) : f32[batch*seq, 384]
    %clamp = aten.clamp(%round_1, -127.0, 127.0) : f32[batch*seq, 384]
    %_to_copy = aten._to_copy(%clamp, dtype=int8) : i8[batch*seq, 384]
    %_int_mm = aten._int_mm(%_to_copy, %_fxopt_linear_2_int8_t) : i32[batch*seq, 1152]
    %_to_copy_1 = aten._to_copy(%_int_mm, dtype=float32) : f32[batch*seq, 1152]
    %mul = aten.mul(%_to_copy_1, %clamp_min) : f32[batch*seq, 1152]
    %mul_1 = aten.mul(%mul, %_fxopt_linear_2_scales) : f32[batch*seq, 1152]
    %add = aten.add(%mul_1, %_fxopt_linear_fused_bias) : f32[batch*seq, 1152]
    %view_1 = aten.view(%add, [batch, seq, 1152]) : f32[batch, seq, 1152]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

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


def quantize_rows(rw, rows, before):
    """Emit the per-token asymmetric uint8 quantization of a 2-D fp32 ``rows``: ``(q, scale, zero_point)``, the
    last two of shape (rows, 1), with ``rows ≈ (q - zero_point) · scale``."""
    def call(op, *args):
        return rw.call(op, args, before=before)

    low = call(aten.clamp_max.default, call(aten.amin.default, rows, [-1], True), 0.0)
    high = call(aten.clamp_min.default, call(aten.amax.default, rows, [-1], True), 0.0)
    scale = call(aten.clamp_min.default, call(aten.div.Tensor, call(aten.sub.Tensor, high, low), 255.0), MIN_SCALE)
    zero_point = call(aten.round.default, call(aten.div.Tensor, call(aten.neg.default, low), scale))
    shifted = call(aten.add.Tensor, call(aten.round.default, call(aten.div.Tensor, rows, scale)), zero_point)
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
            quantized[id(w)] = q, scales, q.sum(dim=1, dtype=torch.int32).float() * scales
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
