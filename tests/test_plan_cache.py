"""Precision plans remembered across compiles (fxopt.plan_cache): a second compile with the same graph, weights,
calibration data and budget takes the plan without searching; anything the plan depends on changed searches
again; a cached plan is still held to the budget on the compiled model; a bad cache file is a miss."""
from __future__ import annotations

import json

import pytest
import torch

import fxopt
from conftest import MLP
from fxopt import AccuracyBudgetError, plan_cache, quant_planner


@pytest.fixture
def searches(tmp_path, monkeypatch):
    """A private cache folder; counts the planner's searches."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(plan_cache.ENV, raising=False)
    count = {"n": 0}
    original = quant_planner.make_plan

    def counted(*args, **kwargs):
        count["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(quant_planner, "make_plan", counted)
    return count


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    model, x = MLP(act=torch.nn.functional.gelu).eval(), torch.randn(4, 10, 64)
    return model, x, [torch.randn(4, 10, 64) for _ in range(2)]


def _compile(model, x, calibration, budget=0.9999, mode="int8-static"):
    return fxopt.compile(model, x, quantize=mode, calibration=calibration, accuracy_budget=budget,
                         passes="eliminate-dead-nodes")


def _layers(compiled):
    return [(l.node, l.precision, l.static) for l in compiled.report.precision.layers]


def test_a_second_compile_takes_the_plan_and_still_checks_the_compiled_model(searches, mlp):
    model, x, cal = mlp
    first = _compile(model, x, cal)
    assert searches["n"] == 1 and plan_cache.cache_path().is_file()
    second = _compile(model, x, cal)
    assert searches["n"] == 1  # no search
    plan = second.report.precision
    assert plan.cached and _layers(second) == _layers(first)
    assert plan.compiled == first.report.precision.compiled  # scored on the compiled model again
    assert second.report.pipeline.record("plan-precision").stats["plan cached"] == 1
    assert "the plan of an earlier compile" in str(second.report)
    probe = torch.randn(2, 10, 64)
    assert torch.equal(second(probe), first(probe))


@pytest.mark.parametrize("change", ["calibration", "budget", "weights", "mode"])
def test_what_the_plan_depends_on_searches_again(searches, mlp, change):
    model, x, cal = mlp
    _compile(model, x, cal)
    if change == "calibration":
        cal = [cal[0], cal[1] * 1.01]
    if change == "weights":
        with torch.no_grad():
            model.down.weight[0, 0] += 1e-3
    _compile(model, x, cal, budget=0.99995 if change == "budget" else 0.9999,
             mode="auto" if change == "mode" else "int8-static")
    assert searches["n"] == 2


def test_a_cached_plan_that_misses_the_budget_is_still_caught(searches, mlp):
    """The cache holds plans, not verdicts: a plan altered in the file (here every range shrunk to ±1e-3,
    which clips almost everything) compiles, misses the budget on the compiled model, and raises."""
    model, x, cal = mlp
    _compile(model, x, cal)
    path = plan_cache.cache_path()
    entries = json.loads(path.read_text())
    for entry in entries.values():
        for layer in entry["layers"]:
            layer["precision"], layer["static"] = "int8-static", [-1e-3, 1e-3, "minmax"]
    path.write_text(json.dumps(entries))
    with pytest.raises(AccuracyBudgetError, match="misses the accuracy budget"):
        _compile(model, x, cal)
    assert searches["n"] == 1


@pytest.mark.parametrize("content", ["{not json", "[]", '{"KEY": {"layers": [{"node": "other"}]}}'])
def test_an_unreadable_or_foreign_cache_file_is_a_miss(searches, mlp, content):
    model, x, cal = mlp
    first = _compile(model, x, cal)
    path = plan_cache.cache_path()
    key = next(iter(json.loads(path.read_text())))
    path.write_text(content.replace("KEY", key))
    second = _compile(model, x, cal)
    assert searches["n"] == 2 and _layers(second) == _layers(first) and not second.report.precision.cached


def test_the_cache_can_be_turned_off(searches, mlp, monkeypatch):
    monkeypatch.setenv(plan_cache.ENV, "0")
    model, x, cal = mlp
    _compile(model, x, cal)
    _compile(model, x, cal)
    assert searches["n"] == 2 and not plan_cache.cache_path().exists()
