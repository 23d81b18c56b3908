"""One pool of fxopt-made constants per model, shared by every graph compiled from it.

Passes make new constants from the model's weights: fused q/k/v and gate/up weights, MKL-packed weights,
quantized weights and their scales. A causal LM compiles two graphs (prefill and decode) from the same
weights; without a pool each graph would build and hold its own copy. With one, a constant is built once,
keyed by *what it is made of* (a recipe name and the identities of its source tensors), and every graph's
``get_attr`` points at the same tensor::

    pool = ConstantPool()
    compile_graph(prefill, pipeline, pool=pool)     # builds the fused and packed weights
    compile_graph(decode, pipeline, pool=pool)      # finds them in the pool: built and held once
    pool.release()                                  # once the compiled code holds what it needs

Passes reach the pool through :meth:`fxopt.Rewriter.add_constant` (``key=``); the pass manager's graph
carries it in ``gm.meta["fxopt.constant_pool"]``. A graph without a pool builds its constants directly.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

import torch

META_KEY = "fxopt.constant_pool"


def tensor_identity(t: torch.Tensor) -> tuple:
    """What makes two tensor views the same data: storage, offset, shape, strides and dtype."""
    return ("tensor", t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
            str(t.dtype))


def _key_part(part: Any):
    if isinstance(part, torch.Tensor):
        return tensor_identity(part)
    if isinstance(part, (list, tuple)):
        return tuple(_key_part(p) for p in part)
    return part


class ConstantPool:
    """Constants keyed by recipe: ``pool.get(("cat", w_q, w_k, w_v), build)`` builds once, then returns the
    same tensor. Keys may hold tensors (keyed by identity, see :func:`tensor_identity`), numbers and strings.
    The pool keeps its source tensors alive while it holds a constant made of them, so an identity is never
    reused by another tensor in between."""

    def __init__(self):
        self._items: dict[tuple, tuple[torch.Tensor, tuple]] = {}
        self._kept: dict[tuple, tuple[weakref.ref, tuple]] = {}  # released constants the compiled code still holds
        self.built = 0
        self.reused = 0
        self.released_bytes = 0

    def get(self, key: tuple, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        k = _key_part(tuple(key))
        hit = self._items.get(k)
        if hit is None and k in self._kept:
            ref, sources = self._kept.pop(k)
            alive = ref()
            if alive is not None:
                hit = self._items[k] = (alive, sources)
        if hit is not None:
            self.reused += 1
            return hit[0]
        tensor = build().detach().contiguous()
        sources = tuple(p for p in key if isinstance(p, torch.Tensor))
        self._items[k] = (tensor, sources)
        self.built += 1
        return tensor

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t, _ in self._items.values())

    def release(self) -> int:
        """Drop the pool's references (the compiled code keeps what it uses); returns the bytes it held.

        The pool still finds a released constant while something else (a compiled graph) holds it: a graph
        compiled later from the same weights (a causal LM's prefill and decode graphs, compiled on the first
        ``generate()`` after the forward graph) reuses it instead of building a second copy. It keeps the
        constant's source tensors alive for that, which are the model's own weights (alive anyway)."""
        held = self.nbytes
        for k, (tensor, sources) in self._items.items():
            self._kept[k] = (weakref.ref(tensor), sources)
        self._items.clear()
        self.released_bytes += held
        return held

    def describe(self) -> str:
        return f"{self.built} built, {self.reused} reused, {self.nbytes / 2**20:.0f} MiB held"


def pool_of(gm: torch.fx.GraphModule) -> ConstantPool | None:
    return gm.meta.get(META_KEY)
