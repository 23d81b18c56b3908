"""Inductor's C++ wrapper, for the graphs whose every op runs under it.

Inductor's generated code calls its kernels from a Python function by default. For SmolLM2's bf16 prefill graph
that is about 300 kernel calls and buffer allocations per call: 10.5 ms of a 200 ms call in the profiler (the
self time of ``## Call CompiledFxGraph``). With ``cpp_wrapper`` Inductor writes that function in C++ as well.
Measured in one process, interleaved with eager (Intel Xeon with AMX, 2 threads, torch 2.13):

- MiniLM 8 × 128, ``quantize="bf16"``: 60.8 → 56.3 ms;
- SmolLM2 1 × 256, ``quantize="bf16"``: 177.6 → 166.6 ms, compile time unchanged (148 s both, cold caches).

Not every op runs under it in torch 2.13: MiniLM's ``quantize="auto"`` graph, with oneDNN's int8 linear
(``onednn.qlinear_pointwise``) and fxopt's native ops, compiled but failed on its first call ("Expected Tensor
but got None"). So :func:`cpp_wrapper_fits` takes it only for graphs whose ops are all aten, prims or oneDNN's and
MKL's float ops (``mkldnn``, ``mkl``), plus the ops of :data:`OPS` that it runs (fxopt's AMX attention: without
it, MiniLM's ``"bf16"`` graph fell back to the Python wrapper and lost what the kernel saved), and the others keep
the Python wrapper. ``FXOPT_CPP_WRAPPER=0`` turns it off.
"""
from __future__ import annotations

import operator
import os

import torch
import torch.fx

#: the op namespaces every one of whose ops Inductor's C++ wrapper runs here
NAMESPACES = frozenset({"aten", "prims", "mkldnn", "mkl"})

#: other ops it runs here (checked in tests/test_native_attention.py)
OPS = frozenset({"fxopt::prefill_attention"})


def cpp_wrapper_fits(gm: torch.fx.GraphModule) -> bool:
    """Whether ``gm`` is lowered with Inductor's C++ wrapper: every call is an op of :data:`NAMESPACES` (or
    ``getitem``), and ``FXOPT_CPP_WRAPPER`` is not ``0``."""
    if os.environ.get("FXOPT_CPP_WRAPPER", "1") == "0":
        return False
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is not operator.getitem \
                and getattr(node.target, "namespace", None) not in NAMESPACES \
                and getattr(getattr(node.target, "_schema", None), "name", None) not in OPS:
            return False
        if node.op in ("call_module", "call_method"):
            return False
    return True
