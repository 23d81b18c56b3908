"""select-gemm-backend: run each linear on the GEMM library that is fastest for its shape on this machine.

Times oneDNN and MKL packed GEMMs and oneDNN on the plain weight for every distinct (rows at the example shape,
in, out) of the graph's linears (cached per machine, see :mod:`fxopt.gemm_backends`). A packed backend holds a
second copy of the weight (the model keeps its own), so it is chosen only where it is faster than oneDNN on the
plain weight by more than ``copy_margin`` (default 25%); between the two packed ones, MKL must beat oneDNN by
``margin``. Linears on packed oneDNN stay ``aten.linear``, which Inductor (with freezing) packs; on the plain
weight they become ``mkldnn._linear_pointwise`` reading the model's own tensor. Either way oneDNN fuses a
following activation or residual add. The choice per shape is listed in the compile report.

Weights held once is what brings fxopt's memory to torch.compile's: compiling and running SmolLM2 1 × 256 peaked
at 2,072 MB with packed copies and 1,409 MB without (torch.compile static + freezing: 1,245 MB), and fxopt went
from 1.32× to 1.27× eager in that run (AMD EPYC, BENCHMARKS.md; the plain weight costs oneDNN 3–6% at 256 and
1,024 rows and 14–20% at 64 in a quiet micro-benchmark). ``copy_margin=0`` takes the fastest library whatever it holds; ``copy_margin=1`` never
holds a copy, which is what a causal LM's default pipeline uses (:data:`fxopt.generation.CAUSAL_LM_GEMM_OPTIONS`). oneDNN's packed
weights are also left out by default (``cacheable``): Inductor bypasses its FX graph cache for any graph that holds
one, so a single packed pooler made every later compile of MiniLM lower the whole graph again (a warm compile took
9.7 s of a cold one's 17.5 with it, 8.3 of 18.3 without). ``copy_margin=0,cacheable=false`` is the previous
behaviour. MKL's packed copy is kept as a plain tensor of its bytes (:func:`_mkl_packed`), which the caches accept, so a
graph using it still lowers unfrozen (:mod:`fxopt.unfrozen_lowering`).

The decision is per GEMM, the proof is end to end: ``fxopt bench`` runs the pipeline with and without this
pass side by side. On SmolLM2 prefill 1 × 256 it moves every linear to MKL, and the interleaved same-process
A/B runs gave 1.27×, 1.27× and 1.29× eager with it against 1.15×, 1.16× and 1.17× without (BENCHMARKS.md
has the latest). The first version timed the GEMMs at the traced rows (a batch of 1 is traced as 2) and made
SmolLM2 slower; the rows are now the user's example rows. One profiler run, taken in blocks of five calls
instead of interleaved, showed the opposite order (MKL's LM head at 112 ms where it takes 53 ms alone): the
choice is only as good as the machine's timings are steady, and ``refresh=True`` measures again;
``backend=mkl`` or ``backend=onednn`` puts every linear on one library without timing (what tests use).

Linears of at most ``gemm_backends.GEMV_MAX_ROWS`` rows at the example shape (a decode step) are also timed as
``gemv``, a broadcast multiply and sum that Inductor compiles into a loop streaming the plain weight (no packed
copy; :mod:`fxopt.gemv`); it is chosen where it is faster by more than ``margin``. On SmolLM2's decode step
(AMD EPYC, 2 threads) it took every linear and the step went from 33 to 23 ms.

Inductor's C++ GEMM template is another candidate the machine offers; it is not timed here because it lost
everywhere it was tried: with ``max_autotune`` Inductor's own autotuner timed it at 2–2.5× oneDNN's time
for each of SmolLM2's five linear shapes, and the model ran 291.7 vs 287.6 ms without it (compile 72 s vs 50 s).

Before::

    %linear = aten.linear(%x, %proj.weight, %proj.bias) : f32[batch, 10, 32]

After::

    %_fxopt_linear_mkl_packed = const : f32[...]
    %_mkl_linear_default = mkl._mkl_linear(%x, %_fxopt_linear_mkl_packed, %proj.weight, %proj.bias, 40) : f32[batch, 10, 32]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fxopt import gemm_backends
from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.gemv import contiguous_strides, write_gemv
from fxopt.ir.meta import rows_at_example
from fxopt.rewriter import Rewriter

aten = torch.ops.aten


@dataclass
class GemmOptions:
    margin: float = 0.03  # MKL must be this much faster (it cannot fuse an epilogue, oneDNN can)
    copy_margin: float = 0.25  # a backend that packs its own copy of the weight must be this much faster
    # Inductor bypasses its FX graph cache for a graph holding a oneDNN-packed weight ("mkldnn tensors
    # unpickleable"), so one such linear makes every later compile lower the whole graph again: not by default
    cacheable: bool = True
    reps: int = 15
    refresh: bool = False  # measure again instead of reading the cache
    backend: Literal["measure", "mkl", "onednn", "onednn-plain", "gemv"] = "measure"  # or all on one, untimed


@graph_pass("select-gemm-backend", options=GemmOptions, stage="target",
            after=("fuse-sibling-linears", "fold-constants"))
def select_gemm_backend(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Move each linear to the GEMM backend (oneDNN, MKL or Inductor's GEMV) measured fastest for its shape here."""
    opts: GemmOptions = ctx.options
    rw = Rewriter(gm)
    if not gemm_backends.available():
        ctx.note("MKL or oneDNN is not available in this torch build: linears left as they are")
        return rw.result()
    timings = gemm_backends.GemmTimings(refresh=opts.refresh, reps=opts.reps) if opts.backend == "measure" else None
    chosen: dict[tuple, tuple[str, dict]] = {}
    for node in list(gm.graph.find_nodes(op="call_function", target=aten.linear.default)):
        weight = rw.constant(node.args[1])
        bias_node = node.args[2] if len(node.args) > 2 else None
        if weight is None or weight.dtype != torch.float32 or weight.dim() != 2 or node.kwargs:
            continue
        if bias_node is not None and rw.constant(bias_node) is None:
            continue
        rows = rows_at_example(node, gm)
        n, k = weight.shape
        gemv_ok = contiguous_strides(node.args[0].meta["val"]) is not None
        if timings is None:
            backend, times = opts.backend, {}
        else:
            times = timings.get(rows, k, n, bias_node is not None)
            excluded = ({"gemv"} if not gemv_ok else set()) | ({"onednn"} if opts.cacheable else set())
            backend = _fastest({b: t for b, t in times.items() if b not in excluded}, opts.margin, opts.copy_margin)
        if backend == "gemv" and not gemv_ok:
            backend = "onednn-plain"  # rows of a dynamic size other than the outermost: no static layout to pin
        if backend == "onednn-plain" and not _write_onednn_plain(rw, node, bias_node):
            backend = "onednn"  # an add of the linear to itself: left to Inductor, which packs it
        chosen[(rows, k, n)] = (backend, times)
        rw.count(backend)
        if backend in ("onednn", "onednn-plain"):
            continue
        if backend == "gemv":
            rw.replace(node, write_gemv(rw, node, node.args[0], node.args[1], bias_node))
            continue
        packed_node = rw.add_constant(f"{node.name}_mkl_packed",
                                      lambda: _mkl_packed(weight, rows), before=node,
                                      key=("mkl-pack", weight, rows))
        new = rw.call(torch.ops.mkl._mkl_linear.default, (node.args[0], packed_node, node.args[1], bias_node, rows),
                      before=node)
        rw.replace(node, new)
    if timings is None:
        ctx.note(f"every linear on {opts.backend}, as the options ask (not timed)")
        return rw.result()
    timings.save()
    for (rows, k, n), (backend, t) in sorted(chosen.items()):
        times = ", ".join(f"{name} {ms:.3f} ms" for name, ms in t.items())
        ctx.note(f"linear {rows}×{k}→{n}: {times} → {backend}")
    return rw.result()


