"""Inductor's C++ kernels split their outer loops over threads as deep as the user's example sizes call for, not the
traced ones.

Each fused C++ kernel runs its outermost loops in parallel, ``collapse``-d to a depth that Inductor picks from size
hints: it stops as soon as the loops taken so far have as many iterations as there are threads
(``CppKernel.decide_parallel_depth``). For a graph compiled once for every batch size the hints are the traced
sizes, and export traces a batch of 1 as 2 (a size of 1 would be specialized). On a 2-thread machine every kernel
whose outermost loop is the batch then stops there: at the user's batch of 1 it runs on one thread. On SmolLM2's
prefill (1 × 256) these were the rotary-embedding and mask kernels of every layer, the heads and positions loops
left serial inside.

:func:`parallel_depth_at_example` lowers a graph with the depth chosen at the example's sizes
(``graph_module.meta["fxopt.example_dims"]``, the batch of 1 as given). Only the loop schedule changes: a collapsed
loop nest runs every size correctly, so the code stays right for every batch in the compiled range. The sizes
enter Inductor's graph-cache key (through a no-op post-grad pass whose ``uuid`` names them and this file's hash), so
a graph cached for one example is not served for another. ``FXOPT_PARALLEL_DEPTH_AT_EXAMPLE=0`` leaves Inductor's
choice.

Measured on the Intel Xeon host (2 threads, SmolLM2 ``quantize="bf16"``, 1 × 256, same process, interleaved with
eager): 78.4 → 74.9 ms, outputs bit-identical (BENCHMARKS.md, "Update, 2026-11-29, night").
"""
from __future__ import annotations

import contextlib
import os

import sympy
import torch.fx
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files


def example_sizes(gm: torch.fx.GraphModule) -> dict[str, int]:
    """Export's shape symbol name → the user's example size of that dimension (``s43`` → 1 for the batch)."""
    examples = gm.meta.get("fxopt.example_dims", {})
    return {symbol: int(examples[dim]) for symbol, dim in gm.meta.get("fxopt.symbols", {}).items() if dim in examples}


class _CacheKey(CustomGraphPass):
    """A post-grad pass that changes nothing: its ``uuid`` puts the example sizes into Inductor's cache key."""

    def __init__(self, sizes: dict[str, int]):
        self.sizes = sorted(sizes.items())

    def __call__(self, graph: torch.fx.Graph) -> None:
        pass

    def uuid(self):
        return ("fxopt.parallel_depth", get_hash_for_files((__file__,)), tuple(self.sizes))


@contextlib.contextmanager
def parallel_depth_at_example(gm: torch.fx.GraphModule):
    """While Inductor compiles ``gm``, its C++ kernels choose their parallel depth at the example's sizes."""
    sizes = example_sizes(gm)
    if not sizes or os.environ.get("FXOPT_PARALLEL_DEPTH_AT_EXAMPLE", "1") == "0":
        yield
        return
    try:
        from torch._inductor import config as inductor_config
        from torch._inductor.codegen import cpp as inductor_cpp
        from torch._inductor.virtualized import V
        inductor_decide = inductor_cpp.CppKernel.decide_parallel_depth
    except (ImportError, AttributeError):  # another Inductor: its own choice
        yield
        return
    if inductor_config.post_grad_custom_post_pass is not None:  # the user's own pass: leave Inductor alone
        yield
        return

    def decide_at_example(kernel, max_parallel_depth, threads):
        sizevars = V.graph.sizevars
        traced_hint = sizevars.optimization_hint

        def hint(expr, fallback=None):
            if isinstance(expr, sympy.Expr):
                expr = expr.xreplace({s: sympy.Integer(sizes[s.name]) for s in expr.free_symbols if s.name in sizes})
            return traced_hint(expr, fallback=fallback)

        sizevars.optimization_hint = hint  # shadows the method for this decision only
        try:
            return inductor_decide(kernel, max_parallel_depth, threads)
        finally:
            del sizevars.optimization_hint

    inductor_cpp.CppKernel.decide_parallel_depth = decide_at_example
    try:
        with inductor_config.patch(post_grad_custom_post_pass=_CacheKey(sizes)):
            yield
    finally:
        inductor_cpp.CppKernel.decide_parallel_depth = inductor_decide
