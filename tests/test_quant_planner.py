"""The precision planner and ``fxopt.compile(quantize=...)``: plans that hold the budget, a budget that cannot be
held reported with the layers that limit it, and every bad request named before any work."""
import pytest
import torch

import fxopt
from conftest import MLP
from fxopt import metrics
from fxopt.cost import machine_peaks
from fxopt import AccuracyBudgetError, CalibrationError


@pytest.fixture(autouse=True)
def _int8_start(int8_start):
    """Every test here searches from int8 (conftest.int8_start); the one about the bf16 start patches its own."""


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return MLP(act=torch.nn.functional.gelu).eval(), torch.randn(4, 10, 64)


def _precisions(compiled):
    return [layer.precision for layer in compiled.report.precision.layers]


def test_auto_keeps_every_linear_int8_when_the_budget_allows(mlp):
    model, x = mlp
    compiled = fxopt.compile(model, x, quantize="auto", accuracy_budget=0.99, passes="eliminate-dead-nodes")
    plan = compiled.report.precision
    assert _precisions(compiled) == ["int8"] * 3 and plan.compiled >= 0.99
    assert "3 int8" in str(compiled.report) and "min pooled cosine ≥ 0.99" in str(compiled.report)
    assert compiled.report.pipeline.record("quantize-dynamic-int8").stats["linears"] == 3


def test_auto_starts_a_linear_in_bf16_where_bf16_is_as_fast_as_int8(mlp, monkeypatch):
    """Where this machine runs a linear's bf16 kernel at least as fast as its int8 one, bf16 (the exacter) is
    where the search starts for it; the other linears start in int8."""
    from fxopt import quant_planner

    def down_faster_in_bf16(gm, linears):
        return {n.name: "bf16 as fast as int8 here (test)" for n in linears
                if "down" in n.args[1].target}

    monkeypatch.setattr(quant_planner.precision_speed, "bf16_where_faster", down_faster_in_bf16)
    model, x = mlp
    compiled = fxopt.compile(model, x, quantize="auto", accuracy_budget=0.99, passes="eliminate-dead-nodes")
    layers = compiled.report.precision.layers
    assert [(l.location.split(" ")[-1], l.precision) for l in layers] == [
        ("up", "int8"), ("down", "bf16"), ("head", "int8")], [l.location for l in layers]
    assert layers[1].reason == "bf16 as fast as int8 here (test)"
    stats = compiled.report.pipeline.record
    assert stats("quantize-dynamic-int8").stats["linears"] == 2 and stats("cast-linears-bf16").stats["linears"] == 1


def test_auto_moves_the_costliest_linears_up_to_hold_a_tight_budget(mlp):
    model, x = mlp
    compiled = fxopt.compile(model, x, quantize="auto", accuracy_budget=0.99997, passes="eliminate-dead-nodes")
    plan = compiled.report.precision
    kept = [l for l in plan.layers if l.precision != "int8"]
    assert kept and plan.compiled >= 0.99997  # held, measured on the compiled model
    # the roles kept out of int8 are those whose int8 costs the most end to end, best first
    assert "roles by what int8 costs: " in plan.summary()
    stats = compiled.report.pipeline.record
    assert stats("quantize-dynamic-int8").stats.get("linears", 0) + stats("cast-linears-bf16").stats.get(
        "linears", 0) == sum(1 for l in plan.layers if l.precision != "fp32")
    assert "costs the most accuracy end to end" in str(compiled.report)
    out = compiled(torch.randn(2, 10, 64))
    assert out.shape == (2, 10, 32)


def test_int8_that_misses_the_budget_names_the_limiting_layers(mlp):
    model, x = mlp
    with pytest.raises(AccuracyBudgetError, match=r"misses the accuracy budget.*most sensitive linears.*"
                                                  r"(up|down|head).*quantize='auto'"):
        fxopt.compile(model, x, quantize="int8", accuracy_budget=0.9999999, passes="eliminate-dead-nodes")


def test_bf16_mode_casts_every_linear(mlp):
    model, x = mlp
    compiled = fxopt.compile(model, x, quantize="bf16", passes="eliminate-dead-nodes")
    assert _precisions(compiled) == ["bf16"] * 3
    assert metrics.min_cosine(model(x), compiled(x)) > 0.9999


def test_calibration_batches_are_bound_like_calls(mlp):
    model, x = mlp
    batches = [torch.randn(2, 10, 64), (torch.randn(3, 10, 64),)]
    compiled = fxopt.compile(model, x, quantize="auto", calibration=batches, passes="eliminate-dead-nodes")
    assert compiled.report.precision.compiled is not None


