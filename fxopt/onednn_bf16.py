"""oneDNN's bf16 linear on a packed weight, as ``pack-linears-bf16`` emits it into the graph.

``mkldnn._reorder_linear_weight(w, rows)`` packs a bf16 weight into the blocked layout oneDNN's AMX/AVX512-BF16
kernels read; ``mkldnn._linear_pointwise(x, packed, bias, attr, scalars, algorithm)`` multiplies bf16 rows by it
with fp32 accumulation, adds an fp32 bias and applies ``attr`` (e.g. ``"gelu"``) in its epilogue, and rounds to
bf16 once. It is what Inductor's freezing turns a bf16 ``aten.linear`` into; fxopt writes it itself so that the
packing is a node on a constant weight, which :func:`fxopt.unfrozen_lowering.lift_weights` runs once and passes
to the compiled code as an input — the graph then lowers unfrozen and Inductor's caches serve the next compile.

``_reorder_linear_weight`` has no fake (meta) implementation in torch (Inductor only calls it on real tensors,
while freezing); :func:`register_fake_reorder` adds one, so passes can propagate shapes through it.
"""
from __future__ import annotations

import torch

mkldnn = torch.ops.mkldnn
_registered = False


def available() -> bool:
    """Whether this torch build packs and runs bf16 linears on oneDNN (x86 builds with mkldnn do)."""
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_reorder_linear_weight")
            and hasattr(mkldnn, "_linear_pointwise"))


def register_fake_reorder() -> None:
    """Give ``mkldnn._reorder_linear_weight`` a fake implementation (once per process): the packed tensor
    reports the weight's own shape and dtype, as the real opaque one does."""
    global _registered
    if _registered:
        return
    try:
        @torch.library.register_fake("mkldnn::_reorder_linear_weight")
        def _fake_reorder(weight, batch_size=None):
            return weight.new_empty(weight.shape)
    except RuntimeError as e:  # a future torch may ship its own
        if "already" not in str(e):
            raise
    _registered = True
