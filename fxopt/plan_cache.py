"""Precision plans remembered across compiles: a second compile of the same model, with the same calibration data
and budget on the same machine, takes the plan the first one searched for.

Planning is most of a warm ``quantize="int8-static"`` compile: on MiniLM 8 × 128 (Intel Xeon host) the
``plan-precision`` pass took 9.8 of a 20.7 s warm compile, once Inductor's caches served the lowering. It
records every linear's inputs, runs both observers per linear and simulates a dozen plans end to end
(:mod:`fxopt.quant_planner`). Its outcome is a function of what this module hashes:

    key = H(fxopt, torch, machine, mode, budget, the planner's constants (margin, noise, percentile),
            the higher precisions this machine allows, the source of the modules the planner runs,
            printed graph, every constant's bytes, every calibration batch's bytes)

and the entry under that key is the plan: each linear's precision and why, its int8 error, its calibrated range
and observer, the simulated metric, the noise runs and the notes. The graph and its constants are hashed as
:mod:`fxopt.check_cache` hashes them (:func:`fxopt.check_cache.graph_digest`).

What is *not* cached: fp32's outputs on the calibration batches, which the compiled model is checked against
(SmolLM2's logits are 50 MB a batch). On a hit they are computed again, one run of the graph per batch, and
:func:`fxopt.quantize.verify_compiled` scores the compiled model against them as on every compile: a cached plan
is held to the budget like a new one.

The file is ``$XDG_CACHE_HOME/fxopt/plans-<machine>.json`` (at most :data:`MAX_PLANS`, oldest dropped), listed
and cleared by ``fxopt cache``. ``FXOPT_PLAN_CACHE=0`` turns it off; an unreadable file or an entry that does not
fit the graph is a miss, never an error.
"""
from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.fx

from fxopt import calibration, native_kernels, quant_planner
from fxopt.calibration import ActivationRange
from fxopt.check_cache import VerdictCache, graph_digest
from fxopt.machine import cache_file, machine_key
from fxopt.quant_planner import Budget, LayerChoice, PrecisionPlan

ENV = "FXOPT_PLAN_CACHE"
#: plans kept per machine (a SmolLM2 plan is about 60 kB of JSON)
MAX_PLANS = 64
#: the modules whose code decides a plan: an edit to any of them plans again
PLANNER_MODULES = ("fxopt.quant_planner", "fxopt.plan_simulator", "fxopt.calibration", "fxopt.metrics",
                   "fxopt.passes.quantize_dynamic_int8", "fxopt.passes.quantize_weights_int8")


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_path() -> Path:
    return cache_file("plans")


def plan_key(gm: torch.fx.GraphModule, mode: str, budget: Budget, batches: Sequence[Sequence[Any]],
             higher: Sequence[str]) -> str:
    """The key of the plan ``mode`` makes for ``gm`` on ``batches`` (see the module docstring)."""
    from fxopt import __version__

    h = hashlib.blake2b(digest_size=20)
    planner = (quant_planner.PLANNING_MARGIN, quant_planner.NOISE, quant_planner.NOISE_RUNS, calibration.PERCENTILE)
    h.update(f"{__version__}|{torch.__version__}|{machine_key().digest()}|{mode}|{budget.metric}|{budget.bound!r}|"
             f"{planner!r}|{tuple(higher)!r}|".encode())
    for name in PLANNER_MODULES:
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    h.update(native_kernels.source_digest("quantize_rows").encode())  # the simulation quantizes on fxopt::quantize_rows
    graph_digest(h, gm, batches)
    return h.hexdigest()


def to_entry(plan: PrecisionPlan) -> dict[str, Any]:
    """The plan as JSON (without its fp32 reference outputs)."""
    return {"mode": plan.mode, "budget": [plan.budget.metric, plan.budget.bound], "reference": plan.reference,
            "simulated": plan.simulated, "evaluations": plan.evaluations, "noisy": plan.noisy, "notes": plan.notes,
            "layers": [{"node": l.node, "location": l.location, "shape": list(l.shape), "int8_error": l.int8_error,
                        "precision": l.precision, "reason": l.reason, "static_error": l.static_error,
                        "static": None if l.static is None else [l.static.low, l.static.high, l.static.observer]}
                       for l in plan.layers]}


def from_entry(entry: dict[str, Any], linears: Sequence[str]) -> PrecisionPlan | None:
    """The plan back from :func:`to_entry`, or None when it does not name exactly ``linears`` (the quantizable
    linears of the graph, in order) or is malformed."""
    try:
        layers = [LayerChoice(l["node"], l["location"], tuple(l["shape"]), float(l["int8_error"]),
                              precision=l["precision"], reason=l["reason"],
                              static=None if l["static"] is None else ActivationRange(*l["static"]),
                              static_error=l["static_error"]) for l in entry["layers"]]
        if [l.node for l in layers] != list(linears):
            return None
        metric, bound = entry["budget"]
        return PrecisionPlan(entry["mode"], Budget(metric, float(bound)), layers, reference=entry["reference"],
                             simulated=entry["simulated"], evaluations=int(entry["evaluations"]),
                             noisy=list(entry["noisy"]), notes=list(entry["notes"]), cached=True)
    except (KeyError, TypeError, ValueError):
        return None


class PlanCache:
    """Plans by :func:`plan_key`, in one JSON file per machine."""

    def __init__(self, path: Path | None = None):
        self.store = VerdictCache(path or cache_path(), max_entries=MAX_PLANS)

    def get(self, key: str, linears: Sequence[str]) -> PrecisionPlan | None:
        entry = self.store.get(key)
        return from_entry(entry, linears) if entry is not None else None

    def put(self, key: str, plan: PrecisionPlan) -> None:
        self.store.put(key, to_entry(plan))
        self.store.save()