@pytest.mark.parametrize("kwargs, error, message", [
    ({"quantize": "int4"}, fxopt.FxoptError, "unknown quantize mode 'int4'; choose one of int8, int8-static, bf16, auto"),
    ({"quantize": "int8", "accuracy_budget": {"bleu": 30}}, metrics.MetricError,
     "unknown accuracy metric 'bleu'; choose one of min_cosine, perplexity, next_token_agreement"),
    ({"quantize": "int8", "calibration": []}, CalibrationError, "non-empty list"),
    ({"accuracy_budget": 0.99}, fxopt.FxoptError, "apply to a quantized compile"),
    ({"quantize": "auto", "calibration": [torch.randn(2, 11, 64)]}, CalibrationError,
     "calibration batch 0 does not fit the compiled model: input 'x' has size 11 at dim 1"),
    ({"quantize": "auto", "accuracy_budget": {"perplexity": 0.02}}, metrics.MetricError,
     "does not apply to this model's output"),
])
def test_bad_requests_are_named(mlp, kwargs, error, message):
    model, x = mlp
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        fxopt.compile(model, x, passes="eliminate-dead-nodes", **kwargs)


def test_metrics():
    ref = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    noisy = ref.clone()
    noisy[0, 3:] += 100  # padding: masked out
    assert metrics.min_cosine(ref, noisy, mask) == pytest.approx(1.0)
    assert metrics.min_cosine(ref, noisy) < 0.99
    ids = torch.tensor([[1, 2, 3]])
    logits = torch.full((1, 3, 4), -1e4)
    logits[0, 0, 2] = logits[0, 1, 3] = 0  # certain of the right next tokens
    assert metrics.nll_sum(logits, ids) == (pytest.approx(0.0), 2)
    assert metrics.next_token_agreement(logits, logits) == 1.0
    close = torch.tensor([[[2.0, 1.95, 0.0], [3.0, 0.0, 1.0]]])  # a near-tie, then a sure choice
    assert metrics.decisive_positions(close).tolist() == [[False, True]]
    with pytest.raises(metrics.MetricError, match="choose one of"):
        metrics.check_metric("accuracy")


def test_evaluation_text_is_not_the_calibration_text():
    from fxopt.models import sample_text
    sentences = metrics.evaluation_sentences(64)
    assert len(sentences) == 64 and len(set(sentences)) == 64
    calibration = sample_text()
    assert not any(s in calibration for s in sentences)


@pytest.mark.parametrize("bf16_rate, expected", [(4e11, ("bf16", "fp32")), (4e10, ("fp32",))])
def test_bf16_is_a_fallback_only_where_this_machine_runs_it_faster_than_fp32(monkeypatch, bf16_rate, expected):
    """Without AVX512-BF16 or AMX, bf16 GEMMs are emulated and slower than fp32 (41 against 141 GFLOP/s on an
    Intel Xeon host): the planner then moves what int8 costs too much straight to fp32."""
    from fxopt import cost, quant_planner
    monkeypatch.setattr(cost, "machine_peaks", lambda: cost.MachinePeaks(1.4e11, bf16_rate, 5e11, 3e10))
    assert quant_planner.higher_precisions("int8") == expected
    assert quant_planner.higher_precisions("int8-static") == ("int8", *expected)


def test_a_plan_must_hold_the_budget_under_fp32_sized_noise(mlp, monkeypatch):
    """Quantization is discontinuous, so a plan that holds in one simulation is simulated again with its linears'
    inputs moved by noise; each run must hold the full budget. Noise far above fp32's makes every int8 plan
    fail that check, and the planner keeps moving roles up until one holds."""
    from fxopt import quant_planner

    model, x = mlp
    compiled = fxopt.compile(model, x, quantize="auto", accuracy_budget=0.999, passes="eliminate-dead-nodes")
    plan = compiled.report.precision
    assert len(plan.noisy) == quant_planner.NOISE_RUNS and all(v >= 0.999 for v in plan.noisy)
    assert "under fp32-sized noise: min cosine" in plan.summary()
    monkeypatch.setattr(quant_planner, "NOISE", 0.2)
    noisy = fxopt.compile(model, x, quantize="auto", accuracy_budget=0.999, passes="eliminate-dead-nodes")
    plan = noisy.report.precision
    assert any("under fp32-sized noise: rejected" in note for note in plan.notes)
    assert _precisions(noisy) == ["fp32"] * 3 and plan.compiled >= 0.999


def test_verbose_compiles_show_the_search_as_it_goes(mlp, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model, x = mlp
    lines = []
    for _ in range(2):  # searched, then taken from the plan cache
        fxopt.compile(model, x, quantize="auto", accuracy_budget=0.99997, passes="eliminate-dead-nodes",
                      verbose=True)
        lines.append([line for line in capsys.readouterr().err.splitlines()
                      if line.startswith("[fxopt]     plan-precision: ")])
    searched, cached = lines
    assert "3 linears' own int8 errors measured on 1 calibration batch" in searched[0]
    assert "plan 1 (every linear int8): min cosine" in searched[1]
    higher = "bf16" if machine_peaks().native_bf16 else "fp32"  # the planner tries bf16 first where it is native
    assert any(line.endswith("s)") and f"{higher}, the rest int8): min cosine" in line for line in searched[2:])
    assert any("; under fp32-sized noise, run 1): min cosine" in line for line in searched)
    assert len(cached) == 1 and "the plan of an earlier compile with the same key (fxopt.plan_cache)" in cached[0]