def _mkl_packed(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """MKL's packed copy of ``weight`` as a plain tensor: ``_mkl_linear`` reads only its bytes, and unlike the
    opaque (``torch._mkldnn``) tensor ``_mkl_reorder_linear_weight`` returns, a plain one can be hashed by
    Inductor's and AOTAutograd's caches and passed to compiled code as an input (:mod:`fxopt.unfrozen_lowering`)."""
    return torch.ops.mkl._mkl_reorder_linear_weight(weight, rows).to_dense()


def _fastest(times: dict[str, float], margin: float, copy_margin: float) -> str:
    """The fastest backend that runs on the model's own weight (oneDNN on the plain weight, or the GEMV faster by
    more than ``margin``), unless a backend that packs a copy (oneDNN, or MKL faster than it by more than
    ``margin``) beats it by more than ``copy_margin``: a second copy of every weight must buy real time."""
    def pick(default: str, challengers: tuple[str, ...]) -> str:
        best = default
        for name in challengers:
            if name in times and (best not in times or times[name] < times[best] * (1 - margin)):
                best = name
        return best

    copying = pick("onednn", ("mkl",))
    if "onednn-plain" not in times:
        return copying
    no_copy = pick("onednn-plain", ("gemv",))
    if copying not in times:  # packed oneDNN left out (cacheable) and MKL not timed
        return no_copy
    return copying if times[copying] < times[no_copy] * (1 - copy_margin) else no_copy


def _write_onednn_plain(rw: Rewriter, node: torch.fx.Node, bias_node) -> bool:
    """Replace ``node`` with ``mkldnn._linear_pointwise`` on the plain weight; False where that is not safe. Inductor's
    freezing patterns take that op's weight to be packed: their linear + bias pattern, ``add(linear, y)``,
    fails an assertion on a plain one. ``add(y, linear)`` does not match it (and still gets oneDNN's fused
    residual add), so the adds that read the linear are written with their operands the other way round."""
    adds = [user for user in node.users if user.target is aten.add.Tensor and user.args[0] is node]
    if any(user.kwargs or len(user.args) != 2 or user.args[1] is node for user in adds):
        return False
    linear = rw.call(torch.ops.mkldnn._linear_pointwise.default,
                     (node.args[0], node.args[1], bias_node, "none", [], ""), before=node)
    rw.replace(node, linear)
    for user in adds:
        user.args = (user.args[1], linear)
    return True
