"""The precision planner: per linear, int8, bf16 or fp32, chosen to hold an accuracy budget.

``fxopt.compile(model, inputs, quantize="auto", calibration=batches, accuracy_budget=...)`` inserts the pass
this module builds (``plan-precision``) after the fusions and before the passes that rewrite linears
(``quantize-static-int8``, ``quantize-dynamic-int8``, ``cast-linears-bf16``). It does not rewrite anything itself: it labels each linear
node with ``node.meta["fxopt.precision"]`` and the reason, and those passes rewrite the linears labelled
with their precision. How it decides, on the calibration batches only:

1. **Sensitivity.** It runs the fp32 graph once per batch, keeps each linear's input, and measures each linear's
   own relative output error in int8 (``‖y_int8 − y‖ / ‖y‖``) — a few GEMMs per linear, no graph rerun; the
   report shows it per linear. For ``"int8-static"`` it also calibrates each linear's input range
   (:mod:`fxopt.calibration`: min/max or percentile, whichever gives that linear the smaller error).
2. **Search.** Every plan is measured end to end by *simulating* it (:mod:`fxopt.plan_simulator`: the graph
   interpreted with each planned linear run by the kernel it will compile to, oneDNN's int8 GEMM on x86) and
   scoring the outputs with the budget's metric (:mod:`fxopt.metrics`). When all-int8 misses the budget, the
   linears are grouped by role (``layers.*.mlp.down_proj``: the module path without its layer index), and each
   role is scored by what keeping it out of int8 buys end to end. A linear's own error is a poor guide here: on
   SmolLM2 the q/k/v projections have the largest own errors, while ``down_proj`` and ``lm_head`` decide the
   answers. The roles then move to the higher precision, best first, until the plan holds. "auto" starts each
   linear from the faster of int8 and bf16 at its shape on this machine (:mod:`fxopt.precision_speed`: measured
   kernels, int8 charged for quantizing its input; bf16 only where it is native) and "int8-static" from all
   static; the higher precisions are tried in order (:func:`higher_precisions`): per-token int8 after static,
   bf16 where this machine runs it faster than fp32, then fp32.
3. **Verdict.** ``quantize="int8"`` or ``"bf16"`` puts every linear in that precision. Whatever the mode,
   ``fxopt.compile`` then scores the *compiled* model on the calibration batches (:mod:`fxopt.quantize`): a
   miss raises :class:`fxopt.AccuracyBudgetError` naming the most sensitive linears and what was achieved, so
   nothing compiles silently past the budget.

The plan (per-layer precision, error and reason, the metric achieved) is in ``compiled.report.precision`` and
printed with the report; ``fxopt dump`` shows each node's precision. A plan searched for once is remembered
(:mod:`fxopt.plan_cache`, keyed by the graph, weights, calibration data, budget and the planner itself): the next
compile of the same model takes it without searching, and its compiled model is checked as in step 3.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.fx
import torch.utils._pytree as pytree
from tabulate import tabulate

from fxopt import calibration, metrics, precision_speed
from fxopt.calibration import RANGE_KEY, ActivationRange
from fxopt.graph_pass import GraphPass, PassContext, PassResult, graph_pass
from fxopt.passes.quantize_weights_int8 import linear_location
from fxopt.plan_simulator import Int8Weights, PlanSimulator, simulate_linear

aten = torch.ops.aten

#: the modes of ``fxopt.compile(quantize=...)``
MODES = ("int8", "int8-static", "bf16", "auto", "int8-weight-only")
#: the modes that fix activation scales at compile time, so need calibration data
STATIC_MODES = ("int8-static",)
#: the modes whose plan is searched for ("int8" and "bf16" put every linear in that precision); fxopt.plan_cache
#: remembers their plans
SEARCHED_MODES = ("auto", "int8-static")
#: the pass that rewrites the linears of each precision the planner assigns
PRECISION_PASSES = {"int8-static": "quantize-static-int8", "int8": "quantize-dynamic-int8",
                    "bf16": "cast-linears-bf16"}
#: the metric and bound used when ``accuracy_budget`` is a bare number or None, by output kind
DEFAULT_BUDGETS = {"embedding": ("min_cosine", 0.995), "logits": ("perplexity", 0.02)}
META_KEY = "fxopt.precision"
#: "auto" plans to hold this fraction of the budget's allowed loss in simulation. Quantization is discontinuous:
#: a 1e-7 difference flips some roundings, and the flips propagate, so two equally exact int8 runs of SmolLM2
#: (the simulation and the real kernels) differ in perplexity on 255 tokens by about 1% (+2.56% vs +1.47%).
#: The compiled model is then checked against the full budget.
PLANNING_MARGIN = 0.5
#: A plan that holds its target is simulated again NOISE_RUNS times with each quantized linear's input moved by
#: relative noise of NOISE (about what fp32 reordering moves an activation: Inductor's fused kernels and oneDNN
#: sum in another order than the simulation), and must hold the full budget in every run. Measured on SmolLM2
#: (Intel Xeon host): a static plan simulated at +0.44% perplexity gave +1.82% and +2.22% under this noise, and
#: +2.06% compiled; the margin alone let it through.
NOISE = 1e-6
NOISE_RUNS = 2
PLAN_KEY = "fxopt.precision_plan"
#: precisions from the lowest: the search only ever moves a linear up
RANK = {"int8-static": 0, "int8": 1, "bf16": 2, "fp32": 3}


@dataclass
class Budget:
    metric: str
    bound: float

    def with_margin(self, fraction: float) -> "Budget":
        """The budget shrunk to ``fraction`` of its allowed loss (cosine: of ``1 - bound``)."""
        if self.metric == "perplexity":
            return Budget(self.metric, self.bound * fraction)
        return Budget(self.metric, 1 - (1 - self.bound) * fraction)

    def describe(self) -> str:
        if self.metric == "perplexity":
            return f"perplexity ≤ +{self.bound * 100:.4g}% vs fp32"
        if self.metric == "min_cosine":
            return f"min pooled cosine ≥ {self.bound}"
        return f"next-token agreement ≥ {self.bound * 100:.4g}%"


def resolve_budget(accuracy_budget: Any, output_kind: str) -> Budget:
    """``None`` → the output kind's default; a number → that bound for the default metric; ``{"metric": bound}``."""
    metric, bound = DEFAULT_BUDGETS[output_kind]
    if accuracy_budget is None:
        return Budget(metric, bound)
    if isinstance(accuracy_budget, (int, float)) and not isinstance(accuracy_budget, bool):
        return Budget(metric, float(accuracy_budget))
    if isinstance(accuracy_budget, dict) and len(accuracy_budget) == 1:
        (name, value), = accuracy_budget.items()
        metrics.check_metric(name)
        if output_kind == "embedding" and name != "min_cosine" or output_kind == "logits" and name == "min_cosine":
            raise metrics.MetricError(f"metric {name!r} does not apply to this model's output ({output_kind}); "
                                      f"use {DEFAULT_BUDGETS[output_kind][0]!r}")
        return Budget(name, float(value))
    raise metrics.MetricError(f"accuracy_budget must be a number or one {{metric: bound}} pair, got "
                              f"{accuracy_budget!r}; metrics: {', '.join(metrics.METRICS)}")


