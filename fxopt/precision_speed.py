"""Which low precision runs a linear faster on this machine: int8 or bf16.

``quantize="auto"`` starts its search from the fastest low precision of each linear, not from int8 everywhere.
On a CPU with AMX the two are close: MiniLM's 1024 × 384 → 1,536 linear took 1.21 ms as a bf16 GEMM on oneDNN's
packed weight, and int8 adds the per-token quantization of its input (``fxopt::quantize_rows``) to its GEMM, so
bf16 — the more accurate of the two — can be the faster. Where bf16 is emulated (no AVX512-BF16 or AMX) it is
never considered. Each linear's two kernels are timed at its shape (rows at the user's example) by
:meth:`fxopt.gemm_backends.GemmTimings.get_kernel`, in turns with fp32, and cached per machine:

* ``uint8-dynamic``: ``quantize_rows`` on fp32 rows, then oneDNN's int8 linear (what ``quantize-dynamic-int8``
  runs);
* ``bf16-packed``: oneDNN's bf16 linear on its packed weight (what ``pack-linears-bf16`` runs; the cast of the
  rows to bf16 fuses into the kernel before it).
"""
from __future__ import annotations

import torch

from fxopt import gemm_backends, onednn_bf16, onednn_int8
from fxopt.ir.meta import rows_at_example


def bf16_where_faster(gm: torch.fx.GraphModule, linears: list[torch.fx.Node]) -> dict[str, str]:
    """``{linear node name: why}`` for each linear whose bf16 kernel is at least as fast as its int8 one here;
    empty where bf16 is emulated or either kernel is missing from this torch build."""
    from fxopt.cost import machine_peaks

    if not (machine_peaks().native_bf16 and gemm_backends.available() and onednn_bf16.available()
            and onednn_int8.available()):
        return {}
    timings = gemm_backends.GemmTimings()
    faster = {}
    for node in linears:
        n, k = node.args[1].meta["val"].shape
        rows = rows_at_example(node, gm)
        int8 = timings.get_kernel("uint8-dynamic", rows, k, n)
        bf16 = timings.get_kernel("bf16-packed", rows, k, n)
        if bf16 <= int8:
            faster[node.name] = (f"bf16 as fast as int8 here ({bf16:.2f} vs {int8:.2f} ms at {rows}×{k}→{n}), "
                                 "and more accurate")
    timings.save()
    return faster
