"""The CPU GEMM libraries a linear can run on, timed on this machine and remembered.

Two backends take pre-packed (frozen) weights, a second copy of every weight in the library's own layout,
and accept any number of rows at run time:

* ``onednn``: ``mkldnn._linear_pointwise`` on a packed weight — what Inductor emits for ``aten.linear`` with
  freezing and dynamic shapes; it can fuse an activation or residual add into the GEMM;
* ``mkl``: ``mkl._mkl_linear`` — MKL's packed GEMM (what Inductor emits with static shapes).

``onednn-plain`` is the same oneDNN kernel on the plain weight: no copy, the compiled code reads the model's own
tensor. On an AMD EPYC (AVX-512, 2 threads), in a quiet interleaved micro-benchmark, it took 3–6% longer than
the packed weight on SmolLM2's and MiniLM's prefill shapes (256 and 1024 rows) and 14–20% at 64 rows (timings
taken while the machine was busy had up to 12% at 256), where plain ``aten.mm`` took 12–40% longer;
select-gemm-backend gives the copy only to a backend that is faster by more than its ``copy_margin``.

A third one is for linears of a few rows (a decode step: one token per sequence), whose time is reading the
weight once: ``gemv`` (:mod:`fxopt.gemv`), which Inductor compiles into one loop that streams the plain weight at
the machine's read bandwidth. It needs no packed copy, and loses to the libraries from about 8 rows on, so it is
timed only up to :data:`GEMV_MAX_ROWS`. Weight-only int8 linears of few rows are timed the same way, ATen's
``_weight_int8pack_mm`` against ``gemv`` on the int8 weight (:func:`measure_weight_int8`).

Which is faster depends on the CPU and the shape (on an Intel Xeon here MKL wins on wide outputs such as
an LM head, oneDNN on small square ones), so fxopt measures instead of guessing: the backends in turns,
and again when they come out implausibly far apart (a busy machine). Timings are cached in
``$XDG_CACHE_HOME/fxopt/gemm-<machine>.json`` (the machine key: CPU model, ISA, thread count, torch version),
one entry per (rows, in, out, bias); ``fxopt cache clear`` deletes them.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fxopt.gemv import gemv
from fxopt.machine import cache_file

BACKENDS = ("onednn", "mkl", "onednn-plain", "gemv")
#: Linears with more rows than this are not offered ``gemv``: from 8 rows on it reads the weight ``rows`` times.
GEMV_MAX_ROWS = 4
#: Few-row linears are timed over copies of the weight this large in all, so that each call reads it from memory
#: as in a model (a 1.3 MB weight timed alone sits in cache and flatters whichever backend reuses it best).
STREAM_BYTES = 64 * 2**20
#: ... but at most this many copies (a tiny weight would need thousands, and MKL pads each packed copy to MBs)
MAX_COPIES = 64


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
#: How many draws the cost model's kernel timings take, each keeping its best median (:func:`_best_of`). One draw
#: caught this machine in one spell: on the Intel Xeon host with AMX the same bf16 : fp32 ratio of a 1024 × 384 →
#: 1,536 linear came out 0.17, 0.26 and 0.24 in three back-to-back draws, and a cache filled in a slow spell held
#: 0.26–0.33 for MiniLM's linears where quiet draws give 0.15–0.20, so the bench predicted MiniLM's bf16 row 27%
#: short. Load from elsewhere only ever adds time, so the best of several draws is the machine's own rate.
KERNEL_DRAWS = 3
#: The version of the cost model's cached timings (``kernel,…`` and ``sdpa…`` entries): entries of another
#: version are measured again.
TIMING_VERSION = 2


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


def expected_backends(rows: int) -> tuple[str, ...]:
    """The backends a linear of ``rows`` rows is timed on."""
    return BACKENDS if rows <= GEMV_MAX_ROWS else tuple(b for b in BACKENDS if b != "gemv")


def _rotating(fn_of_weight, weights):
    """A function that calls ``fn_of_weight(w)`` on the next of ``weights`` each time."""
    state = {"i": 0}

    def call():
        state["i"] = (state["i"] + 1) % len(weights)
        return fn_of_weight(weights[state["i"]])
    return call


def _compiled(fn, *args: torch.Tensor):
    """``fn(*args)`` compiled by Inductor for these inputs (as a graph, not through Dynamo and its caches)."""
    from torch._inductor.compile_fx import compile_fx
    from torch.fx.experimental.proxy_tensor import make_fx

    with torch.no_grad():
        return compile_fx(make_fx(fn)(*args), list(args))


def _compiled_gemv(*args: torch.Tensor | None):
    """:func:`gemv` compiled by Inductor for these inputs; called with the same arguments, None ones left out."""
    names = ("x", "weight", "bias", "scales")
    given = [(name, a) for name, a in zip(names, args) if a is not None]
    return _compiled(lambda *ts: gemv(**dict(zip((n for n, _ in given), ts))), *(a for _, a in given))


def _best_of(fns: dict, reps: int, draws: int = 1) -> dict[str, float]:
    """:func:`interleaved_ms` ``draws`` times, and again (up to :data:`ATTEMPTS` draws in all) while the backends
    are implausibly far apart; each keeps its best median: load from elsewhere only ever adds time."""
    best: dict[str, float] = {}
    with torch.no_grad():
        for attempt in range(max(draws, ATTEMPTS)):
            for name, ms in interleaved_ms(fns, reps).items():
                best[name] = min(ms, best.get(name, float("inf")))
            if attempt + 1 >= draws and max(best.values()) <= IMPLAUSIBLE_RATIO * min(best.values()):
                break
    return best


def _copies(rows: int, weight_bytes: int) -> int:
    """How many copies of a weight a timing cycles through: enough to stream from memory for few rows."""
    return min(MAX_COPIES, max(1, STREAM_BYTES // weight_bytes)) if rows <= GEMV_MAX_ROWS else 1


def measure(rows: int, k: int, n: int, bias: bool, reps: int = 15) -> dict[str, float]:
    """Median milliseconds of each backend for a (rows × k) @ (k × n) linear, the backends timed in turns.
    When they come out more than :data:`IMPLAUSIBLE_RATIO` apart the shape is measured again (up to
    :data:`ATTEMPTS` times) and each backend keeps its best median: load from elsewhere only ever adds time.
    Up to :data:`GEMV_MAX_ROWS` rows, ``gemv`` is timed too, and every backend reads its weight from memory
    (copies of :data:`STREAM_BYTES` in all, one after the other), as a decode step does."""
    x = torch.randn(rows, k)
    b = torch.randn(n) if bias else None
    ws = [torch.randn(n, k) for _ in range(_copies(rows, n * k * 4))]
    onednn_ws = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in ws]
    mkl_ws = [(torch.ops.mkl._mkl_reorder_linear_weight(w, rows), w) for w in ws]
    fns = {"onednn": _rotating(lambda w: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""), onednn_ws),
           "mkl": _rotating(lambda w: torch.ops.mkl._mkl_linear(x, w[0], w[1], b, rows), mkl_ws),
           "onednn-plain": _rotating(lambda w: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""), ws)}
    if rows <= GEMV_MAX_ROWS:
        compiled = _compiled_gemv(x, ws[0], b)
        fns["gemv"] = _rotating(lambda w: compiled(x, w, *([b] if bias else [])), ws)
    return _best_of(fns, reps)


def measure_weight_int8(rows: int, k: int, n: int, activations: torch.dtype = torch.bfloat16,
                        reps: int = 15) -> dict[str, float]:
    """Median milliseconds of a weight-only int8 linear (int8 weight, a scale per output) on ATen's
    ``_weight_int8pack_mm`` (activations cast to ``activations`` and back, as the graph does) and, up to
    :data:`GEMV_MAX_ROWS` rows, as ``gemv`` on the int8 weight with fp32 activations; timed as :func:`measure`."""
    x = torch.randn(rows, k)
    qs = [torch.randint(-127, 128, (n, k), dtype=torch.int8) for _ in range(_copies(rows, n * k))]
    scales = torch.rand(n) / 100

    def int8pack_mm(q):
        return torch.ops.aten._weight_int8pack_mm(x.to(activations), q, scales.to(activations)).float()
    fns = {"int8pack_mm": _rotating(int8pack_mm, qs)}
    if rows <= GEMV_MAX_ROWS:
        compiled = _compiled_gemv(x, qs[0], None, scales)
        fns["gemv"] = _rotating(lambda q: compiled(x, q, scales), qs)
    return _best_of(fns, reps)


def measure_grouped_int8(rows: int, k: int, n: int, group: int, zeros: bool, reps: int = 15) -> dict[str, float]:
    """Median milliseconds of a weight-only int8 linear with a scale (and, with ``zeros``, a zero) per group of
    ``group`` inputs: Inductor's ``gemv`` loop against fxopt's ``native`` kernel (:mod:`fxopt.native_kernels`, only
    where it builds), fp32 activations, the weight read from memory; timed as :func:`measure`."""
    from fxopt import native_kernels
    from fxopt.gemv import gemv_grouped

    x = torch.randn(rows, k)
    qs = [torch.randint(-127, 128, (n, k), dtype=torch.int8) for _ in range(_copies(rows, n * k))]
    scales = torch.rand(n, k // group) / 100
    zs = torch.rand(n, k // group) / 100 if zeros else None
    tail = [zs] if zeros else []
    compiled = _compiled(lambda *ts: gemv_grouped(*ts), x, qs[0], scales, *tail)
    fns = {"gemv": _rotating(lambda q: compiled(x, q, scales, *tail), qs)}
    if native_kernels.available("gemv_int8_grouped"):
        fns["native"] = _rotating(lambda q: native_kernels.gemv_int8_grouped(x, q, scales, zs), qs)
    return _best_of(fns, reps)


#: the GEMM kernels the cost model times (:mod:`fxopt.cost.kernel_times`), by the dtype of their activations
KERNELS = ("fp32", "fp32-bias", "bf16", "bf16-packed", "uint8", "uint8-dynamic")


def _kernel(kind: str, rows: int, k: int, n: int):
    """A call of one (rows × k) @ (k × n) GEMM as a graph runs it: ``fp32`` and ``bf16`` ATen's linear (what eager
    runs), ``bf16-packed`` oneDNN's bf16 linear on a packed weight (what ``pack-linears-bf16`` emits; ATen's
    linear on the plain bf16 weight took 1.67 ms where it takes 1.21 ms at 1024 × 384 → 1,536, Intel Xeon with
    AMX), ``uint8`` oneDNN's int8 linear on a packed weight with uint8 activations (what fxopt's int8 passes
    emit), ``uint8-dynamic`` the same preceded by the per-token quantization of fp32 rows (what
    ``quantize-dynamic-int8`` runs: :mod:`fxopt.precision_speed` weighs it against ``bf16-packed``), ``fp32-bias``
    ATen's linear with a bias, as eager runs ``nn.Linear`` (``addmm`` first copies the bias into every row of the
    output: 1.3 ms of an 8.7 ms 1024 × 384 → 1,536 linear in MiniLM's eager call, Intel Xeon host)."""
    if kind == "fp32-bias":
        x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
        return lambda: torch.nn.functional.linear(x, w, b)
    if kind in ("fp32", "bf16", "bf16-packed"):
        dtype = torch.float32 if kind == "fp32" else torch.bfloat16
        x, w = torch.randn(rows, k).to(dtype), torch.randn(n, k).to(dtype)
        if kind == "bf16-packed":
            packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
            return lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return lambda: torch.nn.functional.linear(x, w)
    if kind in ("uint8", "uint8-dynamic"):
        from fxopt.onednn_int8 import register_fake_prepack
        register_fake_prepack()
        q = torch.randint(0, 256, (rows, k), dtype=torch.uint8)
        packed = torch.ops.onednn.qlinear_prepack(torch.randint(-127, 128, (n, k), dtype=torch.int8), None)
        scales = torch.rand(n) / 100

        def qlinear(q):
            return torch.ops.onednn.qlinear_pointwise(q, 0.01, 128, packed, scales, None, None, 1.0, 0,
                                                      torch.float32, "none", [], "")
        if kind == "uint8":
            return lambda: qlinear(q)
        from fxopt.passes.quantize_dynamic_int8 import quantize_per_token
        x = torch.randn(rows, k)
        return lambda: qlinear(quantize_per_token(x)[0])
    raise ValueError(f"unknown GEMM kernel {kind!r}; one of {', '.join(KERNELS)}")


