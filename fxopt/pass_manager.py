"""Runs an ordered pipeline of passes over a graph, with instruments around every pass.

Instruments are hooks, not flags: :class:`Timing` (progress lines), :class:`Verify` (``ir.verify``
after each pass), :class:`PrintAfter` (the canonical text after chosen passes) and
:class:`NumericCheck` (runs the graph on the example inputs after each pass and names the pass that
changed the outputs; ``on_failure="skip"`` reverts that pass and carries on).
"""
from __future__ import annotations

import copy
import hashlib
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence, TextIO

import torch
import torch.fx
from tabulate import tabulate

from fxopt.errors import NumericsError, PassError, PipelineSpecError
from fxopt.graph_pass import GraphPass, PassContext, PassResult
from fxopt.ir.printer import format_graph
from fxopt.ir.verifier import verify


@dataclass
class PassRecord:
    """What happened when one pass ran."""

    name: str
    changed: bool
    stats: dict[str, Any]
    seconds: float
    nodes_before: int
    nodes_after: int
    reverted: str | None = None
    diagnostics: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # filled by instruments (e.g. cost deltas)


@dataclass
class PipelineReport:
    records: list[PassRecord] = field(default_factory=list)

    def table(self) -> str:
        costs = any("gflop_delta" in r.extra for r in self.records)
        rows = []
        for r in self.records:
            stats = ", ".join(f"{k}={v}" for k, v in r.stats.items())
            status = f"reverted: {r.reverted}" if r.reverted else ("changed" if r.changed else "-")
            row = [r.name, r.nodes_before, r.nodes_after, f"{r.seconds * 1e3:.1f}", status]
            if costs:
                row += [f"{r.extra.get('gflop_delta', 0.0):+.3f}", f"{r.extra.get('mb_delta', 0.0):+.1f}"]
            rows.append(row + [stats])
        headers = ["pass", "nodes before", "nodes after", "ms", "result"]
        headers += ["Δ GFLOP", "Δ MB moved"] if costs else []
        return tabulate(rows, headers=headers + ["stats"], disable_numparse=True)

    def record(self, name: str) -> PassRecord:
        for r in self.records:
            if r.name == name:
                return r
        raise KeyError(f"no pass named {name!r} ran; ran: {[r.name for r in self.records]}")


class Instrument:
    """Base class: override the hooks you need. ``after_pass`` may return a reason to revert the pass."""

    wants_snapshot = False

    def before_pipeline(self, gm: torch.fx.GraphModule, ctx: PassContext) -> None: ...

    def before_pass(self, p: GraphPass, gm: torch.fx.GraphModule, ctx: PassContext) -> None: ...

    def after_pass(self, p: GraphPass, gm: torch.fx.GraphModule, ctx: PassContext, record: PassRecord) -> str | None:
        return None

    def after_pipeline(self, gm: torch.fx.GraphModule, report: PipelineReport) -> None: ...


def count_nodes(gm: torch.fx.GraphModule) -> int:
    """Nodes that do work or hold data: everything but ``get_attr`` constants."""
    return sum(1 for n in gm.graph.nodes if n.op != "get_attr")


def fingerprint(gm: torch.fx.GraphModule) -> str:
    return hashlib.sha1(format_graph(gm).encode()).hexdigest()


class PassManager:
    """An ordered list of (pass, options); ``run`` applies them in order with the instruments."""

    def __init__(self, passes: Sequence[GraphPass | tuple[GraphPass, Any]], instruments: Sequence[Instrument] = ()):
        self.passes: list[tuple[GraphPass, Any]] = [
            (p, p.default_options()) if isinstance(p, GraphPass) else (p[0], p[1]) for p in passes
        ]
        self.instruments = list(instruments)
        check_order([p for p, _ in self.passes])

    @property
    def names(self) -> list[str]:
        return [p.name for p, _ in self.passes]

    def run(self, gm: torch.fx.GraphModule, example_inputs: Sequence[torch.Tensor] = ()) -> PipelineReport:
        report = PipelineReport()
        base_ctx = PassContext(example_inputs=list(example_inputs))
        mark_provenance(gm, "capture")
        for inst in self.instruments:
            inst.before_pipeline(gm, base_ctx)
        snapshot_needed = any(i.wants_snapshot for i in self.instruments)
        for p, options in self.passes:
            ctx = PassContext(example_inputs=base_ctx.example_inputs, options=options)
            snapshot = _Snapshot(gm) if snapshot_needed else None
            before_print = fingerprint(gm)
            nodes_before = count_nodes(gm)
            for inst in self.instruments:
                inst.before_pass(p, gm, ctx)
            start = time.perf_counter()
            try:
                result = p.fn(gm, ctx)
            except Exception as e:
                raise PassError(f"pass {p.name!r} failed: {type(e).__name__}: {e}") from e
            seconds = time.perf_counter() - start
            result = result if isinstance(result, PassResult) else PassResult()
            actually_changed = fingerprint(gm) != before_print
            if result.changed is False and actually_changed:
                raise PassError(f"pass {p.name!r} reported changed=False but modified the graph; "
                                "let the pass manager decide (return changed=None) or fix the flag.")
            if actually_changed:
                gm.recompile()
                mark_provenance(gm, p.name)
            record = PassRecord(p.name, actually_changed, dict(result.stats), seconds, nodes_before,
                                count_nodes(gm), diagnostics=list(ctx.diagnostics))
            for inst in self.instruments:
                reason = inst.after_pass(p, gm, ctx, record)
                if reason and snapshot is not None:
                    snapshot.restore(gm)
                    record.reverted = reason
                    record.changed = False
                    record.nodes_after = count_nodes(gm)
                    break
            report.records.append(record)
        for inst in self.instruments:
            inst.after_pipeline(gm, report)
        return report