@dataclass
class LayerChoice:
    node: str
    location: str  # weight name and module path
    shape: tuple[int, int]  # (out, in)
    int8_error: float  # the linear's own relative output error in int8, on the calibration batches
    precision: str = "int8"
    reason: str = ""
    static: ActivationRange | None = None  # int8-static: the calibrated input range (and its observer)
    static_error: float | None = None  # ... and the linear's own error with it


@dataclass
class PrecisionPlan:
    mode: str
    budget: Budget
    layers: list[LayerChoice]
    reference: float | None = None  # fp32's perplexity on the calibration batches (perplexity budgets)
    simulated: float | None = None  # the chosen plan's metric, simulated on the calibration batches
    compiled: float | None = None  # ... and measured on the compiled model
    evaluations: int = 0
    noisy: list[float] = field(default_factory=list)  # the chosen plan's metric in each noise run (NOISE)
    notes: list[str] = field(default_factory=list)
    reference_outputs: list = field(default_factory=list, repr=False)  # fp32's outputs on the calibration batches
    cached: bool = False  # taken from an earlier compile's search (fxopt.plan_cache)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers:
            out[layer.precision] = out.get(layer.precision, 0) + 1
        return out

    def table(self) -> str:
        static = any(l.static is not None for l in self.layers)
        rows = [[l.location, f"{l.shape[1]}→{l.shape[0]}", f"{l.int8_error * 100:.2f}%",
                 *([f"{l.static_error * 100:.2f}% ({l.static.observer} [{l.static.low:.3g}, {l.static.high:.3g}])"
                    if l.static is not None else "-"] if static else []), l.precision, l.reason]
                for l in self.layers]
        headers = ["linear", "in→out", "int8 error", *(["static int8 error (range)"] if static else []),
                   "precision", "why"]
        return tabulate(rows, headers=headers, tablefmt="github")

    def most_sensitive(self, n: int = 5) -> str:
        worst = sorted(self.layers, key=lambda l: -l.int8_error)[:n]
        return ", ".join(f"{l.location} ({l.int8_error * 100:.1f}%, {l.precision})" for l in worst)

    def summary(self) -> str:
        counts = ", ".join(f"{n} {p}" for p, n in self.counts().items())
        got = self.compiled if self.compiled is not None else self.simulated
        achieved = metrics.describe(self.budget.metric, got, self.reference) if got is not None else "not measured"
        noisy = ", ".join(metrics.describe(self.budget.metric, v, self.reference) for v in self.noisy)
        notes = (f"; under fp32-sized noise: {noisy}" if noisy else "") + "".join(f"; {n}" for n in self.notes)
        cached = (" (the plan of an earlier compile with the same graph, weights, calibration data and budget: "
                  "fxopt.plan_cache)" if self.cached else "")
        return (f"precision plan ({self.mode}){cached}: {counts}; budget {self.budget.describe()}; achieved on the "
                f"calibration batches: {achieved}{notes}")

    def __str__(self) -> str:
        return f"{self.summary()}\n\n{self.table()}"


