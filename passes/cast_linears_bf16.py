"""cast-linears-bf16: linears run as bf16 GEMMs; everything around them stays fp32.

bf16 keeps fp32's exponent range and 8 bits of mantissa: on CPUs with AVX512-BF16 or AMX its GEMMs run at 2–4×
the fp32 rate, and a linear's relative error is about 2⁻⁸ per element, averaged down by the dot product. The
pass casts each linear's input rows and (once, at compile time) its weight to bf16, multiplies in bf16 with fp32
accumulation, casts the result back to fp32 and adds the bias in fp32. The target stage's ``pack-linears-bf16``
then puts each such linear on oneDNN's packed weight, with that bias (and a GELU feeding only bf16) in oneDNN's
epilogue. Only the linears change: LayerNorm/RMSNorm statistics, softmax and attention, residual additions
and activations stay in fp32 — the casts sit at the region boundaries and fuse into the neighbouring pointwise
kernels. ``only``/``skip`` select linears by weight name or module path substring (the precision planner,
:mod:`fxopt.quant_planner`, fills ``only``). ``kernel="gemv"`` (``"auto"``: where the example has at most
``GEMV_MAX_ROWS`` rows) keeps the rows fp32 and streams the bf16 weight through :mod:`fxopt.gemv` instead, converted
in registers: a decode step reads half the bytes of fp32 with exact activations (``decode_precision="bf16"``).

Lossy (``tolerance="budget"``): accuracy is held end to end by the planner or measured by ``fxopt bench``.

Before::

    %proj.weight = const : f32[32, 64]
    %linear = aten.linear(%x, %proj.weight, %proj.bias) : f32[batch, 10, 32]

After::

    %_fxopt_linear_bf16 = const : bf16[32, 64]
    %view_default = aten.view(%x, [-1, 64]) : f32[10*batch, 64]
    %_to_copy_default = aten._to_copy(%view_default, dtype=bfloat16) : bf16[10*batch, 64]
    %linear_default = aten.linear(%_to_copy_default, %_fxopt_linear_bf16) : bf16[10*batch, 32]
    %_to_copy_default_1 = aten._to_copy(%linear_default, dtype=float32) : f32[10*batch, 32]
    %add_tensor = aten.add.Tensor(%_to_copy_default_1, %proj.bias) : f32[10*batch, 32]
    %sym_size_int = aten.sym_size.int(%x, 0) : sym batch
    %view_default_1 = aten.view(%add_tensor, [%sym_size_int, 10, 32]) : f32[batch, 10, 32]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fxopt import gemm_backends
from fxopt.gemv import contiguous_strides, write_gemv
from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.ir.meta import rows_at_example
from fxopt.passes.quantize_weights_int8 import rewrite_linears

aten = torch.ops.aten


@dataclass
class CastBf16Options:
    only: tuple[str, ...] = ()  # cast only linears whose weight name or module path contains one of these
    skip: tuple[str, ...] = ()  # keep these linears in fp32
    # "gemm": bf16 rows × bf16 weight; "gemv": fp32 rows × the bf16 weight streamed by fxopt.gemv (a decode step:
    # half the bytes of fp32, activations exact); "auto": gemv up to gemm_backends.GEMV_MAX_ROWS rows at the example
    kernel: Literal["gemm", "gemv", "auto"] = "gemm"


@graph_pass("cast-linears-bf16", options=CastBf16Options, level=2, tolerance="budget",
            after=("fuse-sibling-linears", "quantize-dynamic-int8"), before=("select-gemm-backend",))
def cast_linears_bf16(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Linears → bf16 GEMMs (fp32 accumulation); norms, softmax and residuals stay fp32."""
    opts: CastBf16Options = ctx.options

    def constants(w):
        return [("bf16", ("bf16", w), lambda: w.to(torch.bfloat16))]

    def kernel(rw, rows, consts, before):
        return rw.call(aten.linear.default, (rows, consts[0]), before=before)

    def direct(rw, node, w, bias):
        few_rows = rows_at_example(node, gm) <= gemm_backends.GEMV_MAX_ROWS
        if opts.kernel == "gemm" or (opts.kernel == "auto" and not few_rows) or \
                contiguous_strides(node.args[0].meta["val"]) is None:
            return None
        weight = rw.add_constant(f"{node.name}_bf16", lambda: w.to(torch.bfloat16), before=node, key=("bf16", w))
        rw.count("gemv")
        return write_gemv(rw, node, node.args[0], weight, bias), rw.constant(weight)

    rw = rewrite_linears(gm, opts.skip, torch.bfloat16, kernel, constants, only=opts.only, precision="bf16",
                         direct=direct)
    return rw.result()
