"""``fxopt.compile(quantize=...)``: from the user's request to the passes that run, and the check after.

* :func:`check_request` — the mode and the budget are valid (before anything is captured);
* :func:`bind_calibration` — each calibration batch bound and checked like a call of the compiled model, into
  flat graph inputs;
* :func:`precision_pipeline` — the pipeline with the planner and the precision passes inserted after the fusions
  (``"bf16"`` and ``"auto"`` also cast attention to bf16, where this machine's bf16 rate beats fp32's:
  :func:`bf16_attention_pays`);
* :func:`verify_compiled` — the compiled model scored on the calibration batches with the budget's metric: the
  budget the planner held in simulation must hold for the real kernels too.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from fxopt import metrics
from fxopt.call_contract import CallContract, short_repr
from fxopt.compiled_graph import CompiledGraph
from fxopt.cost import machine_peaks
from fxopt.errors import AccuracyBudgetError, CalibrationError, FxoptError, InputError
from fxopt.graph_pass import GraphPass
from fxopt.ir.capture import CapturedModel
from fxopt.quant_planner import MODES, PRECISION_PASSES, STATIC_MODES, Scorer, output_spec, plan_of, precision_planner
from fxopt.registry import get_pass

Pipeline = list[tuple[GraphPass, Any]]


def check_request(quantize: str | None, accuracy_budget: Any, calibration: Any, *, compress: bool = False) -> None:
    if quantize is None:
        if accuracy_budget is not None or (calibration is not None and not compress):
            raise FxoptError("accuracy_budget and calibration apply to a quantized compile (calibration also to "
                             f"compress=); pass quantize= one of {', '.join(MODES)}")
        if calibration is not None:
            _check_calibration(calibration)
        return
    if quantize not in MODES:
        raise FxoptError(f"unknown quantize mode {quantize!r}; choose one of {', '.join(MODES)}")
    if isinstance(accuracy_budget, dict):
        for name in accuracy_budget:
            metrics.check_metric(name)
    if calibration is None and quantize in STATIC_MODES:
        raise CalibrationError(f"quantize={quantize!r} fixes each activation scale at compile time from "
                               "calibration data: pass calibration=[batch, ...] (inputs like example_inputs, on "
                               "text like what the model will see)")
    if calibration is not None:
        _check_calibration(calibration)


def _check_calibration(calibration: Any) -> None:
    if not isinstance(calibration, Sequence) or isinstance(calibration, (str, dict)) or len(calibration) == 0:
        raise CalibrationError("calibration must be a non-empty list of example inputs (each a dict of tensors, "
                               f"a tuple or a tensor, like example_inputs); got {short_repr(calibration)}")


def bind_calibration(captured: CapturedModel, calibration: Sequence[Any] | None) -> list[list[torch.Tensor]]:
    """Flat graph inputs of every calibration batch (the example inputs when there is none)."""
    if calibration is None:
        return [list(captured.example_inputs)]
    contract = CallContract(captured)
    batches = []
    for i, batch in enumerate(calibration):
        args, kwargs = ((), dict(batch)) if hasattr(batch, "keys") else (
            (batch,) if isinstance(batch, torch.Tensor) else tuple(batch), {})
        try:
            batches.append(contract.flat_inputs(args, kwargs))
        except InputError as e:
            raise CalibrationError(f"calibration batch {i} does not fit the compiled model: {e}") from None
    return batches


def precision_pipeline(pipeline: Pipeline, quantize: str, accuracy_budget: Any, batches: list[list[torch.Tensor]],
                       captured: CapturedModel) -> Pipeline:
    """``pipeline`` with what ``quantize`` needs inserted before its target stage (after the fusions)."""
    names = [p.name for p, _ in pipeline]
    at = next((i for i, (p, _) in enumerate(pipeline) if p.stage == "target"), len(pipeline))
    if quantize == "int8-weight-only":
        added = [] if "quantize-weights-int8" in names else [_default("quantize-weights-int8")]
    else:
        input_names = [s.path for s in captured.tensor_slots]
        added = [_default("smooth-activations")] if quantize != "bf16" and "smooth-activations" not in names else []
        if "cast-attention-bf16" not in names and bf16_attention_pays(quantize):
            # before the planner, whose simulations then include it, so that the plan holds the budget with it
            added += [_default("cast-attention-bf16")]
        added += [precision_planner(quantize, accuracy_budget, batches, captured.out_spec, input_names)]
        added += [_default(p) for p in PRECISION_PASSES.values() if p not in names]
        if quantize != "bf16" and "fuse-gelu-quantize-rows" not in names:  # int8 linears may hold a GELU between them
            added += [_default("fuse-gelu-quantize-rows")]
    return [*pipeline[:at], *added, *pipeline[at:]]


def bf16_attention_pays(quantize: str) -> bool:
    """Whether ``quantize`` runs attention on bf16 Q/K/V here: ``"bf16"`` and ``"auto"`` do where bf16 is not
    emulated (there it is slower than fp32). The int8 modes keep fp32 attention. With fxopt's AMX attention kernel,
    bf16 attention took MiniLM's ``"int8-static"`` call from 49.8 to 40.0 ms (one process, a slow AMX spell), but on
    SmolLM2 the plan searched with it held +2% perplexity on the calibration text and measured +2.51% on held-out
    text, where the plan with fp32 attention measures +1.52% (BENCHMARKS.md, "Update, 2026-11-29, late night")."""
    return quantize in ("bf16", "auto") and machine_peaks().native_bf16


def _default(name: str) -> tuple[GraphPass, Any]:
    p = get_pass(name)
    return p, p.options() if p.options else None


def verify_compiled(graph: CompiledGraph, batches: list[list[torch.Tensor]]) -> None:
    """Score the compiled graph on the calibration batches and record its precision plan in its report; raise
    when it misses the budget."""
    plan = plan_of(graph.graph_module)
    if plan is None:  # a mode without a plan (int8-weight-only)
        return
    graph.report.precision = plan
    captured = graph.captured
    spec = output_spec(captured.out_spec, [s.path for s in captured.tensor_slots])
    with torch.no_grad():
        outputs = [graph(*b)[spec.output_index] for b in batches]
    scorer = Scorer(plan.budget, spec, batches, plan.reference_outputs)
    plan.compiled = scorer.score(outputs)
    if not scorer.holds(plan.compiled):
        simulated = ("" if plan.simulated is None else f" (the plan's simulation gave "
                     f"{metrics.describe(plan.budget.metric, plan.simulated, scorer.fp32)})")
        advice = ("use quantize='auto' to keep the most sensitive linears in higher precision, or loosen "
                  "accuracy_budget" if plan.mode in ("int8", "bf16") else
                  "loosen accuracy_budget or calibrate on more data")
        raise AccuracyBudgetError(
            f"quantize={plan.mode!r} misses the accuracy budget ({plan.budget.describe()}) on the calibration "
            f"batches: {metrics.describe(plan.budget.metric, plan.compiled, scorer.fp32)}{simulated}. The most "
            f"sensitive linears (own int8 error, precision): {plan.most_sensitive()}. {advice}.")

