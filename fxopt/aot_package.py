"""Ahead-of-time lowering: one compiled graph as an AOTInductor package (``.pt2``), and the runner that calls it.

A saved artifact (:mod:`fxopt.artifact`) holds one package per graph (the forward graph; for causal LMs also
the prefill and decode graphs). Each package is built from the graph after fxopt's *portable* passes, re-run
on a fresh copy of the capture (the in-process compiled code has already dropped the constants those passes
made), exported again with its dynamic dims and compiled by ``torch._inductor.aoti_compile_and_package``
with weight freezing, as the in-process lowering does:

    captured ──fresh copy──▶ portable passes ──torch.export──▶ AOTInductor (freezing) ──▶ forward.pt2

The package is a zip with the generated C++ and one shared library; the weights are inside that library,
already in the layout the kernels read (Inductor's freezing packs linear weights into oneDNN's opaque
blocked format, which no tensor file format can hold). The target stage (``select-gemm-backend``) is not
re-run: its MKL-packed weights are opaque tensors that AOTInductor cannot copy, and freezing makes the
GEMM library choice itself (oneDNN). Measured on MiniLM 8 × 128: the package runs as fast as the in-process
compiled code (1.37× vs 1.36× eager); an unfrozen package with plain weights (which a safetensors file could
feed) runs at 1.18×.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.fx
from torch.export import Dim

from fxopt.compiled_graph import CompiledGraph
from fxopt.constant_pool import META_KEY as POOL_KEY
from fxopt.constant_pool import ConstantPool
from fxopt.ir.capture import CapturedModel, fresh_graph_module
from fxopt.pass_manager import PassManager, Verify
from fxopt.pipeline import split_stages


def portable_graph_module(graph: CompiledGraph) -> torch.fx.GraphModule:
    """``graph``'s portable passes, with the options they ran with, re-run on a fresh copy of its capture.
    The result is the graph the in-process compile lowered, minus the target stage, with every constant real."""
    if graph.pipeline is None:
        raise ValueError("this compiled graph did not record its pipeline; compile it with fxopt.compile")
    gm = fresh_graph_module(graph.captured)
    gm.meta[POOL_KEY] = ConstantPool()
    try:
        PassManager(split_stages(graph.pipeline)["portable"], [Verify(deep=False)]).run(
            gm, graph.captured.examples())
    finally:
        del gm.meta[POOL_KEY]
    return gm


def dynamic_shapes(captured: CapturedModel) -> tuple[dict[int, Dim], ...]:
    """``torch.export``'s spec for the flat inputs: one :class:`Dim` per fxopt dim, with its compiled range."""
    dims = {name: Dim(name, min=rng.min, max=rng.max) for name, rng in captured.dims.items()}
    return tuple({axis: dims[size] for axis, size in enumerate(slot.shape) if isinstance(size, str)}
                 for slot in captured.tensor_slots)


def compile_package(gm: torch.fx.GraphModule, captured: CapturedModel, path: Path) -> float:
    """Export ``gm`` (flat tensors in, flat tensors out) and AOT-compile it into the package ``path``.
    Returns the seconds it took."""
    from torch._inductor import aoti_compile_and_package

    start = time.perf_counter()
    with torch.no_grad():
        exported = torch.export.export(gm, tuple(captured.examples()), dynamic_shapes=dynamic_shapes(captured),
                                       strict=False)
        aoti_compile_and_package(exported, package_path=str(path), inductor_configs={"freezing": True})
    return time.perf_counter() - start


class PackageRunner:
    """Calls one loaded package with the flat input tensors; returns the flat outputs.

    AOTInductor's runner holds ``runners`` model instances (activation buffers); up to that many calls run at
    once and further callers wait for a free one, so it is safe to call from any number of threads.
    """

    def __init__(self, path: Path, runners: int = 1):
        self.path = Path(path)
        self.loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, runners, -1)

    def __call__(self, *flat: torch.Tensor) -> list[torch.Tensor]:
        return self.loader.boxed_run(list(flat))
