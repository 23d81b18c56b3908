"""This machine's peaks (fp32/bf16/int8 matmul, memory bandwidth), measured once and cached on disk,
and a roofline time estimate: per node, max(FLOPs / peak for its dtype, bytes / bandwidth).

The cache lives in ``$XDG_CACHE_HOME/fxopt`` (``~/.cache/fxopt``), one file per machine key
(:mod:`fxopt.machine`: CPU model, ISA features, thread count, torch version); ``machine_peaks(refresh=True)`` measures again.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import sympy
import torch

from fxopt.cost.estimate import CostReport
from fxopt.ir.meta import dim_symbol
from fxopt.machine import cache_file, cpu_model  # noqa: F401 - cpu_model is re-exported


@dataclass
class MachinePeaks:
    fp32_flops: float
    bf16_flops: float
    int8_ops: float
    bandwidth: float  # bytes/s, read + write traffic of a large copy

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 pays here: its measured GEMM rate beats fp32's (AVX512-BF16 or AMX). Without them bf16 is
        emulated and slower than fp32."""
        return self.bf16_flops > self.fp32_flops

    def describe(self) -> str:
        return (f"fp32 {self.fp32_flops / 1e9:.0f} GFLOP/s, bf16 {self.bf16_flops / 1e9:.0f} GFLOP/s, "
                f"int8 {self.int8_ops / 1e9:.0f} GOP/s, memory {self.bandwidth / 1e9:.1f} GB/s")


def cache_path() -> Path:
    return cache_file("machine")


def _best_rate(fn, work: float, seconds: float = 0.3) -> float:
    fn()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return work / best


def measure_peaks() -> MachinePeaks:
    """Measure the peaks now (about 2 s)."""
    n = 1024
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    fp32 = _best_rate(lambda: torch.mm(a32, b32), 2 * n**3)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    bf16 = _best_rate(lambda: torch.mm(a16, b16), 2 * n**3)
    a8 = torch.randint(-128, 127, (n, n), dtype=torch.int8)
    b8 = torch.randint(-128, 127, (n, n), dtype=torch.int8)
    try:
        int8 = _best_rate(lambda: torch._int_mm(a8, b8), 2 * n**3)
    except RuntimeError:
        int8 = fp32
    big = torch.empty(64 * 2**20 // 4)
    dst = torch.empty_like(big)
    bw = _best_rate(lambda: dst.copy_(big), 2 * big.numel() * 4)
    return MachinePeaks(fp32, bf16, int8, bw)


def machine_peaks(refresh: bool = False) -> MachinePeaks:
    """The cached peaks of this machine, measured on first use (or when ``refresh``)."""
    path = cache_path()
    if not refresh and path.exists():
        try:
            return MachinePeaks(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            pass  # a corrupt cache is measured again
    peaks = measure_peaks()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(peaks)))
    return peaks


def peak_for(dtype: str, peaks: MachinePeaks) -> float:
    if dtype in ("bfloat16", "float16"):
        return peaks.bf16_flops
    if dtype in ("int8", "uint8", "int32"):
        return peaks.int8_ops
    return peaks.fp32_flops


def node_seconds(report: CostReport, peaks: MachinePeaks, kernels=None, **dims: int) -> dict[str, float]:
    """Roofline time of every node at the given sizes; with ``kernels``
    (:class:`fxopt.cost.kernel_times.MeasuredKernels`), a node marked as timed (a GEMM, an attention, an eager
    pointwise op) takes its measured time instead."""
    subs = {dim_symbol(k): v for k, v in dims.items()}
    out = {}
    for n in report.nodes:
        if kernels is not None and n.timed is not None:
            if n.timed[0] == "op":
                measured = kernels.op_seconds(*n.timed[1:], dims=subs)
            else:
                measured = kernels.seconds(n.timed[0], n.dtype,
                                           *(int(sympy.sympify(e).subs(subs)) for e in n.timed[1:]))
            if measured is not None:
                out[n.name] = measured
                continue
        flops = float(sympy.sympify(n.flops).subs(subs))
        moved = float(sympy.sympify(n.bytes).subs(subs))
        out[n.name] = max(flops / peak_for(n.dtype, peaks), moved / peaks.bandwidth)
    return out


def predict_seconds(report: CostReport, peaks: MachinePeaks | None = None, kernels=None, **dims: int) -> float:
    """Roofline time of the whole graph: the sum over its nodes (a single stream of kernels); ``kernels``: see
    :func:`node_seconds`."""
    return sum(node_seconds(report, peaks or machine_peaks(), kernels, **dims).values())
