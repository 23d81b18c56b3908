"""Lowering: turn the optimized FX graph into something that runs.

``backend="inductor"`` hands the graph to Inductor (the compiler behind ``torch.compile``) with weight
freezing on, compiling it *once* against the capture's symbolic shapes: one compiled artifact serves
every batch and sequence length in the captured range, so there are no recompilations and no Dynamo
guards on the call path. ``backend="eager"`` runs the graph module as Python, for debugging.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.fx

BACKENDS = ("inductor", "eager")


@dataclass
class Lowered:
    """A callable over the flat input tensors, returning the flat outputs."""

    run: Callable[..., Sequence[torch.Tensor]]
    backend: str
    seconds: float
    compilations: int


def lower(gm: torch.fx.GraphModule, fake_inputs: Sequence[torch.Tensor], backend: str = "inductor",
          *, freezing: bool = True) -> Lowered:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    start = time.perf_counter()
    if backend == "eager":
        return Lowered(gm, backend, 0.0, 0)
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx

    with torch.no_grad(), inductor_config.patch(freezing=freezing):
        compiled = compile_fx(gm, list(fake_inputs))
    return Lowered(compiled, backend, time.perf_counter() - start, 1)