def measure_attention(batch: int, heads: int, queries: int, keys: int, head_dim: int, value_dim: int, masked: bool,
                      reps: int = 15, dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> dict[str, float]:
    """Median milliseconds of ATen's ``scaled_dot_product_attention`` on Q/K/V of each of ``dtypes`` at this shape
    (keyed by dtype name, timed in turns, best of :data:`KERNEL_DRAWS` draws), with a boolean mask of shape
    (batch, 1, queries, keys) when ``masked`` (both models' graphs pass one)."""
    mask = torch.ones(batch, 1, queries, keys, dtype=torch.bool) if masked else None

    def attention(dtype):
        q = torch.randn(batch, heads, queries, head_dim, dtype=dtype)
        k = torch.randn(batch, heads, keys, head_dim, dtype=dtype)
        v = torch.randn(batch, heads, keys, value_dim, dtype=dtype)
        return lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, mask)
    return _best_of({str(d).removeprefix("torch."): attention(d) for d in dtypes}, reps, KERNEL_DRAWS)


def measure_kernels(kinds: tuple[str, ...], rows: int, k: int, n: int, reps: int = 15) -> dict[str, float]:
    """Median milliseconds of each kernel in ``kinds`` (:func:`_kernel`) at one shape, timed in turns as
    :func:`measure` times backends, so that their ratios hold however busy the machine is."""
    return _best_of({kind: _kernel(kind, rows, k, n) for kind in kinds}, reps, KERNEL_DRAWS)


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
        if not set(expected_backends(rows)) <= set(self.table.get(key, ())):  # new, or cached before a backend existed
            self.table[key] = measure(rows, k, n, bias, self.reps)
            self.measured += 1
        return self.table[key]

    def get_weight_int8(self, rows: int, k: int, n: int, activations: torch.dtype) -> dict[str, float]:
        key = f"int8-weight-only,{str(activations).replace('torch.', '')},{rows},{k},{n}"
        if key not in self.table:
            self.table[key] = measure_weight_int8(rows, k, n, activations, self.reps)
            self.measured += 1
        return self.table[key]

    def get_grouped_int8(self, rows: int, k: int, n: int, group: int, zeros: bool) -> dict[str, float]:
        from fxopt import native_kernels

        # keyed by the native kernels' sources too: a changed kernel is timed again
        native = native_kernels.source_digest("gemv_int8_grouped")
        key = f"int8-grouped,{group},{int(zeros)},{rows},{k},{n},native-{native}"
        if key not in self.table:
            self.table[key] = measure_grouped_int8(rows, k, n, group, zeros, self.reps)
            self.measured += 1
        return self.table[key]

    def get_kernel(self, kind: str, rows: int, k: int, n: int) -> float:
        """Milliseconds of ``kind``'s kernel at this shape (:func:`measure_kernels`). A shape is timed once in fp32
        and uint8, in turns; another kind is timed in turns with fp32 again and kept as its ratio to fp32, so every
        kind's time at a shape is in the same spell of this machine as its fp32 time."""
        key = f"kernel,{rows},{k},{n}"
        entry = self.table.get(key)
        if entry is None or "fp32" not in entry or entry.get("version") != TIMING_VERSION:
            entry = self.table[key] = {**measure_kernels(("fp32", "uint8"), rows, k, n, self.reps),
                                       "version": TIMING_VERSION}
            self.measured += 1
        if kind not in entry and f"{kind}/fp32" not in entry:
            pair = measure_kernels(("fp32", kind), rows, k, n, self.reps)
            entry[f"{kind}/fp32"] = pair[kind] / pair["fp32"]
            self.measured += 1
        return entry[kind] if kind in entry else entry["fp32"] * entry[f"{kind}/fp32"]

    def get_attention(self, *shape: int | bool, dtype: torch.dtype = torch.float32) -> float:
        """Milliseconds of :func:`measure_attention` at this shape, on ``dtype`` Q/K/V. As :meth:`get_kernel` does
        for linears, fp32 is timed first and another dtype in turns with fp32 again, kept as its ratio to fp32:
        eager's fp32 attention and the compiled model's bf16 one compare within one spell."""
        key = "sdpa," + ",".join(str(int(d)) for d in shape)
        entry = self.table.get(key)
        if entry is None or entry.get("version") != TIMING_VERSION:
            entry = self.table[key] = {**measure_attention(*shape, reps=self.reps), "version": TIMING_VERSION}
            self.measured += 1
        name = str(dtype).removeprefix("torch.")
        if name not in entry and f"{name}/float32" not in entry:
            pair = measure_attention(*shape, reps=self.reps, dtypes=(torch.float32, dtype))
            entry[f"{name}/float32"] = pair[name] / pair["float32"]
            self.measured += 1
        return entry[name] if name in entry else entry["float32"] * entry[f"{name}/float32"]

    def get_op(self, key: str, call) -> float:
        """Milliseconds of ``call()`` (an op on inputs built for it, :func:`fxopt.cost.kernel_times.op_call`), cached
        under ``key``."""
        if key not in self.table:  # best of draws, as for kernels: one draw of a native op ran 1.6× long
            self.table[key] = _best_of({"op": call}, self.reps, KERNEL_DRAWS)
            self.measured += 1
        return self.table[key]["op"]

    def save(self) -> None:
        """Merge this compile's timings into the file, atomically: processes compiling at once (test workers,
        a server's replicas) never read a half-written cache. A failure to write only loses the cache."""
        if not self.measured:
            return
        try:
            table = json.loads(self.path.read_text()) if self.path.exists() else {}
        except (OSError, ValueError):
            table = {}
        table.update(self.table)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".gemm-")
            with os.fdopen(fd, "w") as f:
                json.dump(table, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            pass
