"""One rule per op: FLOPs of a node as a sympy expression of its (symbolic) input and output shapes.

Conventions (the same as ``torch.utils.flop_counter``): a multiply-add is 2 FLOPs; GEMM-class FLOPs
(``matmul``) are kept apart from the rest (``elementwise``: pointwise ops, reductions, norms, softmax,
bias adds). Bytes are not computed here: every non-view op reads its tensor inputs and writes its output
(see :mod:`fxopt.cost.estimate`).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import reduce

import sympy
import torch

aten = torch.ops.aten


@dataclass
class OpCost:
    matmul: sympy.Expr = sympy.Integer(0)
    elementwise: sympy.Expr = sympy.Integer(0)
    is_view: bool = False  # no data moves (views, shape queries)
    unread_inputs: tuple[int, ...] = ()  # tensor inputs the kernel does not read (passed for metadata only)
    # what fxopt.cost.kernel_times can time at its shape: ("linear", rows, in, out) for a linear-class GEMM,
    # ("sdpa", batch, heads, queries, keys, head dim, value dim, masked) for attention; estimate() adds
    # ("linear+bias", rows, in, out) and ("op", target, args, kwargs) for the eager graph
    timed: tuple | None = None


@dataclass(frozen=True)
class TensorSpec:
    """A tensor argument of a timed op: its (symbolic) shape and dtype; the timing makes a random one."""
    shape: tuple
    dtype: torch.dtype


def numel(shape) -> sympy.Expr:
    return reduce(operator.mul, shape, sympy.Integer(1))


ZERO = sympy.Integer(0)

# Per-element FLOPs of pointwise and normalization ops (approximate, documented in the README). A fused op costs
# at most what its decomposition does (silu = sigmoid + mul; gelu = the five ops of x·½·(1 + erf(x/√2)), fewer than
# the eight of its tanh form), so a fusion never shows as more FLOPs.
POINTWISE = {
    "add": 1, "sub": 1, "mul": 1, "div": 1, "neg": 1, "rsqrt": 1, "sqrt": 1, "pow": 1, "exp": 1, "log": 1,
    "tanh": 1, "sigmoid": 1, "relu": 1, "abs": 1, "reciprocal": 1, "clamp": 1, "minimum": 1, "maximum": 1,
    "where": 1, "masked_fill": 1, "eq": 1, "ne": 1, "lt": 1, "le": 1, "gt": 1, "ge": 1, "__and__": 1,
    "__or__": 1, "logical_not": 1, "bitwise_not": 1, "sin": 1, "cos": 1, "erf": 1, "floor": 1, "round": 1,
    "gelu": 5, "silu": 2, "hardtanh": 1, "leaky_relu": 1,
}
REDUCTIONS = {"mean": 1, "sum": 1, "amax": 1, "amin": 1, "max": 1, "min": 1, "var": 2, "argmax": 1}
NORMS = {"layer_norm": 8, "rms_norm": 4, "native_layer_norm": 8, "_softmax": 5, "softmax": 5,
         "_log_softmax": 5, "log_softmax": 5, "batch_norm": 4, "_native_batch_norm_legit_no_training": 4,
         "group_norm": 8}
VIEWS = {
    "view", "reshape", "_unsafe_view", "transpose", "permute", "t", "unsqueeze", "squeeze", "expand",
    "slice", "select", "alias", "detach", "sym_size", "split", "split_with_sizes", "unflatten", "flatten",
    "as_strided", "narrow", "unbind", "chunk", "_assert_tensor_metadata", "_assert_scalar",
    "sym_constrain_range_for_size", "lift_fresh_copy", "getitem", "dropout",  # eval-mode dropout is the identity
    "inductor_force_stride_order",  # pins a layout Inductor already makes (select-gemm-backend's gemv)
}
DATA = {"embedding", "cat", "stack", "clone", "contiguous", "_to_copy", "to", "index", "gather", "copy",
        "arange", "full", "zeros", "ones", "new_ones", "new_zeros", "zeros_like", "ones_like", "full_like",
        "scalar_tensor", "repeat", "repeat_interleave", "constant_pad_nd", "pad", "tril", "triu", "empty",
        "fill", "scatter", "index_select", "_unsafe_index", "type_as", "roll", "flip"}
QUANT = {"quantize_per_tensor": 2, "dequantize_per_tensor": 2, "quantize_per_channel": 2,
         "dequantize_per_channel": 2, "choose_qparams": 3,
         "quantize_rows": 6,  # fxopt's per-token quantization: min, max, scale, round, shift, clamp
         "gelu_quantize_rows": 15}  # ... after an int8 epilogue (sub, mul, mul, add) and a GELU (5)


def op_name(target) -> str:
    """``aten.add.Tensor`` → ``add``; ``operator.getitem`` → ``getitem``."""
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.split("::")[-1]
    return getattr(target, "__name__", str(target))


def rule(target, in_shapes: list, out_shapes: list, args: tuple) -> OpCost | None:
    """The cost of one call; None when no rule covers ``target``."""
    name = op_name(target)
    out = out_shapes[0] if out_shapes else ()
    if name in VIEWS:
        return OpCost(is_view=True)
    if name in ("linear", "_linear_pointwise"):  # aten.linear; oneDNN's on a plain weight: (x, weight, bias, ...)
        x, w = in_shapes[0], in_shapes[1]
        m = numel(x[:-1])
        mm = 2 * m * x[-1] * w[0]
        bias = m * w[0] if len(in_shapes) > 2 and in_shapes[2] is not None else ZERO
        return OpCost(matmul=mm, elementwise=bias, timed=("linear", m, x[-1], w[0]))
    if name == "_mkl_linear":  # (x, packed weight, original weight, bias, rows)
        x, w = in_shapes[0], in_shapes[2]
        m = numel(x[:-1])
        bias = m * w[0] if len(in_shapes) > 3 else ZERO
        # MKL reads the packed copy, but its buffer is allocated far larger than the data it holds (11 MiB
        # for a 576×576 weight); the original weight's bytes are what the GEMM streams.
        return OpCost(matmul=2 * m * x[-1] * w[0], elementwise=bias, unread_inputs=(1,),
                      timed=("linear", m, x[-1], w[0]))
    if name == "qlinear_pointwise":  # oneDNN int8 linear: (uint8 rows, packed weight (in, out), scales, ...)
        x, w = in_shapes[0], in_shapes[1]
        m = numel(x[:-1])
        return OpCost(matmul=2 * m * x[-1] * w[-1], elementwise=m * w[-1], timed=("linear", m, x[-1], w[-1]))
    if name in ("qlinear_prepack", "_reorder_linear_weight"):  # a constant's packing (int8, bf16): lifted or
        return OpCost(is_view=True)                                # folded at lowering, nothing runs per call
    if name in ("_weight_int8pack_mm", "_weight_int4pack_mm_for_cpu", "gemv_int8_grouped"):  # weight-only: x (.., in)
        x = in_shapes[0]
        m = numel(x[:-1])
        return OpCost(matmul=2 * m * x[-1] * out[-1], elementwise=m * out[-1])
    if name in ("mm", "_int_mm"):
        a, b = in_shapes[0], in_shapes[1]
        return OpCost(matmul=2 * a[0] * a[1] * b[1], timed=("linear", a[0], a[1], b[1]))
    if name == "addmm":
        a, b = in_shapes[1], in_shapes[2]
        return OpCost(matmul=2 * a[0] * a[1] * b[1], elementwise=a[0] * b[1], timed=("linear", a[0], a[1], b[1]))
    if name in ("bmm", "baddbmm"):
        a, b = in_shapes[-2], in_shapes[-1]
        extra = numel(out) if name == "baddbmm" else ZERO
        return OpCost(matmul=2 * a[0] * a[1] * a[2] * b[2], elementwise=extra)
    if name == "matmul":
        a, b = in_shapes[0], in_shapes[1]
        k = a[-1]
        return OpCost(matmul=2 * numel(out) * k)
    if name in ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu", "decode_attention"):
        q, k, v = in_shapes[0], in_shapes[1], in_shapes[2]
        b_h_l = numel(q[:-1])
        s = k[-2]
        mm = 2 * b_h_l * s * q[-1] + 2 * b_h_l * s * v[-1]
        timed = (("sdpa", q[0], q[1], q[2], s, q[-1], v[-1], int(len(in_shapes) > 3))
                 if name == "scaled_dot_product_attention" and len(q) == 4 else None)
        return OpCost(matmul=mm, elementwise=5 * b_h_l * s, timed=timed)  # scale, mask, softmax
    if name in ("convolution", "conv2d", "conv1d", "_convolution"):
        w = in_shapes[1]
        per_out = 2 * numel(w[1:])
        return OpCost(matmul=per_out * numel(out))
    if name in POINTWISE:
        return OpCost(elementwise=POINTWISE[name] * numel(out))
    if name in REDUCTIONS:
        return OpCost(elementwise=REDUCTIONS[name] * numel(in_shapes[0]))
    if name in NORMS:
        return OpCost(elementwise=NORMS[name] * numel(out))
    if name in DATA:
        return OpCost()
    if name in QUANT:
        return OpCost(elementwise=QUANT[name] * numel(out))
    return None
