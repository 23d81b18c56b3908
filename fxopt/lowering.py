"""Lowering: turn the optimized FX graph into something that runs.

``backend="inductor"`` hands the graph to Inductor (the compiler behind ``torch.compile``), compiling it
*once* against the capture's symbolic shapes: one compiled artifact serves every batch and sequence length
in the captured range, so there are no recompilations and no Dynamo guards on the call path.
``backend="eager"`` runs the graph module as Python, for debugging.

``freezing="auto"`` (the default) freezes the weights only where the graph needs it
(:func:`fxopt.unfrozen_lowering.freezing_reason`: packed weights, computations on weights alone, linears left
for Inductor to pack); otherwise the weights are lifted into inputs, which lets Inductor's and AOTAutograd's
caches serve the next compile of the same model (:mod:`fxopt.unfrozen_lowering`). ``True``/``False`` force it.

Frozen or not, the compiled code holds every weight it needs (frozen: Inductor's own, often repacked copy;
unfrozen: references to the same tensors, passed as inputs). The constants that fxopt's passes made (fused
weights, position tables) need no other holder; :func:`release_own_constants` drops the graph module's
reference, so the graph stays printable and measurable but no longer runs eagerly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.fx

from fxopt.cpp_wrapper import cpp_wrapper_fits
from fxopt.parallel_depth import parallel_depth_at_example
from fxopt.rewriter import OWN_CONSTANT_PREFIX
from fxopt.unfrozen_lowering import compile_unfrozen, freezing_reason

BACKENDS = ("inductor", "eager")


@dataclass
class Lowered:
    """A callable over the flat input tensors, returning the flat outputs."""

    run: Callable[..., Sequence[torch.Tensor]]
    backend: str
    seconds: float
    compilations: int
    frozen: bool = False
    why_frozen: str | None = None  # what made ``freezing="auto"`` freeze


def check_options(backend: str, freezing: bool | str) -> None:
    """Raise ``ValueError`` for a backend or freezing value :func:`lower` does not take."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if freezing not in (True, False, "auto"):
        raise ValueError(f"freezing={freezing!r}: choose True, False or 'auto'")


def lower(gm: torch.fx.GraphModule, fake_inputs: Sequence[torch.Tensor], backend: str = "inductor",
          *, freezing: bool | str = "auto") -> Lowered:
    check_options(backend, freezing)
    start = time.perf_counter()
    if backend == "eager":
        return Lowered(gm, backend, 0.0, 0)
    why = freezing_reason(gm) if freezing == "auto" else None
    cpp_wrapper = cpp_wrapper_fits(gm)
    if freezing is False or (freezing == "auto" and why is None):
        with parallel_depth_at_example(gm):
            run = compile_unfrozen(gm, fake_inputs, cpp_wrapper=cpp_wrapper)
        return Lowered(run, backend, time.perf_counter() - start, 1)
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx

    with torch.no_grad(), inductor_config.patch(freezing=True, cpp_wrapper=cpp_wrapper), \
            parallel_depth_at_example(gm):
        compiled = compile_fx(gm, list(fake_inputs))
    return Lowered(compiled, backend, time.perf_counter() - start, 1, frozen=True, why_frozen=why)


def release_own_constants(gm: torch.fx.GraphModule) -> int:
    """Replace the fxopt-made constants of ``gm`` with meta tensors (same shape and dtype, no storage);
    call it only once compiled code with its own copies exists. Returns the bytes released."""
    released = 0
    for name, tensor in list(gm.named_buffers(recurse=False)):
        if name.startswith(OWN_CONSTANT_PREFIX) and tensor.device.type != "meta":
            released += tensor.numel() * tensor.element_size()
            gm.register_buffer(name, torch.empty(tensor.shape, dtype=tensor.dtype, device="meta"))
    if released:
        gm.meta["fxopt.constants_released"] = True
    return released
