"""``fxopt.compile``: capture → pass pipeline → lowering, returning a drop-in replacement module."""
from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from tabulate import tabulate

from fxopt.compiled_module import CompiledModule
from fxopt.cost.estimate import CostReport
from fxopt.cost.instrument import CostDelta
from fxopt.graph_pass import GraphPass
from fxopt.ir.capture import CapturedModel, capture
from fxopt.lowering import lower, release_own_constants
from fxopt.pass_manager import (Instrument, NumericCheck, PassManager, PipelineReport, PrintAfter, Timing, Verify,
                                count_nodes)
from fxopt.pipeline import build_pipeline


@dataclass
class CompileReport:
    """What ``fxopt.compile`` did, printable as a table (``print(compiled.report)``)."""

    model: str
    nodes_captured: int
    nodes_optimized: int
    capture_seconds: float
    passes_seconds: float
    lowering_seconds: float
    backend: str
    dims: str
    pipeline: PipelineReport
    example_dims: dict[str, int] = field(default_factory=dict)
    cost_captured: CostReport | None = None  # FLOPs/bytes formulas of the graph before the passes
    cost_optimized: CostReport | None = None  # ... and after them
    notes: list[str] = field(default_factory=list)

    @property
    def flops_captured(self):
        return self.cost_captured.flops

    @property
    def flops_optimized(self):
        return self.cost_optimized.flops

    def _at(self, expr) -> float:
        from fxopt.ir.meta import dim_symbol
        return float(expr.subs({dim_symbol(k): v for k, v in self.example_dims.items()}))

    def __str__(self) -> str:
        head = tabulate([
            ["model", self.model],
            ["dynamic dims", self.dims or "none (static shapes)"],
            ["nodes captured → optimized", f"{self.nodes_captured} → {self.nodes_optimized}"],
            ["FLOPs (formula)", str(self.flops_optimized)],
            ["FLOPs at " + ", ".join(f"{k}={v}" for k, v in self.example_dims.items()),
             f"{self._at(self.flops_captured) / 1e9:.3f} → {self._at(self.flops_optimized) / 1e9:.3f} GFLOP"],
            ["capture / passes / lowering", f"{self.capture_seconds:.1f} s / {self.passes_seconds:.1f} s / "
                                            f"{self.lowering_seconds:.1f} s ({self.backend})"],
        ], tablefmt="plain")
        notes = "".join(f"\nnote: {n}" for n in self.notes)
        diagnostics = "".join(f"\n{r.name}: {d}" for r in self.pipeline.records for d in r.diagnostics)
        return f"{head}\n\n{self.pipeline.table()}{notes}{diagnostics}"


def compile(
    model: torch.nn.Module,
    example_inputs: Any = None,
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    passes: str | Sequence[str | GraphPass] | None = None,
    dynamic: bool = True,
    dims: Mapping[str, tuple[int, int]] | None = None,
    backend: str = "inductor",
    opt_level: int = 1,
    disable: Sequence[str] = (),
    check_numerics: bool = True,
    numeric_rtol: float = 1e-4,
    on_numeric_failure: str = "raise",
    verify: bool = True,
    print_after: Sequence[str] | None = None,
    instruments: Sequence[Instrument] = (),
    verbose: bool = False,
) -> CompiledModule:
    """Compile ``model`` for inference and return a module with the same call signature and outputs.

    ``example_inputs``: a tensor, a tuple of positional arguments, or a mapping of keyword arguments
    (a tokenizer's ``BatchEncoding`` works). ``passes``: ``None`` for the default pipeline at
    ``opt_level``, a spec string (``"eliminate-dead-nodes,fold-constants"``) or a list of names/passes.
    ``dynamic``/``dims``: batch (and, for Hugging Face models, sequence) sizes are dynamic within
    ``dims`` (defaults in :data:`fxopt.ir.capture.DEFAULT_DIM_RANGES`); one compiled artifact serves them all.
    ``check_numerics`` runs the graph on the example inputs after every pass and names the pass that
    moved the outputs by more than ``numeric_rtol`` (``on_numeric_failure="skip"`` reverts it instead).
    """
    args, kwargs = _split_example(example_inputs, example_kwargs)
    captured = capture(model, args, kwargs, dynamic=dynamic, dims=dict(dims) if dims else None)
    gm = captured.graph_module
    nodes_captured = count_nodes(gm)

    inst: list[Instrument] = []
    if verify:
        inst.append(Verify())
    if check_numerics:
        inst.append(NumericCheck(rtol=numeric_rtol, on_failure=on_numeric_failure))
    if print_after is not None:
        inst.append(PrintAfter(print_after))
    if verbose:
        inst.append(Timing(sys.stderr))
    cost = CostDelta(captured.example_dims())
    inst.append(cost)
    inst.extend(instruments)
    manager = PassManager(build_pipeline(passes, opt_level=opt_level, disable=disable), inst)
    start = time.perf_counter()
    pipeline_report = manager.run(gm, captured.example_inputs)
    passes_seconds = time.perf_counter() - start

    lowered = lower(gm, captured.fake_inputs(), backend)
    if backend == "inductor":
        released = release_own_constants(gm)
        if released:
            captured.notes.append(f"{released / 2**20:.0f} MiB of fxopt-made constants (fused weights, tables) are "
                                  "held by the compiled code only; compiled.graph_module is for inspection")
    report = CompileReport(
        model=type(model).__name__,
        nodes_captured=nodes_captured,
        nodes_optimized=count_nodes(gm),
        capture_seconds=captured.capture_seconds,
        passes_seconds=passes_seconds,
        lowering_seconds=lowered.seconds,
        backend=backend,
        dims=", ".join(str(d) for d in captured.dims.values()),
        pipeline=pipeline_report,
        example_dims=captured.example_dims(),
        cost_captured=cost.first,
        cost_optimized=cost.last,
        notes=list(captured.notes),
    )
    if verbose:
        print(report, file=sys.stderr)
    return CompiledModule(model, captured, gm, lowered, report)


def _split_example(example_inputs, example_kwargs) -> tuple[tuple, dict]:
    kwargs = dict(example_kwargs or {})
    if example_inputs is None:
        return (), kwargs
    if isinstance(example_inputs, Mapping):
        return (), {**dict(example_inputs), **kwargs}
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), kwargs
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), kwargs
    raise TypeError("example_inputs must be a tensor, a tuple/list of arguments or a mapping of keyword "
                    f"arguments, got {type(example_inputs).__name__}")


__all__ = ["compile", "CompileReport", "CapturedModel"]