def mark_provenance(gm: torch.fx.GraphModule, creator: str) -> None:
    """Tag nodes that have no creator yet with ``creator`` (``meta["fxopt.created_by"]``): the pass that made
    each node, shown by the dump tool."""
    for node in gm.graph.nodes:
        node.meta.setdefault("fxopt.created_by", creator)


def check_order(passes: Sequence[GraphPass]) -> None:
    """Raise :class:`fxopt.PipelineSpecError` when a pass's ``after``/``before`` constraint is broken."""
    position = {p.name: i for i, p in enumerate(passes)}
    for i, p in enumerate(passes):
        for other in p.after:
            if other in position and position[other] > i:
                raise PipelineSpecError(f"pass {p.name!r} must run after {other!r}, but the pipeline puts it before")
        for other in p.before:
            if other in position and position[other] < i:
                raise PipelineSpecError(f"pass {p.name!r} must run before {other!r}, but the pipeline puts it after")


class _Snapshot:
    """The graph and the attribute names before a pass, to revert it (passes never edit tensors in place)."""

    def __init__(self, gm: torch.fx.GraphModule):
        self.graph = copy.deepcopy(gm.graph)
        self.attrs = set(gm._buffers) | set(gm._parameters) | set(gm._modules)

    def restore(self, gm: torch.fx.GraphModule) -> None:
        for name in (set(gm._buffers) | set(gm._parameters) | set(gm._modules)) - self.attrs:
            delattr(gm, name)
        gm.graph = self.graph
        gm.recompile()


# --------------------------------------------------------------------------------------------------
# instruments


class Timing(Instrument):
    """Prints one progress line per pass: name, milliseconds, node count change."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.total = 0
        self.index = 0

    def before_pipeline(self, gm, ctx):
        self.index = 0

    def after_pass(self, p, gm, ctx, record):
        self.index += 1
        delta = record.nodes_after - record.nodes_before
        print(f"[fxopt] {p.name:<28} {record.seconds * 1e3:8.1f} ms  nodes {record.nodes_before} → "
              f"{record.nodes_after} ({delta:+d})", file=self.stream, flush=True)
        return None


class Verify(Instrument):
    """Runs :func:`fxopt.ir.verify` before the pipeline and after every pass that changed the graph."""

    def before_pipeline(self, gm, ctx):
        verify(gm, context="before the pipeline")

    def after_pass(self, p, gm, ctx, record):
        if record.changed:
            verify(gm, context=f"after pass {p.name!r}")
        return None


class PrintAfter(Instrument):
    """Prints the canonical text of the graph after the named passes (all when ``names`` is None)."""

    def __init__(self, names: Sequence[str] | None = None, stream: TextIO | None = None, constants: bool = False):
        self.names = set(names) if names is not None else None
        self.stream = stream or sys.stdout
        self.constants = constants

    def after_pass(self, p, gm, ctx, record):
        if self.names is None or p.name in self.names:
            print(f"// after {p.name}", file=self.stream)
            print(format_graph(gm, constants=self.constants), file=self.stream)
        return None


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (exact match for non-float tensors)."""
    if actual.shape != expected.shape:
        return float("inf")
    if not expected.is_floating_point():
        return 0.0 if torch.equal(actual, expected) else float("inf")
    diff = (actual.float() - expected.float()).abs().max().item()
    scale = expected.float().abs().max().item()
    return diff / max(scale, 1e-12)


class NumericCheck(Instrument):
    """After every pass that changed the graph, run it on the example inputs and compare to the
    outputs before the pipeline. ``on_failure="raise"`` names the pass in a :class:`fxopt.NumericsError`;
    ``"skip"`` reverts the pass, records why, and goes on with the next."""

    def __init__(self, rtol: float = 1e-4, on_failure: str = "raise"):
        if on_failure not in ("raise", "skip"):
            raise ValueError(f"on_failure must be 'raise' or 'skip', got {on_failure!r}")
        self.rtol = rtol
        self.on_failure = on_failure
        self.wants_snapshot = on_failure == "skip"
        self.reference: list[torch.Tensor] = []
        self.worst: dict[str, float] = {}

    def _run(self, gm, inputs):
        with torch.no_grad():
            return [o for o in gm(*inputs) if isinstance(o, torch.Tensor)]

    def before_pipeline(self, gm, ctx):
        if not ctx.example_inputs:
            raise ValueError("NumericCheck needs example inputs: give them to PassManager.run")
        # The process's first run of a GEMM can round differently from every later one (seen with MKL on
        # SmolLM2: 1.2e-4 relative, then bit-identical), so the reference is a second run.
        self._run(gm, ctx.example_inputs)
        self.reference = self._run(gm, ctx.example_inputs)

    def after_pass(self, p, gm, ctx, record):
        if not record.changed:
            return None
        outputs = self._run(gm, ctx.example_inputs)
        errors = [relative_error(a, b) for a, b in zip(outputs, self.reference)]
        worst = max(errors, default=0.0)
        record.extra["max_rel_error"] = worst
        self.worst[p.name] = worst
        if worst <= self.rtol and len(outputs) == len(self.reference):
            return None
        index = errors.index(worst) if errors else 0
        message = (f"pass {p.name!r} changed output {index} by {worst:.3g} relative to the graph before the "
                   f"pipeline (tolerance {self.rtol:g}); disable it with disable=[{p.name!r}] and report it")
        if self.on_failure == "raise":
            raise NumericsError(message)
        return message
