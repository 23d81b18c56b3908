"""Concatenating weights without holding them twice.

Fusing siblings (q/k/v, gate/up) concatenates their weights into a new tensor. The model still holds the
originals, so without care every fused weight is in memory twice: 318 MB more for SmolLM2, whose q/k/v and
gate/up are three quarters of its linear weights. :func:`concat_rows` builds the concatenation and then points
each source tensor (the model's own ``Parameter``) at its rows of it, so the originals' memory is freed and the
model and the compiled code read one buffer::

    fused = concat_rows([q.weight, k.weight, v.weight])   # f32[960, 576], new memory
    q.weight.data_ptr() == fused.data_ptr()                 # q/k/v.weight are now views of its rows
    concat_rows([q.weight, k.weight, v.weight])             # again (the decode graph): a view, no copy

The model computes exactly what it did (same values), but it now shares memory with the compiled code: a
weight changed in place after compiling changes the compiled model too (compile again after editing weights),
and ``safetensors`` refuses to save tensors that share memory (save with ``safe_serialization=False``, or
pass ``share=false`` to the fusing pass to keep the model's tensors as they were, at the cost of the copy).
"""
from __future__ import annotations

from typing import Sequence

import torch


def adjacent_rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The tensor that ``tensors`` (row blocks of equal width) already form in memory, one after another in
    one storage, as a view; None where they do not."""
    first = tensors[0]
    if any(t.dtype != first.dtype or t.shape[1:] != first.shape[1:] or not t.is_contiguous() for t in tensors):
        return None
    storage = first.untyped_storage().data_ptr()
    offset = first.storage_offset()
    for t in tensors:
        if t.untyped_storage().data_ptr() != storage or t.storage_offset() != offset:
            return None
        offset += t.numel()
    rows = sum(t.shape[0] for t in tensors)
    shape = (rows, *first.shape[1:])
    return first.as_strided(shape, torch.empty(shape, device="meta").stride(), first.storage_offset())


def concat_rows(tensors: Sequence[torch.Tensor], *, share: bool = True) -> torch.Tensor:
    """``torch.cat(tensors, 0)``; with ``share`` the sources then become views of its rows (their memory is
    freed where nothing else holds it), and sources that already are adjacent rows give a view, not a copy."""
    if share:
        view = adjacent_rows(tensors)
        if view is not None:
            return view.detach()
    fused = torch.cat([t.detach() for t in tensors], 0)
    if share:
        start = 0
        for t in tensors:
            t.data = fused[start:start + t.shape[0]]
            start += t.shape[0]
    return fused
