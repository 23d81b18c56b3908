"""cast-linears-bf16: linears run as bf16 GEMMs; everything around them stays fp32.

bf16 keeps fp32's exponent range and 8 bits of mantissa: on CPUs with AVX512-BF16 or AMX its GEMMs run at 2–4×
the fp32 rate, and a linear's relative error is about 2⁻⁸ per element, averaged down by the dot product. The
pass casts each linear's input rows and (once, at compile time) its weight to bf16, multiplies in bf16 with fp32
accumulation (oneDNN, after Inductor's freezing packs the weight), casts the result back to fp32 and adds the
bias in fp32. Only the linears change: LayerNorm/RMSNorm statistics, softmax and attention, residual additions
and activations stay in fp32 — the casts sit at the region boundaries and fuse into the neighbouring pointwise
kernels. ``only``/``skip`` select linears by weight name or module path substring (the precision planner,
:mod:`fxopt.quant_planner`, fills ``only``).

Lossy (``tolerance="budget"``): accuracy is held end to end by the planner or measured by ``fxopt bench``.

Before::

    %linear_4 = aten.linear(%rms_norm_1, %_fxopt_linear_3_fused_weight) : f32[batch, seq, 3072]

After::

    %_fxopt_linear_4_bf16 = const : bf16[3072, 576]
    %view = aten.view(%rms_norm_1, [-1, 576]) : f32[batch*seq, 576]
    %_to_copy = aten._to_copy(%view, dtype=bfloat16) : bf16[batch*seq, 576]
    %linear_5 = aten.linear(%_to_copy, %_fxopt_linear_4_bf16) : bf16[batch*seq, 3072]
    %_to_copy_1 = aten._to_copy(%linear_5, dtype=float32) : f32[batch*seq, 3072]
    %view_1 = aten.view(%_to_copy_1, [batch, seq, 3072]) : f32[batch, seq, 3072]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.passes.quantize_weights_int8 import rewrite_linears

aten = torch.ops.aten


@dataclass
class CastBf16Options:
    only: tuple[str, ...] = ()  # cast only linears whose weight name or module path contains one of these
    skip: tuple[str, ...] = ()  # keep these linears in fp32


@graph_pass("cast-linears-bf16", options=CastBf16Options, level=2, tolerance="budget",
            after=("fuse-sibling-linears", "quantize-dynamic-int8"), before=("select-gemm-backend",))
def cast_linears_bf16(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Linears → bf16 GEMMs (fp32 accumulation); norms, softmax and residuals stay fp32."""
    opts: CastBf16Options = ctx.options

    def constants(w):
        return [("bf16", ("bf16", w), lambda: w.to(torch.bfloat16))]

    def kernel(rw, rows, consts, before):
        return rw.call(aten.linear.default, (rows, consts[0]), before=before)

    rw = rewrite_linears(gm, opts.skip, torch.bfloat16, kernel, constants, only=opts.only, precision="bf16")
    return rw.result()
