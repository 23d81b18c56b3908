"""``compile_graph``: the pass pipeline and lowering for one captured graph.

``fxopt.compile`` calls it once for an encoder; a causal LM calls it for each of its graphs (prefill and
decode), with one :class:`~fxopt.constant_pool.ConstantPool` for the model so that fused, packed and quantized
weights are built and held once. The pipeline runs in two stages (``fxopt.graph_pass.STAGES``): the portable
passes, whose result is the same on every machine (kept as :attr:`CompiledGraph.portable_graph` for saved
artifacts), then the target passes, whose choices were measured here and are recorded with the machine key.

    captured = fxopt.ir.capture(model, args, kwargs)
    graph = compile_graph(captured, build_pipeline(), CompileOptions(), pool=ConstantPool())
    outputs = graph(*captured.example_inputs)          # flat tensors in, flat tensors out
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.fx

from fxopt.compile_report import CompileReport
from fxopt.constant_pool import META_KEY as POOL_KEY
from fxopt.constant_pool import ConstantPool
from fxopt.cost.instrument import CostDelta
from fxopt.graph_pass import GraphPass
from fxopt.ir.capture import CapturedModel
from fxopt.lowering import Lowered, check_options, lower, release_own_constants
from fxopt.machine import machine_key
from fxopt import check_cache
from fxopt.pass_manager import Instrument, NumericCheck, PassManager, PrintAfter, Timing, Verify, count_nodes
from fxopt.pipeline import format_spec, split_stages


@dataclass
class CompileOptions:
    """How ``compile_graph`` checks, reports and lowers (the pipeline itself is a separate argument)."""

    backend: str = "inductor"
    check_numerics: bool = True
    numeric_rtol: float = 1e-4
    on_numeric_failure: str = "raise"
    verify: bool = True
    deep_verify: bool | str = "end"  # re-run fake-tensor propagation: "end" once, True after every pass
    print_after: Sequence[str] | None = None
    instruments: Sequence[Instrument] = ()
    verbose: bool = False
    freezing: bool | str = "auto"  # Inductor's weight freezing: "auto" only where the graph needs it (fxopt.lowering)

    def __post_init__(self):  # a bad option fails before capture, not after the passes
        check_options(self.backend, self.freezing)


@dataclass
class CompiledGraph:
    """One captured graph after the pipeline and lowering. Call it with the flat input tensors."""

    captured: CapturedModel
    graph_module: torch.fx.GraphModule  # the optimized graph, for inspection
    lowered: Lowered
    report: CompileReport
    portable_graph: torch.fx.Graph | None = None  # after the portable stage: machine-independent
    #: The passes that ran, portable stage first, with their options: what a saved artifact re-runs.
    pipeline: list[tuple[GraphPass, Any]] | None = None

    def __call__(self, *flat: torch.Tensor):
        return self.lowered.run(*flat)


class _KeepPortableGraph(Instrument):
    """Copies the graph (structure only; constants are shared) where the portable stage ends."""

    def __init__(self):
        self.graph: torch.fx.Graph | None = None

    def before_pass(self, p, gm, ctx):
        if p.stage == "target" and self.graph is None:
            self.graph = copy.deepcopy(gm.graph)

    def after_pipeline(self, gm, report):
        if self.graph is None:
            self.graph = copy.deepcopy(gm.graph)


def _instruments(options: CompileOptions, example_dims: dict[str, int]) -> tuple[list[Instrument], CostDelta]:
    inst: list[Instrument] = []
    if options.verify:
        inst.append(Verify(deep=options.deep_verify,
                           remembered=check_cache.verified_graphs() if check_cache.enabled() else None))
    if options.check_numerics:
        inst.append(NumericCheck(rtol=options.numeric_rtol, on_failure=options.on_numeric_failure,
                                 verdicts=check_cache.VerdictCache() if check_cache.enabled() else None))
    if options.print_after is not None:
        inst.append(PrintAfter(options.print_after))
    if options.verbose:
        inst.append(Timing(sys.stderr))
    cost = CostDelta(example_dims)
    inst.append(cost)
    inst.extend(options.instruments)
    return inst, cost


def compile_graph(captured: CapturedModel, pipeline: Sequence[tuple[GraphPass, Any]],
                  options: CompileOptions | None = None, *, pool: ConstantPool | None = None,
                  name: str | None = None) -> CompiledGraph:
    """Run ``pipeline`` (portable passes, then target passes) over ``captured.graph_module`` and lower it.

    ``pool`` shares fxopt-made constants with the model's other graphs; without one, this graph gets its own.
    Once lowered with Inductor, the constants fxopt made are released from the graph module (the compiled code
    holds its own copies); the pool keeps its references until its owner calls ``pool.release()``.
    """
    options = options or CompileOptions()
    gm = captured.graph_module
    gm.meta[POOL_KEY] = pool if pool is not None else ConstantPool()
    nodes_captured = count_nodes(gm)
    stages = split_stages(pipeline)
    ordered = stages["portable"] + stages["target"]

    inst, cost = _instruments(options, captured.example_dims())
    keep = _KeepPortableGraph()
    manager = PassManager(ordered, [*inst, keep])
    start = time.perf_counter()
    pipeline_report = manager.run(gm, captured.example_inputs)
    passes_seconds = time.perf_counter() - start

    if options.verbose:
        print(f"[fxopt] lowering{f' {name}' if name else ''} with {options.backend} (a first compile's longest "
              "step, about 40 s for SmolLM2; Inductor's caches serve a second compile of an unfrozen graph) …", file=sys.stderr, flush=True)
    started = time.perf_counter()
    lowered = lower(gm, captured.fake_inputs(), options.backend, freezing=options.freezing)
    if options.verbose:
        print(f"[fxopt] lowered in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    notes = list(captured.notes)
    if options.backend == "inductor":
        notes.append(f"weights frozen into the compiled code: {lowered.why_frozen}" if lowered.why_frozen else
                     "weights frozen into the compiled code, as asked" if lowered.frozen else
                     "weights passed to the compiled code as inputs (not frozen): Inductor's caches serve the "
                     "next compile")
        released = release_own_constants(gm)
        if released:
            notes.append(f"{released / 2**20:.0f} MiB of fxopt-made constants (fused weights, tables) are "
                         "held by the compiled code only; compiled.graph_module is for inspection")
    del gm.meta[POOL_KEY]
    report = CompileReport(
        model=name or captured.model_name,
        nodes_captured=nodes_captured,
        nodes_optimized=count_nodes(gm),
        capture_seconds=captured.capture_seconds,
        passes_seconds=passes_seconds,
        lowering_seconds=lowered.seconds,
        backend=options.backend,
        dims=", ".join(str(d) for d in captured.dims.values()),
        pipeline=pipeline_report,
        example_dims=captured.example_dims(),
        cost_captured=cost.first,
        cost_optimized=cost.last,
        notes=notes,
        spec=format_spec(ordered),
        stages={stage: [p.name for p, _ in passes] for stage, passes in stages.items()},
        machine=machine_key() if stages["target"] else None,
    )
    if options.verbose:
        print(report, file=sys.stderr)
    return CompiledGraph(captured, gm, lowered, report, keep.graph, ordered)
