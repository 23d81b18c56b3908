"""The compile report: what ``compile_graph`` did to one graph, printable as a table."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from fxopt.cost.estimate import CostReport
from fxopt.machine import MachineKey
from fxopt.pass_manager import PipelineReport


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
    spec: str = ""  # the pipeline that ran, as a spec that parses back to it (fxopt.pipeline.format_spec)
    stages: dict[str, list[str]] = field(default_factory=dict)  # pass names per stage, in the order they ran
    machine: MachineKey | None = None  # what the target stage's choices were measured on (None: no target pass)
    precision: Any = None  # the precision plan (fxopt.quant_planner.PrecisionPlan) of a quantized compile

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
            ["pipeline", self.spec or "(empty)"],
            ["target stage", (f"{', '.join(self.stages.get('target', []))} on {self.machine.describe()}"
                              if self.machine else "none (no machine-specific choices)")],
        ], tablefmt="plain")
        notes = "".join(f"\nnote: {n}" for n in self.notes)
        if self.precision is not None:
            notes += f"\n{self.precision.summary()}"
        diagnostics = "".join(f"\n{r.name}: {d}" for r in self.pipeline.records for d in r.diagnostics)
        return f"{head}\n\n{self.pipeline.table()}{notes}{diagnostics}"
