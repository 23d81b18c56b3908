"""Measured kernel times for the cost model: a GEMM or an attention costs what its kernel takes at its shape on
this machine, not its FLOPs over one peak rate.

A single peak per precision (:func:`fxopt.cost.machine_peaks`, one 1024³ GEMM) misjudges the kernels of real
models. Measured on the Intel Xeon host (2 threads, one quiet spell), ATen's fp32 linear ran MiniLM's and
SmolLM2's shapes at 159–250 GFLOP/s and oneDNN's int8 linear at 362–937 GOP/s: the int8 : fp32 ratio ran from 2.3
(SmolLM2's 576 → 49,152 LM head) to 4.2 (MiniLM's 1,536 → 384), where the peaks put it at 3.5 for every shape.
Attention (then fp32 in every mode) is the larger part of a quantized model's time, and its roofline was a third
short. The bench's predicted speed of the int8 rows was 13–37% high.

:class:`MeasuredKernels` times each kernel the first time a prediction needs it and keeps it in the GEMM timings
cache (``~/.cache/fxopt/gemm-<machine>.json``; :class:`fxopt.gemm_backends.GemmTimings`):

* ``("linear", rows, in, out)`` — :func:`fxopt.gemm_backends.measure_kernels`: ATen's linear for fp32
  activations, oneDNN's linear on a packed weight for bf16 ones (``pack-linears-bf16``; ATen's linear where this
  torch has no oneDNN) and for uint8 ones. This host's speed moves by up to 2× over minutes (the
  same 1024 × 384 → 1,152 fp32 linear: 3.7 ms, then 8.7 ms), so the kernels of one shape are timed in turns and
  what a prediction compares (fp32 eager against int8 compiled) comes from one spell;
* ``("sdpa", batch, heads, queries, keys, head dim, value dim, masked)`` —
  :func:`fxopt.gemm_backends.measure_attention`, in the attention's own dtype (fp32, or bf16 where
  ``cast-attention-bf16`` ran; bf16 timed in turns with fp32 and kept as its ratio, as for linears).

* ``("linear+bias", rows, in, out)`` — an fp32 linear with a bias in the eager graph: ATen's ``linear`` with
  the bias (kernel ``fp32-bias``), which copies the bias into the output first;
* ``("op", target, args, kwargs)`` — a pointwise, normalization or reduction op of the eager graph: ATen's op on
  random tensors of its shapes (:func:`op_call`), one timing per op and shapes.

Every other node keeps its roofline time.

Each linear and attention timing is the best median of :data:`fxopt.gemm_backends.KERNEL_DRAWS` draws: one draw
caught this machine in one spell, and a cache filled in a slow one held MiniLM's bf16 : fp32 linear ratios at
0.26–0.33 where quiet draws give 0.15–0.20 (Intel Xeon with AMX).

    kernels = MeasuredKernels()
    predict_seconds(report, kernels=kernels, batch=8, seq=128)
    kernels.save()
"""
from __future__ import annotations

import sympy
import torch

from fxopt import gemm_backends
from fxopt.gemm_backends import GemmTimings

#: a linear's dtype (its activations') → the kernel timed for it
KERNEL_OF_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "uint8": "uint8"}
#: an attention's dtype (its output's, which is its Q/K/V's) → the dtype it is timed in
ATTENTION_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class MeasuredKernels:
    """Seconds of a kernel at its shape, measured once per machine (see the module docstring)."""

    def __init__(self, timings: GemmTimings | None = None):
        self.timings = timings or GemmTimings()

    def seconds(self, kind: str, dtype: str, *shape: int) -> float | None:
        """The measured time of ``kind`` ("linear" or "sdpa") at ``shape``, or None where fxopt does not time it
        (the roofline is used)."""
        if not gemm_backends.available() or min(shape[:-1] if kind == "sdpa" else shape) < 1:
            return None
        if kind == "sdpa":
            return (self.timings.get_attention(*shape, dtype=ATTENTION_DTYPES[dtype]) / 1e3
                    if dtype in ATTENTION_DTYPES else None)
        if kind == "linear+bias":
            if dtype == "float32":
                return self.timings.get_kernel("fp32-bias", *shape) / 1e3
            kind = "linear"
        kernel = KERNEL_OF_DTYPE.get(dtype)
        if kind != "linear" or kernel is None:
            return None
        if kernel == "uint8":
            from fxopt import onednn_int8
            if not onednn_int8.available():
                return None
        if kernel == "bf16":
            from fxopt import onednn_bf16
            if onednn_bf16.available():  # what pack-linears-bf16 makes of every bf16 linear
                kernel = "bf16-packed"
        return self.timings.get_kernel(kernel, *shape) / 1e3

    def op_seconds(self, target, args: tuple, kwargs: tuple, dims: dict) -> float | None:
        """The measured time of ``target`` on random tensors of ``args``' shapes at ``dims`` (sympy symbol → size);
        None where an argument cannot be made."""
        call = op_call(target, args, kwargs, dims)
        if call is None:
            return None
        key, fn = call
        return self.timings.get_op(key, fn) / 1e3

    def save(self) -> None:
        self.timings.save()


def op_call(target, args: tuple, kwargs: tuple, dims: dict):
    """``(cache key, a call of target on random inputs)`` for an op whose tensor arguments are
    :class:`fxopt.cost.rules.TensorSpec` of sizes over ``dims`` (``kwargs`` as (name, value) pairs); None when a size
    stays symbolic."""
    from fxopt.cost.rules import TensorSpec

    class Unsized(Exception):
        pass

    def real(a):
        if isinstance(a, TensorSpec):
            shape = [sympy.sympify(d).subs(dims) for d in a.shape]
            if any(getattr(d, "free_symbols", None) for d in shape):
                raise Unsized
            shape = [int(d) for d in shape]
            if a.dtype.is_floating_point:
                return torch.randn(shape, dtype=a.dtype)
            if a.dtype == torch.bool:
                return torch.rand(shape) > 0.5
            return torch.zeros(shape, dtype=a.dtype)
        if isinstance(a, tuple):
            return [real(x) for x in a]
        return a

    def described(a):
        if isinstance(a, torch.Tensor):
            return f"{str(a.dtype).removeprefix('torch.')}{list(a.shape)}"
        if isinstance(a, (list, tuple)):
            return "[" + ",".join(described(x) for x in a) + "]"
        return repr(a)

    try:
        real_args, real_kwargs = real(args), {k: real(v) for k, v in kwargs}
    except Unsized:
        return None
    key = f"op,{target},{described(real_args)},{described(sorted(real_kwargs.items()))}"
    return key, lambda: target(*real_args, **real_kwargs)
