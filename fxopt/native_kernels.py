"""fxopt's native kernels: C++ built on the machine that runs it, called from Inductor's code as extern ops.

Two parts of a decode step and two of an int8 prefill run far below the machine's speed in Inductor's generated
loops, so fxopt writes them by hand (``csrc/``):

* ``fxopt::gemv_int8_grouped`` (``gemv_int8.cpp``): a linear of a few rows on int8 weights with a scale (and a
  zero) per group of inputs. Inductor's loop for :func:`fxopt.gemv.gemv_grouped` keeps one accumulator per output
  channel, sums across the vector at the end of every channel and multiplies each weight by its group's scale,
  about ten cycles per 16 weights; the kernel works on four output channels at once (four independent
  accumulators sharing each load of ``x``), widens each int8 weight to fp32 in registers and scales each group's
  sum once::

      out[r, o] = sum_j s[o, j] * sum_i q[o, j, i] * x[r, j, i]  +  sum_j z[o, j] * sum_i x[r, j, i]  (+ bias[o])

  Activations stay fp32, so it computes what :func:`fxopt.gemv.gemv_grouped` does (to fp32 rounding). Measured
  on an Intel Xeon (AVX-512, 2 threads) on SmolLM2's 576 → 1536 decode linear, cache-hot, one row: 42 µs without
  zeros and 67 µs with them against Inductor's 116–122 µs. Whether it is faster is measured per shape
  (:func:`fxopt.gemm_backends.measure_grouped_int8`), never assumed: its portable path (no AVX-512) is exact but
  slow.
* ``fxopt::decode_attention`` (``decode_attention.cpp``): attention of one query per sequence over the static KV
  cache, the query heads of a grouped-query model reading their K/V head in place, one parallel task per
  sequence and query head (see :mod:`fxopt.passes.single_query_attention`).
* ``fxopt::quantize_rows`` (``quantize_rows.cpp``): the per-token uint8 quantization of ``quantize-dynamic-int8``
  (:func:`fxopt.passes.quantize_dynamic_int8.quantize_per_token`, bit for bit). Written as aten ops, Inductor fuses
  it into the loop that produces its input and recomputes that producer twice per row, once for the row's range
  and once to quantize: after a GELU, two ``erf`` per element. As an extern op its input is stored once and each
  row is read twice while in L1. Measured in MiniLM's int8 encoder on an Intel Xeon (AVX-512, 2 threads): the
  GELU-and-quantize work of a layer fell from 5.1 ms to about 2.5 ms (BENCHMARKS.md, 2026-11-29).
* ``fxopt::gelu_quantize_rows`` (``gelu_quantize_rows.cpp``): between two dynamic int8 linears with a GELU between
  them, the first one's epilogue (zero point, row scale, bias), the GELU and the second one's per-token
  quantization, one row at a time with the row in L1 (:mod:`fxopt.passes.fuse_gelu_quantize_rows`): Inductor no
  longer writes the fp32 GELU for ``quantize_rows`` to read back. It shares the row quantizer
  (``quantize_row.h``) with ``quantize_rows``; a source's digest covers the headers, so a change to one rebuilds
  both.
* ``fxopt::prefill_attention`` (``prefill_attention.cpp``): bf16 attention of a prefill or an encoder on AMX tiles
  (:mod:`fxopt.passes.native_attention`). ATen's CPU flash kernel multiplies each block of queries with a GEMM
  call whose overhead is most of its time at short sequences and narrow heads; this one packs each K/V head once
  into the pair layout AMX multiplies, runs both products as tile instructions, keeps a whole row of scores (one
  softmax pass) and skips the keys a causal block never sees. Only on CPUs with AMX (``amx_bf16``) whose kernel
  grants the tiles (:func:`amx_bf16`).

Each kernel is its own library, compiled the first time a graph needs it, once per machine and source, with
Inductor's own compiler settings (``-march=native``, 15–25 s each here) into
``~/.cache/fxopt/native-<machine>-<source>/`` and loaded with ``torch.ops.load_library``: an int8 prefill builds
only its quantizer, a decode graph only its GEMV and attention. Where no compiler works, :func:`available` says
why and the passes keep Inductor's code.

The ops' schemas and shape functions are defined here, in Python, so graphs that hold them can be traced and
lowered; :func:`load` must have run before such a graph executes, which the passes that write the ops and the
artifact loader ensure.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import threading
from pathlib import Path

import torch

from fxopt.machine import cache_dir, machine_key

#: each op of the ``fxopt`` namespace, and the source of the library that implements it
KERNELS = {"gemv_int8_grouped": "gemv_int8.cpp", "decode_attention": "decode_attention.cpp",
           "quantize_rows": "quantize_rows.cpp", "gelu_quantize_rows": "gelu_quantize_rows.cpp",
           "prefill_attention": "prefill_attention.cpp"}

torch.library.define("fxopt::gemv_int8_grouped",
                     "(Tensor x, Tensor q, Tensor scales, Tensor? zeros, Tensor? bias) -> Tensor")
torch.library.define("fxopt::decode_attention",
                     "(Tensor q, Tensor keys, Tensor values, Tensor? mask, float scale) -> Tensor")
torch.library.define("fxopt::quantize_rows", "(Tensor x) -> (Tensor, Tensor, Tensor)")
torch.library.define("fxopt::gelu_quantize_rows",
                     "(Tensor acc, Tensor zero_point, Tensor scale, Tensor colsum, Tensor? bias) -> (Tensor, Tensor, Tensor)")

torch.library.define("fxopt::prefill_attention",
                     "(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale, bool is_causal) -> Tensor")


@torch.library.register_fake("fxopt::gemv_int8_grouped")
def _gemv_shape(x, q, scales, zeros, bias):
    return x.new_empty([*x.shape[:-1], q.shape[0]])


@torch.library.register_fake("fxopt::decode_attention")
def _attention_shape(q, keys, values, mask, scale):
    return q.new_empty(q.shape)


@torch.library.register_fake("fxopt::quantize_rows")
def _quantize_rows_shape(x):
    return x.new_empty(x.shape, dtype=torch.uint8), x.new_empty((x.shape[0], 1)), x.new_empty((x.shape[0], 1))


@torch.library.register_fake("fxopt::gelu_quantize_rows")
def _gelu_quantize_rows_shape(acc, zero_point, scale, colsum, bias):
    return _quantize_rows_shape(acc)


@torch.library.register_fake("fxopt::prefill_attention")
def _prefill_attention_shape(q, k, v, mask, scale, is_causal):
    batch, heads, seq, dim = q.shape  # laid out [batch, seq, heads, dim], as ATen's flash attention lays it out
    return q.new_empty((batch, seq, heads, dim)).transpose(1, 2)


_lock = threading.Lock()
_state: dict[str, dict[str, str]] = {}  # per kernel: "error" (why it could not be built or loaded) or "path"


def _kernels(kernel: str | None) -> list[str]:
    if kernel is None:
        return list(KERNELS)
    if kernel not in KERNELS:
        raise ValueError(f"unknown native kernel {kernel!r}; fxopt has {', '.join(KERNELS)}")
    return [kernel]


def _source(kernel: str) -> Path:
    return Path(__file__).with_name("csrc") / KERNELS[kernel]


def source_digest(kernel: str | None = None) -> str:
    """A digest of a kernel's source and the headers they share (of every kernel's, without ``kernel``): a build,
    or a timing of a kernel, is only valid for it."""
    headers = sorted(Path(__file__).with_name("csrc").glob("*.h"))
    return hashlib.sha1(b"".join(p.read_bytes() for p in [*(_source(k) for k in _kernels(kernel)), *headers])
                        ).hexdigest()[:12]


def library_path(kernel: str) -> Path:
    """Where this machine's build of ``kernel``'s current source lives."""
    return cache_dir() / f"native-{machine_key().digest()}-{source_digest(kernel)}" / f"fxopt_{kernel}.so"


def _build(kernel: str, target: Path) -> None:
    """Compile ``kernel``'s source into ``target`` with Inductor's C++ settings, atomically (test workers build at
    once)."""
    from torch._inductor import cpp_builder
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        options = cpp_builder.CppTorchOptions(vec_isa=pick_vec_isa(), include_pytorch=True,
                                              extra_flags=("-march=native",))
        builder = cpp_builder.CppBuilder(f"fxopt_{kernel}", [str(_source(kernel))], options, output_dir=tmp)
        builder.build()
        os.replace(builder.get_target_file_path(), target)


def _load_one(kernel: str) -> bool:
    with _lock:
        state = _state.setdefault(kernel, {})
        if not state:
            try:
                target = library_path(kernel)
                if not target.exists():
                    print(f"[fxopt] building fxopt's native kernel {kernel} for this machine (once, about 20 s) …",
                          file=sys.stderr, flush=True)
                    _build(kernel, target)
                torch.ops.load_library(str(target))
                state["path"] = str(target)
            except Exception as e:  # no compiler, no headers, a read-only cache: Inductor's code is used instead
                message = str(e).strip().splitlines()[0] if str(e).strip() else ""
                state["error"] = f"{type(e).__name__}: {message}"[:300]
        return "path" in state


def load(kernel: str | None = None) -> bool:
    """Build (once per machine and source) and load ``kernel``'s library (every kernel's, without one); False where
    that failed (see :func:`why_unavailable`). Safe to call often: the second call costs nothing."""
    return all([_load_one(k) for k in _kernels(kernel)])


def available(kernel: str | None = None) -> bool:
    return load(kernel)


def why_unavailable(kernel: str | None = None) -> str | None:
    """Why a kernel's library (the first of every kernel's that failed) could not be built or loaded here, or None
    when it is loaded."""
    load(kernel)
    return next((_state[k]["error"] for k in _kernels(kernel) if "error" in _state[k]), None)


def unloadable_ops(op_names) -> str | None:
    """Load the libraries of ops named as an artifact's manifest names them (``fxopt.quantize_rows.default``);
    why the first that cannot be loaded fails, or None when all are loaded."""
    for name in op_names:
        kernel = name.split(".")[1] if name.count(".") >= 1 else name
        if kernel not in KERNELS:
            return f"this fxopt has no native kernel {name!r} (it has {', '.join(KERNELS)})"
        if not load(kernel):
            return why_unavailable(kernel)
        if kernel == "prefill_attention" and amx_bf16() is not None:
            return f"fxopt's prefill attention cannot run here: {amx_bf16()}"
    return None


def gemv_int8_grouped(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """The op, loading the library first (eager use and tests)."""
    if not load("gemv_int8_grouped"):
        raise RuntimeError(f"fxopt's native GEMV is not available here: {why_unavailable('gemv_int8_grouped')}")
    return torch.ops.fxopt.gemv_int8_grouped(x, q, scales, zeros, bias)


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """The op, loading the library first (eager use and tests)."""
    if not load("decode_attention"):
        raise RuntimeError(f"fxopt's native attention is not available here: {why_unavailable('decode_attention')}")
    return torch.ops.fxopt.decode_attention(q, keys, values, mask, scale)


_amx_why: str | None = None  # amx_bf16()'s answer, once per process ("" where the kernel runs)


def amx_bf16() -> str | None:
    """Why ``fxopt::prefill_attention`` cannot run here (None when it can): it needs the CPU's AMX bf16 tiles,
    the kernel's permission to use them, and its library built; checked once per process on a small call."""
    global _amx_why
    if _amx_why is None:
        from fxopt.machine import isa_features

        if not {"amx_tile", "amx_bf16"} <= set(isa_features()):
            _amx_why = "this CPU has no AMX bf16 tiles"
        elif not load("prefill_attention"):
            _amx_why = f"its library could not be built: {why_unavailable('prefill_attention')}"
        else:
            try:
                q = torch.randn(1, 2, 20, 32).bfloat16()
                out = torch.ops.fxopt.prefill_attention(q, q[:, :1], q[:, :1], None, 0.2, True)
                ref = torch.nn.functional.scaled_dot_product_attention(
                    q.float(), q[:, :1].float().expand(1, 2, 20, 32), q[:, :1].float().expand(1, 2, 20, 32),
                    is_causal=True, scale=0.2)
                _amx_why = "" if torch.allclose(out.float(), ref, atol=0.05) else "a probe call gave wrong values"
            except RuntimeError as e:
                _amx_why = f"a probe call failed: {str(e).strip().splitlines()[0][:200]}"
    return _amx_why or None


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                      scale: float | None = None, is_causal: bool = False) -> torch.Tensor:
    """The op, checking it can run here first (eager use and tests)."""
    why = amx_bf16()
    if why is not None:
        raise RuntimeError(f"fxopt's prefill attention is not available here: {why}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.ops.fxopt.prefill_attention(q, k, v, mask, scale, is_causal)


def write_gemv_native(rw, before: torch.fx.Node, x: torch.fx.Node, q: torch.fx.Node, scales: torch.fx.Node,
                      zeros: torch.fx.Node | None = None, bias: torch.fx.Node | None = None) -> torch.fx.Node:
    """Insert the op on ``x`` and the constants ``q``/``scales``/``zeros`` (and ``bias``) before ``before``: what
    :func:`fxopt.gemv.write_gemv_grouped` computes, as one extern call; returns its output node. Loads the library
    (a graph holding the op runs only where it is loaded)."""
    if not load("gemv_int8_grouped"):
        raise RuntimeError(f"fxopt's native GEMV is not available here: {why_unavailable('gemv_int8_grouped')}")
    return rw.call(torch.ops.fxopt.gemv_int8_grouped.default, (x, q, scales, zeros, bias), before=before)
