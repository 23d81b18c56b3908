"""The weight-streaming GEMV: a linear of a few rows written so that Inductor compiles it into one loop that reads
each weight once, at the machine's read bandwidth.

A decode step multiplies one token per sequence by every weight of the model: its time is the time to read the
weights. oneDNN and MKL are built for many rows and reach about 22 GB/s on SmolLM2's decode linears on a 2-core
AMD EPYC, where a plain sum over 256 MB reads 28–32 GB/s. Written as a broadcast multiply and a sum over ``in``
with the output channel outermost, the product becomes an Inductor reduction that streams the weight at that rate
(SmolLM2's decode linears: 19 ms against oneDNN's 24 ms), reads the plain weight (no packed copy), and takes int8
weights as they are (dequantized in registers)::

    out[r, o] = sum_i x[r, i] * W[o, i]          # W: [out, in], fp32 or int8 (times a scale per output)

Weights quantized in groups along ``in`` (one scale, and for an asymmetric grid one zero, per group of ``g``
inputs) run as :func:`gemv_grouped`: the scale multiplies inside the loop, and the zeros, which multiply each
group's sum of ``x``, make a second, small reduction (a ``g``-th of the work), not a dequantized weight::

    out[r, o] = sum_{j,i} x[r, j, i] * q[o, j, i] * s[o, j]  +  sum_j z[o, j] * sum_i x[r, j, i]

Inductor loops ``o`` outermost, so a weight row stays in L1 while every row ``r`` uses it; from about 8 rows on it
loses to the GEMM libraries, so :mod:`fxopt.gemm_backends` offers it only up to ``GEMV_MAX_ROWS`` rows.
:func:`gemv` is the eager reference; :func:`write_gemv` writes the same computation into a graph in ATen ops,
with the input and the output pinned as contiguous buffers: without that pin Inductor inlines the producer of
``x`` (an RMSNorm) into the product loop, recomputing it for every output channel, and SmolLM2's decode step ran
20× slower.
"""
from __future__ import annotations

import torch
import torch._inductor.inductor_prims  # noqa: F401  (registers prims.inductor_force_stride_order)
import torch.fx

from fxopt.rewriter import Rewriter

aten = torch.ops.aten
#: Makes Inductor realize a value as a buffer of the given strides (a copy only where the layout differs).
force_stride_order = torch.ops.prims.inductor_force_stride_order.default


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         scales: torch.Tensor | None = None) -> torch.Tensor:
    """``linear(x, weight * scales[:, None], bias)`` as Inductor's weight-streaming reduction (see the module
    docstring); ``weight`` may be int8 with fp32 ``scales`` per output channel."""
    n, k = weight.shape
    w = weight.view(n, *([1] * (x.dim() - 1)), k)
    out = (w * x.unsqueeze(0)).sum(-1).permute(*range(1, x.dim()), 0)
    if scales is not None:
        out = out * scales
    if bias is not None:
        out = out + bias
    return out.clone(memory_format=torch.contiguous_format)


