"""The CPU GEMM libraries a linear can run on, timed on this machine and remembered.

Two backends take pre-packed (frozen) weights and accept any number of rows at run time:

* ``onednn``: ``mkldnn._linear_pointwise`` — what Inductor emits for ``aten.linear`` with freezing and
  dynamic shapes; it can fuse an activation or residual add into the GEMM;
* ``mkl``: ``mkl._mkl_linear`` — MKL's packed GEMM (what Inductor emits with static shapes).

Which is faster depends on the CPU and the shape (on an Intel Xeon here MKL wins on wide outputs such as
an LM head, oneDNN on small square ones), so fxopt measures instead of guessing. Timings are cached in
``$XDG_CACHE_HOME/fxopt/gemm-<machine>.json``, one entry per (rows, in, out, bias).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from fxopt.machine import cache_file

BACKENDS = ("onednn", "mkl")


def available() -> bool:
    """Both packed backends exist in this torch build (x86 CPU builds with MKL and oneDNN)."""
    return torch.backends.mkldnn.is_available() and torch.backends.mkl.is_available() and hasattr(torch.ops.mkl,
                                                                                                   "_mkl_linear")


def cache_path() -> Path:
    return cache_file("gemm")


def _median_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(rows: int, k: int, n: int, bias: bool, reps: int = 15) -> dict[str, float]:
    """Median milliseconds of each backend for a (rows × k) @ (k × n) linear."""
    x, w = torch.randn(rows, k), torch.randn(n, k)
    b = torch.randn(n) if bias else None
    onednn_w = torch.ops.mkldnn._reorder_linear_weight(w, rows)
    mkl_w = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
    with torch.no_grad():
        return {
            "onednn": _median_ms(lambda: torch.ops.mkldnn._linear_pointwise(x, onednn_w, b, "none", [], ""), reps),
            "mkl": _median_ms(lambda: torch.ops.mkl._mkl_linear(x, mkl_w, w, b, rows), reps),
        }


class GemmTimings:
    """Timings per shape, read from and written to the per-machine cache."""

    def __init__(self, refresh: bool = False, reps: int = 15):
        self.path = cache_path()
        self.reps = reps
        self.table: dict[str, dict[str, float]] = {}
        if not refresh and self.path.exists():
            try:
                self.table = json.loads(self.path.read_text())
            except ValueError:
                self.table = {}  # a corrupt cache is measured again
        self.measured = 0

    def get(self, rows: int, k: int, n: int, bias: bool) -> dict[str, float]:
        key = f"{rows},{k},{n},{int(bias)}"
        if key not in self.table:
            self.table[key] = measure(rows, k, n, bias, self.reps)
            self.measured += 1
        return self.table[key]

    def save(self) -> None:
        if self.measured:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.table, indent=1, sort_keys=True))