# -- what the outputs are ---------------------------------------------------------------------------------------
@dataclass
class OutputSpec:
    kind: str  # "embedding" or "logits"
    output_index: int
    ids_index: int | None  # flat input index of input_ids
    mask_index: int | None  # flat input index of attention_mask


def output_spec(out_spec: pytree.TreeSpec, input_names: Sequence[str]) -> OutputSpec:
    """Which flat output the metric reads, and which flat inputs are the ids and the mask."""
    structure = pytree.tree_unflatten(list(range(out_spec.num_leaves)), out_spec)
    names = list(structure.keys()) if hasattr(structure, "keys") else []
    ids = input_names.index("input_ids") if "input_ids" in input_names else None
    mask = input_names.index("attention_mask") if "attention_mask" in input_names else None
    if "logits" in names and ids is not None:
        return OutputSpec("logits", structure["logits"], ids, mask)
    return OutputSpec("embedding", 0, ids, mask)


class Scorer:
    """Scores a plan's outputs against fp32's on the calibration batches with the budget's metric."""

    def __init__(self, budget: Budget, spec: OutputSpec, batches: list[list[torch.Tensor]],
                 reference: list[torch.Tensor]):
        self.budget, self.spec, self.batches, self.reference = budget, spec, batches, reference
        self.fp32 = self.score(reference) if budget.metric == "perplexity" else None

    def score(self, outputs: list[torch.Tensor]) -> float:
        s = self.spec
        masks = [b[s.mask_index] if s.mask_index is not None else None for b in self.batches]
        if self.budget.metric == "min_cosine":
            return min(metrics.min_cosine(r, o, m) for r, o, m in zip(self.reference, outputs, masks))
        if self.budget.metric == "next_token_agreement":
            return sum(metrics.next_token_agreement(r, o) for r, o in zip(self.reference, outputs)) / len(outputs)
        total, count = 0.0, 0
        for out, batch, mask in zip(outputs, self.batches, masks):
            nll, n = metrics.nll_sum(out, batch[s.ids_index], mask)
            total, count = total + nll, count + n
        return math.exp(total / max(count, 1))

    def loss(self, value: float) -> float:
        """Lower is better, whatever the metric."""
        return value if self.budget.metric == "perplexity" else -value

    def holds(self, value: float, budget: Budget | None = None) -> bool:
        budget = budget or self.budget
        return metrics.within(budget.metric, value, budget.bound, self.fp32)