def gemv_grouped(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """``linear(x, q * s + z, bias)`` with ``q`` int8 ``[out, in]`` and ``scales``/``zeros`` fp32
    ``[out, in / g]`` (one per group of ``g`` inputs), as Inductor's weight-streaming reduction."""
    n, k = q.shape
    groups = scales.shape[1]
    lead = x.shape[:-1]
    xg = x.reshape(1, *lead, groups, k // groups)
    ones = [1] * len(lead)
    products = q.view(n, *ones, groups, k // groups) * xg * scales.view(n, *ones, groups, 1)
    out = products.sum([-2, -1])
    if zeros is not None:
        out = out + (zeros.view(n, *ones, groups) * xg.sum(-1)).sum(-1)
    out = out.permute(*range(1, x.dim()), 0)
    if bias is not None:
        out = out + bias
    return out.clone(memory_format=torch.contiguous_format)


def contiguous_strides(val: torch.Tensor) -> list[int] | None:
    """The strides of ``val`` laid out contiguously, or None where they depend on a dynamic size (only the
    outermost dim may be dynamic, as a batch is)."""
    strides, step = [], 1
    for size in reversed(val.shape):
        strides.append(step)
        step = step * size
    strides.reverse()
    return strides if all(isinstance(s, int) for s in strides) else None


def write_gemv(rw: Rewriter, before: torch.fx.Node, x: torch.fx.Node, weight: torch.fx.Node,
               bias: torch.fx.Node | None = None, scales: torch.fx.Node | None = None) -> torch.fx.Node:
    """Insert :func:`gemv` of ``x`` and the constant ``weight`` before ``before``, in ATen ops; returns the output
    node (``x``'s shape with ``out`` channels, contiguous). ``x`` must have :func:`contiguous_strides`."""
    val = x.meta["val"]
    rank = val.dim()
    n, k = weight.meta["val"].shape
    x = rw.call(force_stride_order, (x, contiguous_strides(val)), before=before)
    # An int8 weight is multiplied as it is (type promotion converts it in registers). An explicit conversion
    # would be a function of a constant alone, which Inductor's freezing folds into an fp32 copy to read instead.
    w = rw.call(aten.view.default, (weight, [n, *([1] * (rank - 1)), k]), before=before)
    products = rw.call(aten.mul.Tensor, (w, rw.call(aten.unsqueeze.default, (x, 0), before=before)), before=before)
    sums = rw.call(aten.sum.dim_IntList, (products, [-1]), before=before)
    out = rw.call(aten.permute.default, (sums, [*range(1, rank), 0]), before=before)
    if scales is not None:
        out = rw.call(aten.mul.Tensor, (out, scales), before=before)
    if bias is not None:
        out = rw.call(aten.add.Tensor, (out, bias), before=before)
    out = rw.call(aten.clone.default, (out,), {"memory_format": torch.contiguous_format}, before=before)
    return rw.call(force_stride_order, (out, contiguous_strides(out.meta["val"])), before=before)


def write_gemv_grouped(rw: Rewriter, before: torch.fx.Node, x: torch.fx.Node, q: torch.fx.Node,
                       scales: torch.fx.Node, zeros: torch.fx.Node | None = None,
                       bias: torch.fx.Node | None = None) -> torch.fx.Node:
    """Insert :func:`gemv_grouped` of ``x`` and the constants ``q``/``scales``/``zeros`` before ``before``, in ATen
    ops, as :func:`write_gemv` does; ``x`` must have :func:`contiguous_strides`."""
    val = x.meta["val"]
    rank = val.dim()
    n, k = q.meta["val"].shape
    groups = scales.meta["val"].shape[1]
    ones = [1] * (rank - 1)
    x = rw.call(force_stride_order, (x, contiguous_strides(val)), before=before)
    sizes = rw.sizes(val.shape[:-1], x, before=before)
    xg = rw.call(aten.view.default, (x, [1, *sizes, groups, k // groups]), before=before)
    # Every product involves x, so Inductor's freezing cannot fold a dequantized fp32 weight out of the constants.
    w = rw.call(aten.view.default, (q, [n, *ones, groups, k // groups]), before=before)
    s = rw.call(aten.view.default, (scales, [n, *ones, groups, 1]), before=before)
    products = rw.call(aten.mul.Tensor, (rw.call(aten.mul.Tensor, (w, xg), before=before), s), before=before)
    out = rw.call(aten.sum.dim_IntList, (products, [-2, -1]), before=before)
    if zeros is not None:
        sums = rw.call(aten.sum.dim_IntList, (xg, [-1]), before=before)
        z = rw.call(aten.view.default, (zeros, [n, *ones, groups]), before=before)
        shifts = rw.call(aten.sum.dim_IntList, (rw.call(aten.mul.Tensor, (z, sums), before=before), [-1]),
                         before=before)
        out = rw.call(aten.add.Tensor, (out, shifts), before=before)
    out = rw.call(aten.permute.default, (out, [*range(1, rank), 0]), before=before)
    if bias is not None:
        out = rw.call(aten.add.Tensor, (out, bias), before=before)
    out = rw.call(aten.clone.default, (out,), {"memory_format": torch.contiguous_format}, before=before)
    return rw.call(force_stride_order, (out, contiguous_strides(out.meta["val"])), before=before)
