"""The CPU GEMM libraries a linear can run on, timed on this machine and remembered.

Two backends take pre-packed (frozen) weights and accept any number of rows at run time:

* ``onednn``: ``mkldnn._linear_pointwise`` — what Inductor emits for ``aten.linear`` with freezing and
  dynamic shapes; it can fuse an activation or residual add into the GEMM;
* ``mkl``: ``mkl._mkl_linear`` — MKL's packed GEMM (what Inductor emits with static shapes).

Which is faster depends on the CPU and the shape (on an Intel Xeon here MKL wins on wide outputs such as
an LM head, oneDNN on small square ones), so fxopt measures instead of guessing: the two backends in turns,
and again when they come out implausibly far apart (a busy machine). Timings are cached in
``$XDG_CACHE_HOME/fxopt/gemm-<machine>.json`` (the machine key: CPU model, ISA, thread count, torch version),
one entry per (rows, in, out, bias); ``fxopt cache clear`` deletes them.
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


#: Two backends this far apart on one shape is what a busy spell looks like (seen: oneDNN 23.7 ms vs MKL 1.7 ms
#: on a 1024×384→384 linear that a quiet run gives to oneDNN), so such a pair is measured again.
IMPLAUSIBLE_RATIO = 4.0
#: How many measurements of one shape at most (the first and the re-measurements).
ATTEMPTS = 3


def interleaved_ms(fns: dict, reps: int) -> dict[str, float]:
    """Median milliseconds of each function, timed in turns (a slow spell hits them alike), after a warm-up."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def measure(rows: int, k: int, n: int, bias: bool, reps: int = 15) -> dict[str, float]:
    """Median milliseconds of each backend for a (rows × k) @ (k × n) linear, the backends timed in turns.
    When they come out more than :data:`IMPLAUSIBLE_RATIO` apart the shape is measured again (up to
    :data:`ATTEMPTS` times) and each backend keeps its best median: load from elsewhere only ever adds time."""
    x, w = torch.randn(rows, k), torch.randn(n, k)
    b = torch.randn(n) if bias else None
    onednn_w = torch.ops.mkldnn._reorder_linear_weight(w, rows)
    mkl_w = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
    fns = {"onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, onednn_w, b, "none", [], ""),
           "mkl": lambda: torch.ops.mkl._mkl_linear(x, mkl_w, w, b, rows)}
    best: dict[str, float] = {}
    with torch.no_grad():
        for _ in range(ATTEMPTS):
            for name, ms in interleaved_ms(fns, reps).items():
                best[name] = min(ms, best.get(name, float("inf")))
            if max(best.values()) <= IMPLAUSIBLE_RATIO * min(best.values()):
                break
    return best


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
