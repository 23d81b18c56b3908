"""quantize-weights-int4: linear weights to 4 bits in groups along the input dimension, each group with its own
scale and zero (asymmetric, min/max); run by ATen's ``_weight_int4pack_mm_for_cpu``.

An eighth of fp32's weight bytes, for decode, where every weight is read once per token. For each group of
``group_size`` input weights of one output channel: ``scale = (max - min) / 15``, ``q = round((w - min) / scale)``
in 0…15, and the kernel computes ``(q - 8) * scale + zero`` with ``zero = min + 8 * scale``. On a model whose
weights come from a 4-bit GGUF with blocks of 32 (SmolLM2's Q4_1: ``w = d * q + m`` per block, ``d`` and ``m``
from the block's min and max), group 32 recovers the very grid the weights lie on.

The kernel is fast with bf16 activations only (a SmolLM2 decode step's worth of weights streamed in 4.9 ms with
bf16 activations, 121 ms with fp32 ones, 24.7 ms for fp32 weights on oneDNN; AMD EPYC, 2 threads), so the
activations are cast to bf16 for it and the scales and zeros are stored in bf16 (``activations="bfloat16"``).
Lossy: ``tolerance="budget"``; a linear whose input width is not a multiple of ``group_size`` stays fp32.

Before::

    %proj.weight = const : f32[32, 64]
    %linear = aten.linear(%x, %proj.weight, %proj.bias) : f32[batch, 10, 32]

After::

    %_fxopt_linear_int4 = const : u8[32, 32]
    %_fxopt_linear_scales_zeros = const : bf16[2, 32, 2]
    %view_default = aten.view(%x, [-1, 64]) : f32[10*batch, 64]
    %_to_copy_default = aten._to_copy(%view_default, dtype=bfloat16) : bf16[10*batch, 64]
    %_weight_int4pack_mm_for_cpu_default = aten._weight_int4pack_mm_for_cpu(%_to_copy_default, %_fxopt_linear_int4, 32, %_fxopt_linear_scales_zeros) : bf16[10*batch, 32]
    %_to_copy_default_1 = aten._to_copy(%_weight_int4pack_mm_for_cpu_default, dtype=float32) : f32[10*batch, 32]
    %add_tensor = aten.add.Tensor(%_to_copy_default_1, %proj.bias) : f32[10*batch, 32]
    %sym_size_int = aten.sym_size.int(%x, 0) : sym batch
    %view_default_1 = aten.view(%add_tensor, [%sym_size_int, 10, 32]) : f32[batch, 10, 32]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.passes.quantize_weights_int8 import rewrite_linears

aten = torch.ops.aten


@dataclass
class WeightInt4Options:
    group_size: Literal[32, 64, 128, 256] = 32
    skip: tuple[str, ...] = ()  # keep these weights (by name or module path substring) in fp32
    activations: Literal["bfloat16", "float32"] = "bfloat16"


def quantize_grouped(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q, scales, zeros)``: ``q`` int32 in 0…15 [out, in], scales and zeros [out, in / group_size] with
    ``weight ≈ (q - 8) * scale + zero`` per group."""
    n, k = weight.shape
    groups = weight.reshape(n, k // group_size, group_size)
    lo, hi = groups.amin(-1), groups.amax(-1)
    scales = ((hi - lo) / 15).clamp(min=1e-12)
    q = torch.round((groups - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.int32).reshape(n, k)
    return q, scales, lo + 8 * scales


def pack_for_cpu(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype):
    """The kernel's layouts: packed 4-bit weights and ``[in / group, out, 2]`` scales-and-zeros."""
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    scales_zeros = torch.stack([scales, zeros], -1).transpose(0, 1).contiguous().to(dtype)
    return packed, scales_zeros


@graph_pass("quantize-weights-int4", options=WeightInt4Options, level=2, tolerance="budget",
            after=("fuse-sibling-linears",), before=("select-gemm-backend",))
def quantize_weights_int4(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Linear weights → 4 bits in groups with a scale and zero each (weight-only), run by _weight_int4pack_mm."""
    opts: WeightInt4Options = ctx.options
    act = getattr(torch, opts.activations)
    group = int(opts.group_size)
    made: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def build(w):
        if id(w) not in made:
            made[id(w)] = pack_for_cpu(*quantize_grouped(w, group), act)
        return made[id(w)]

    def constants(w):
        if w.shape[1] % group:
            return None
        return [("int4", ("int4-grouped", group, w), lambda: build(w)[0]),
                ("scales_zeros", ("int4-scales-zeros", group, str(act), w), lambda: build(w)[1])]

    def kernel(rw, rows, consts, before):
        return rw.call(aten._weight_int4pack_mm_for_cpu.default, (rows, consts[0], group, consts[1]), before=before)

    return rewrite_linears(gm, opts.skip, act, kernel, constants, precision="int4-weight-only").result()
