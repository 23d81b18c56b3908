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

from fxopt.check_cache import CheckChain, VerdictCache, graph_key
from fxopt.errors import AccuracyBudgetError, FxoptError, NumericsError, PassError, PipelineSpecError
from fxopt.graph_pass import GraphPass, PassContext, PassResult
from fxopt.ir.printer import format_graph
from fxopt.ir.verifier import verify
from fxopt.memory import trim_heap


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
    fingerprint: str = ""  # of the printed graph after the pass (before any revert): what it produced


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
        before_print = None
        for p, options in self.passes:
            ctx = PassContext(example_inputs=base_ctx.example_inputs, options=options)
            snapshot = _Snapshot(gm) if snapshot_needed else None
            before_print = before_print or fingerprint(gm)  # the last pass's "after", unless it was reverted
            nodes_before = count_nodes(gm)
            for inst in self.instruments:
                inst.before_pass(p, gm, ctx)
            start = time.perf_counter()
            try:
                result = p.fn(gm, ctx)
            except AccuracyBudgetError:
                raise  # the planner's verdict on the user's request: already names what to change
            except Exception as e:
                raise PassError(f"pass {p.name!r} failed: {type(e).__name__}: {e}") from e
            seconds = time.perf_counter() - start
            result = result if isinstance(result, PassResult) else PassResult()
            after_print = fingerprint(gm)
            actually_changed = after_print != before_print
            if result.changed is False and actually_changed:
                raise PassError(f"pass {p.name!r} reported changed=False but modified the graph; "
                                "let the pass manager decide (return changed=None) or fix the flag.")
            if actually_changed:
                gm.recompile()
                mark_provenance(gm, p.name)
            record = PassRecord(p.name, actually_changed, dict(result.stats), seconds, nodes_before,
                                count_nodes(gm), diagnostics=list(ctx.diagnostics), fingerprint=after_print)
            before_print = after_print
            for inst in self.instruments:
                reason = _after_pass(inst, p, gm, ctx, record)
                if reason and record.reverted is None:
                    if snapshot is None:
                        raise PassError(f"{type(inst).__name__} asked to revert pass {p.name!r} ({reason}), but no "
                                        "snapshot was taken: give the instrument wants_snapshot = True")
                    snapshot.restore(gm)
                    before_print = None
                    record.reverted = reason
                    record.changed = False
                    record.nodes_after = count_nodes(gm)
            report.records.append(record)
        for inst in self.instruments:
            inst.after_pipeline(gm, report)
        return report