# -- the pass -----------------------------------------------------------------------------------------------
@dataclass
class PlanOptions:
    mode: str = "auto"  # int8 | int8-static | bf16 | auto
    metric: str = ""  # empty: the output kind's default
    bound: float = float("nan")  # nan: the metric's default


def precision_planner(mode: str, budget: Any, calibration: list[list[torch.Tensor]],
                      out_spec: pytree.TreeSpec, input_names: Sequence[str]) -> tuple[GraphPass, Any]:
    """The ``plan-precision`` pass for one compile, bound to its calibration batches (flat graph inputs)."""
    if mode not in ("int8", "int8-static", "bf16", "auto"):
        raise ValueError(f"the planner plans int8, int8-static, bf16 or auto, not {mode!r}")
    spec = output_spec(out_spec, input_names)
    resolved = resolve_budget(budget, spec.kind)

    @graph_pass("plan-precision", options=PlanOptions, level=2, tolerance="exact",
                after=("fuse-sibling-linears",), before=tuple(PRECISION_PASSES.values()))
    def plan_precision(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        """Label each linear int8 / bf16 / fp32 so that the accuracy budget holds (see fxopt.quant_planner); a plan
        an earlier compile searched for with the same key is taken from fxopt.plan_cache."""
        from fxopt import plan_cache

        linears = quantizable_linears(gm)
        # "auto": each linear starts from the faster of int8 and bf16 on this machine (fxopt.precision_speed)
        faster = precision_speed.bf16_where_faster(gm, linears) if mode == "auto" else {}
        cache = plan_cache.PlanCache() if plan_cache.enabled() and mode in SEARCHED_MODES else None
        starts = tuple(f"starts bf16: {name}" for name in sorted(faster))
        key = plan_cache.plan_key(gm, mode, resolved, calibration, (*higher_precisions(mode), *starts)) if cache else ""
        plan = cache.get(key, [n.name for n in linears]) if cache else None
        if plan is not None:
            ctx.progress("the plan of an earlier compile with the same key (fxopt.plan_cache): "
                         + ", ".join(f"{n} {p}" for p, n in plan.counts().items()))
            with torch.no_grad():
                plan.reference_outputs = fp32_outputs(gm, spec, calibration)
            label(gm, plan)
        else:
            plan = make_plan(gm, mode, resolved, spec, calibration, progress=ctx.progress, faster=faster)
            if cache:
                cache.put(key, plan)
        gm.meta[PLAN_KEY] = plan
        for l in plan.layers:
            ctx.note(f"{l.location}: {l.precision} (int8 error {l.int8_error * 100:.2f}%: {l.reason})")
        stats = {**plan.counts(), "plans simulated": 0 if plan.cached else plan.evaluations}
        return PassResult(changed=False, stats={**stats, **({"plan cached": 1} if plan.cached else {})})

    return plan_precision, PlanOptions(mode, resolved.metric, resolved.bound)


def quantizable_linears(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The linears the precision passes can rewrite: fp32 2-D constant weights."""
    from fxopt.rewriter import Rewriter
    rw = Rewriter(gm)
    out = []
    for node in gm.graph.find_nodes(op="call_function", target=aten.linear.default):
        w = rw.constant(node.args[1])
        if w is not None and w.dtype == torch.float32 and w.dim() == 2 and not node.kwargs:
            out.append(node)
    return out


def higher_precisions(low: str) -> tuple[str, ...]:
    """Where the planner moves the roles that ``low`` hurts most, in the order it tries them: dynamic int8 after
    static int8, then bf16 — only where this machine's measured bf16 GEMM rate beats its fp32 rate (without
    AVX512-BF16 or AMX, bf16 is emulated and slower than fp32) — then fp32."""
    from fxopt.cost import machine_peaks
    bf16 = ("bf16",) if machine_peaks().native_bf16 else ()
    return (*(("int8",) if low == "int8-static" else ()), *bf16, "fp32")


def make_plan(gm: torch.fx.GraphModule, mode: str, budget: Budget, spec: OutputSpec,
              batches: list[list[torch.Tensor]], progress: Callable[[str], None] = lambda message: None,
              faster: dict[str, str] | None = None) -> PrecisionPlan:
    """Search for the plan (see the module's docstring); ``progress`` gets a line per step (``ctx.progress``);
    ``faster`` names the linears that start in bf16 and why (:func:`fxopt.precision_speed.bf16_where_faster`)."""
    started = time.perf_counter()
    linears = quantizable_linears(gm)
    low = "int8-static" if mode == "int8-static" else "int8"  # what the search starts from
    weights = Int8Weights()  # each linear's int8 weight, quantized (and packed) once for the whole search
    with torch.no_grad():
        record: dict[str, list[torch.Tensor]] = {n.name: [] for n in linears}
        reference = fp32_outputs(gm, spec, batches, record)
        layers = [_sensitivity(gm, n, record.pop(n.name), weights, static=low == "int8-static") for n in linears]
        del record
        scorer = Scorer(budget, spec, batches, reference)
        plan = PrecisionPlan(mode, budget, layers, reference=scorer.fp32, reference_outputs=reference)
        progress(f"{len(layers)} linears' own int8 errors measured on {len(batches)} calibration "
                 f"batch{'es' if len(batches) != 1 else ''} ({time.perf_counter() - started:.1f} s)")
        ranges = {l.node: l.static for l in layers if l.static is not None}
        simulated: dict[tuple, float] = {}

        def simulate(choice: dict[str, str], noise_seed: int | None = None) -> float:
            """The plan's metric on the calibration batches (each plan simulated once: the search meets some
            twice, e.g. the best role's own gain is the first ranked plan)."""
            key = (tuple(sorted(choice.items())), noise_seed)
            if key not in simulated:
                plan.evaluations += 1
                start = time.perf_counter()
                run = PlanSimulator(gm, choice, weights=weights, ranges=ranges, noise_seed=noise_seed, noise=NOISE)
                outs = [run.run(*b)[spec.output_index] for b in batches]
                simulated[key] = scorer.score(outs)
                progress(f"plan {plan.evaluations} ({_describe_choice(choice, layers, low)}"
                         f"{f'; under fp32-sized noise, run {noise_seed + 1}' if noise_seed is not None else ''}): "
                         f"{metrics.describe(budget.metric, simulated[key], scorer.fp32)} "
                         f"({time.perf_counter() - start:.1f} s)")
            return simulated[key]

        def holds(choice: dict[str, str], value: float) -> bool:
            """The target in simulation, and the full budget under fp32-sized noise (NOISE), every run."""
            if not scorer.holds(value, target):
                return False
            runs = []
            for seed in range(NOISE_RUNS):
                noisy = simulate(choice, noise_seed=seed)
                runs.append(noisy)
                if not scorer.holds(noisy, budget):
                    plan.notes.append(f"a plan simulated at {metrics.describe(budget.metric, value, scorer.fp32)} "
                                      f"gave {metrics.describe(budget.metric, noisy, scorer.fp32)} under "
                                      f"fp32-sized noise: rejected")
                    return False
            plan.noisy = runs
            return True

        if mode in ("int8", "bf16"):  # every linear in that precision; the compiled model is checked afterwards
            _apply(gm, plan, {l.node: mode for l in layers}, lambda l: f"quantize={mode!r}", None)
            return plan
        faster = faster or {}
        lows = {l.node: ("bf16" if l.node in faster else low) for l in layers}
        if faster:
            progress(f"{len(faster)} of {len(layers)} linears run at least as fast in bf16 as in int8 here: "
                     "they start in bf16")

        def start_reason(layer: LayerChoice) -> str:
            return faster.get(layer.node, f"{low} holds the budget")

        target = budget.with_margin(PLANNING_MARGIN)  # quantization noise: see PLANNING_MARGIN
        roles: dict[str, list[LayerChoice]] = {}
        for layer in layers:
            roles.setdefault(role_of(layer.location), []).append(layer)
        all_low = simulate(dict(lows))
        if holds(dict(lows), all_low):
            _apply(gm, plan, dict(lows), start_reason, all_low)
            return plan
        highs = higher_precisions(low)
        for high in highs:
            def keep(chosen: Sequence[str], high=high) -> dict[str, str]:
                return {l.node: (high if role_of(l.location) in chosen and RANK[high] > RANK[lows[l.node]]
                                 else lows[l.node]) for l in layers}

            # what keeping each role out of `low` buys, measured end to end; then the best roles first
            gain = {r: scorer.loss(all_low) - scorer.loss(simulate(keep([r]))) for r in roles}
            ranked = sorted(roles, key=lambda r: -gain[r])
            for k in range(1, len(ranked) + 1):
                chosen = ranked[:k]
                value = simulate(keep(chosen))
                if holds(keep(chosen), value) or (high == "fp32" and k == len(ranked)):
                    _apply(gm, plan, keep(chosen), lambda l, high=high: (
                        f"{role_of(l.location)} kept {high}: {low} there costs the most accuracy end to end"
                        if l.precision == high and lows[l.node] != high else start_reason(l)), value)
                    plan.notes.append(f"roles by what {low} costs: " + ", ".join(
                        f"{r} ({gain[r]:+.4g})" for r in ranked))
                    return plan
            plan.notes.append(f"even every linear in {high} misses the budget "
                              f"({metrics.describe(budget.metric, value, scorer.fp32)}); trying "
                              f"{highs[highs.index(high) + 1]}")
        raise AssertionError("unreachable: all-fp32 holds any budget")


def _describe_choice(choice: dict[str, str], layers: list[LayerChoice], low: str) -> str:
    """``layers.*.mlp.down_proj int8, the rest int8-static``: the roles a plan moves out of ``low``."""
    raised: dict[str, set[str]] = {}
    for layer in layers:
        if choice[layer.node] != low:
            raised.setdefault(choice[layer.node], set()).add(role_of(layer.location))
    if not raised:
        return f"every linear {low}"
    rest = f", the rest {low}" if any(choice[layer.node] == low for layer in layers) else ""
    return "; ".join(f"{', '.join(sorted(roles))} {p}" for p, roles in raised.items()) + rest


def fp32_outputs(gm: torch.fx.GraphModule, spec: OutputSpec, batches: list[list[torch.Tensor]],
                 record: dict[str, list[torch.Tensor]] | None = None) -> list[torch.Tensor]:
    """The graph's output the metric reads, in fp32, on each batch (``record``: keep each linear's inputs)."""
    return [PlanSimulator(gm, record=record).run(*b)[spec.output_index] for b in batches]


def role_of(location: str) -> str:
    """What a linear does, without its layer index: ``… model.layers.3.mlp.down_proj`` → ``layers.*.mlp.down_proj``
    (the module path of the location, the part after the weight's name)."""
    path = location.split(" ")[-1]
    return re.sub(r"\.\d+\.", ".*.", path).removeprefix("model.")


def _sensitivity(gm, node: torch.fx.Node, inputs: list[torch.Tensor], weights: Int8Weights,
                 static: bool) -> LayerChoice:
    """The linear's own relative output error in per-token int8 on its calibration inputs and, for ``static``, its
    calibrated input range (the observer with the smaller error) and the error with it."""
    w = _constant(gm, node.args[1])
    exact = [torch.nn.functional.linear(x, w) for x in inputs]
    error = calibration.relative_error(exact, [simulate_linear("int8", x, w, None, weights, node.name)
                                               for x in inputs])
    layer = LayerChoice(node.name, linear_location(node), tuple(w.shape), error)
    if static:
        layer.static, layer.static_error = calibration.choose_range(
            inputs, exact, lambda x, r: simulate_linear("int8-static", x, w, None, weights, node.name, r))
    return layer


def _constant(gm, node) -> torch.Tensor:
    from fxopt.rewriter import Rewriter
    return Rewriter(gm).constant(node)


def _apply(gm, plan: PrecisionPlan, choice: dict[str, str], reason, value: float | None) -> None:
    for layer in plan.layers:
        layer.precision = choice.get(layer.node, "fp32")
        layer.reason = reason(layer)
    plan.simulated = value
    label(gm, plan)


def label(gm: torch.fx.GraphModule, plan: PrecisionPlan) -> None:
    """Write the plan into the graph: each linear's precision (and calibrated range) in its node's meta, where the
    precision passes read it."""
    by_name = {n.name: n for n in gm.graph.nodes}
    for layer in plan.layers:
        by_name[layer.node].meta[META_KEY] = layer.precision
        if layer.precision == "int8-static":
            by_name[layer.node].meta[RANGE_KEY] = layer.static


def plan_of(gm: torch.fx.GraphModule) -> PrecisionPlan | None:
    return gm.meta.get(PLAN_KEY)