def _after_pass(inst: Instrument, p: GraphPass, gm, ctx, record) -> str | None:
    """One instrument's verdict on a pass; an instrument that breaks (say, the graph no longer runs) is reported
    as that pass's failure, never as a bare exception from inside the instrument."""
    try:
        return inst.after_pass(p, gm, ctx, record)
    except FxoptError:
        raise
    except Exception as e:  # noqa: BLE001 - named, with the original chained
        raise PassError(f"after pass {p.name!r}, {type(inst).__name__} failed: {type(e).__name__}: {e}") from e


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
    """Prints one progress line per pass: name, milliseconds, node count change; and, while a pass runs, the lines
    it reports with ``ctx.progress``."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.total = 0
        self.index = 0

    def before_pipeline(self, gm, ctx):
        self.index = 0

    def before_pass(self, p, gm, ctx):
        ctx.progress_stream, ctx.pass_name = self.stream, p.name  # the pass's own lines (ctx.progress), live

    def after_pass(self, p, gm, ctx, record):
        self.index += 1
        delta = record.nodes_after - record.nodes_before
        print(f"[fxopt] {self.index:>2}. {p.name:<28} {record.seconds * 1e3:8.1f} ms  nodes {record.nodes_before} → "
              f"{record.nodes_after} ({delta:+d})", file=self.stream, flush=True)
        return None


class Verify(Instrument):
    """Runs :func:`fxopt.ir.verify` before the pipeline and after every pass that changed the graph.

    The deep check re-runs fake-tensor propagation on every node, which catches a pass that changed a node's
    arguments but left its ``meta["val"]`` stale. It costs about 1 ms per node (2 s on SmolLM2's 2,200 nodes),
    so by default it runs once, after the pipeline (``deep="end"``); ``deep=True`` runs it after every pass
    that changed the graph, naming the pass (``fxopt.testing.check_pass`` does so); ``deep=False`` never.
    With ``remembered`` (:func:`fxopt.check_cache.verified_graphs`), a final graph printed like one that passed
    before is not propagated again."""

    def __init__(self, deep: bool | str = "end", remembered: VerdictCache | None = None):
        if deep not in (True, False, "end"):
            raise ValueError(f"deep must be True, False or 'end', got {deep!r}")
        self.deep = deep
        # graphs whose final deep check passed in an earlier compile (fxopt.check_cache.verified_graphs)
        self.remembered = remembered

    def before_pipeline(self, gm, ctx):
        verify(gm, context="before the pipeline")

    def after_pass(self, p, gm, ctx, record):
        if record.changed:
            verify(gm, context=f"after pass {p.name!r}", deep=self.deep is True)
        return None

    def after_pipeline(self, gm, report):
        if self.deep == "end" and any(r.changed for r in report.records):
            key = graph_key(gm) if self.remembered is not None else None
            if key and self.remembered.get(key):
                return
            verify(gm, context=f"after the pipeline ({', '.join(r.name for r in report.records if r.changed)})",
                   deep=True)
            if key:
                self.remembered.put(key, {"passed": 1.0})
                self.remembered.save()


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
    diff = torch.sub(actual.float(), expected.float()).abs_().max().item()  # one temporary: logits are 50 MB
    low, high = torch.aminmax(expected.float())
    return diff / max(-low.item(), high.item(), 1e-12)


class NumericCheck(Instrument):
    """After every pass that changed the graph, run it on the example inputs and hold the pass to its numerics
    contract (``GraphPass.tolerance``):

    * an exact pass keeps the outputs within ``rtol`` of the reference: the outputs before the pipeline, or
      after the last lossy pass;
    * a lossy pass with a float tolerance changes the outputs of the graph before it by at most that much;
    * a ``"budget"`` pass is judged by the accuracy budget end to end; here its outputs must only stay finite.

    After an accepted lossy pass its outputs become the reference. Every pass must leave the graph runnable and
    its outputs finite where they were. A failure names the pass in a :class:`fxopt.NumericsError`
    (``on_failure="raise"``) or reverts it with the reason recorded (``"skip"``). Each record gets
    ``extra["max_rel_error"]`` (against what the pass was compared with) and ``extra["rel_error_vs_captured"]``.
    """

    def __init__(self, rtol: float = 1e-4, on_failure: str = "raise", verdicts: VerdictCache | None = None):
        if on_failure not in ("raise", "skip"):
            raise ValueError(f"on_failure must be 'raise' or 'skip', got {on_failure!r}")
        self.rtol = rtol
        self.on_failure = on_failure
        self.wants_snapshot = on_failure == "skip"
        # Verdicts of earlier compiles (fxopt.check_cache): a check whose key is found is not run again, and the
        # reference is then computed only when a check misses, from the captured graph kept for it.
        self.verdicts = verdicts
        self.chain: CheckChain | None = None
        self.captured_graph: torch.fx.GraphModule | None = None
        # Only the reference is held for exact pipelines (SmolLM2's logits are 50 MB); the captured outputs are
        # kept apart once a lossy pass replaces the reference, and the outputs before a lossy pass with its own
        # tolerance are taken just before it runs.
        self.reference: list[torch.Tensor] | None = None  # None: not computed (yet)
        self.captured: list[torch.Tensor] | None = None
        self.before_lossy: list[torch.Tensor] | None = None
        self.worst: dict[str, float] = {}

    def _run(self, gm, inputs):
        with torch.no_grad():
            outputs = [o for o in gm(*inputs) if isinstance(o, torch.Tensor)]
        # An eager run's activations are freed into glibc's heap, which keeps them: without giving them back,
        # the process's resident memory climbed by ~300 MB over SmolLM2's pipeline (1 × 256 checks).
        trim_heap(collect=False)
        return outputs

    def before_pipeline(self, gm, ctx):
        if not ctx.example_inputs:
            raise ValueError("NumericCheck needs example inputs: give them to PassManager.run")
        self.reference, self.captured, self.captured_graph = None, None, None
        self.chain = CheckChain(gm, ctx.example_inputs, self.rtol) if self.verdicts is not None else None
        if self.chain is not None and self.verdicts.get(self.chain.key) is not None:
            self.captured_graph = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))  # shares gm's tensors
            return
        if self.chain is not None:
            self.verdicts.put(self.chain.key, {"seen": 1.0})
        self.reference = self._reference_runs(gm, ctx.example_inputs)

    def _reference_runs(self, gm, inputs):
        # The process's first run of a GEMM can round differently from every later one (seen with MKL on
        # SmolLM2: 1.2e-4 relative, then bit-identical), so the reference is a second run.
        self._run(gm, inputs)
        return self._run(gm, inputs)

    def _reference(self, inputs) -> list[torch.Tensor]:
        if self.reference is None:  # skipped while the checks were found in the cache
            self.reference = self._reference_runs(self.captured_graph, inputs)
        return self.reference

    def before_pass(self, p, gm, ctx):
        self.before_lossy = self._run(gm, ctx.example_inputs) if isinstance(p.tolerance, float) else None

    def after_pass(self, p, gm, ctx, record):
        against = self.before_lossy
        self.before_lossy = None
        key = self.chain.advance(p.name, ctx.options, record.fingerprint or fingerprint(gm), lossy=p.lossy) \
            if self.chain is not None else None
        if not record.changed:
            return None
        cached = self.verdicts.get(key) if key else None
        if cached is not None and "max_rel_error" in cached:
            record.extra.update(cached, numerics="cached")
            self.worst[p.name] = cached["max_rel_error"]
            return None
        against = against if against is not None else self._reference(ctx.example_inputs)
        try:
            outputs = self._run(gm, ctx.example_inputs)
        except Exception as e:  # noqa: BLE001 - the pass broke the graph: name it
            return self._fail(f"the graph no longer runs after pass {p.name!r}: {type(e).__name__}: {e}")
        if len(outputs) != len(against):
            return self._fail(f"pass {p.name!r} changed the number of outputs from {len(against)} "
                              f"to {len(outputs)}")
        tolerance = p.tolerance if p.lossy else self.rtol
        errors = [relative_error(a, b) for a, b in zip(outputs, against)]
        worst = max(errors, default=0.0)
        record.extra["max_rel_error"] = worst
        captured = self.captured if self.captured is not None else self._reference(ctx.example_inputs)
        record.extra["rel_error_vs_captured"] = max((relative_error(a, b) for a, b in zip(outputs, captured)),
                                                    default=0.0)
        self.worst[p.name] = worst
        bad_finite = [i for i, (a, b) in enumerate(zip(outputs, against)) if _lost_finiteness(a, b)]
        if bad_finite:
            return self._fail(f"pass {p.name!r} made output {bad_finite[0]} non-finite (inf or nan)")
        if tolerance == "budget" or worst <= tolerance:
            if p.lossy:
                self.captured = captured
                self.reference = outputs
            elif key:
                self.verdicts.put(key, {"max_rel_error": worst, "rel_error_vs_captured": record.extra["rel_error_vs_captured"]})
            return None
        index = errors.index(worst)
        kind = "its own tolerance" if p.lossy else "tolerance"
        base = "the graph before it" if p.lossy else "the reference (the graph before the pipeline or the last lossy pass)"
        return self._fail(f"pass {p.name!r} changed output {index} by {worst:.3g} relative to {base} "
                          f"({kind} {tolerance:g}); disable it with disable=[{p.name!r}] and report it")

    def after_pipeline(self, gm, report):
        self.captured_graph = None
        if self.verdicts is not None:
            self.verdicts.save()

    def _fail(self, message: str) -> str:
        if self.on_failure == "raise":
            raise NumericsError(message)
        return message


def _lost_finiteness(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    if not actual.is_floating_point() or actual.shape != expected.shape or bool(torch.isfinite(actual).all()):
        return False
    return bool((~torch.isfinite(actual) & torch.isfinite(expected)).any())
