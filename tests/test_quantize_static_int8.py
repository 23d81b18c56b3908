"""Static int8 (``quantize="int8-static"``): the calibrated ranges, the plan with its fallbacks, and proof from
Inductor's generated code that oneDNN's int8 GEMM runs with the scales fixed, the GELU in its epilogue and uint8
handed to the next linear."""
import pytest
import torch
from torch._inductor.utils import run_and_get_code

import fxopt
from conftest import MLP
from conftest import rel_err as _rel
from fxopt import CalibrationError, FxoptError, calibration, metrics

pytestmark = pytest.mark.usefixtures("python_wrapper")  # they read the code it generates


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return MLP(act=torch.nn.functional.gelu).eval(), torch.randn(4, 10, 64)


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 10, 64, generator=g) for _ in range(n)]


def test_static_quantization_round_trips_within_half_a_step_and_clips_outside():
    low, high = -1.5, 4.0
    scale, zero_point = calibration.static_qparams(low, high)
    assert 0 <= zero_point <= 255 and scale == pytest.approx(5.5 / 255)
    x = torch.linspace(low, high, 1000)
    assert ((calibration.fake_quantize(x, low, high) - x).abs() <= scale / 2 + 1e-6).all()
    assert calibration.fake_quantize(torch.tensor([0.0]), low, high).item() == 0.0  # zero is exact
    outside = calibration.fake_quantize(torch.tensor([-10.0, 10.0]), low, high)
    assert outside[0].item() == pytest.approx(-zero_point * scale) and outside[1].item() == pytest.approx(
        (255 - zero_point) * scale)
    # a range that does not hold 0 (all-positive activations) is widened to hold it
    assert calibration.static_qparams(2.0, 5.0)[1] == 0


def test_the_observer_that_loses_less_is_chosen():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    plain = [torch.randn(1024, 32) for _ in range(3)]
    assert calibration.observe(plain, "minmax").high == max(float(x.max()) for x in plain)
    spiked = [x.clone() for x in plain]
    spiked[0][0, 0] = 1000.0  # one value in 98,304: the percentile clips it, min/max spends the scale on it
    assert calibration.observe(spiked, "percentile").high < 10 < calibration.observe(spiked, "minmax").high
    def static_linear(x, r):
        return torch.nn.functional.linear(calibration.fake_quantize(x, r.low, r.high), w)

    for inputs in (plain, spiked):
        exact = [torch.nn.functional.linear(x, w) for x in inputs]
        chosen, error = calibration.choose_range(inputs, exact, static_linear)
        errors = {o: calibration.range_error(inputs, exact, static_linear, calibration.observe(inputs, o))
                  for o in calibration.OBSERVERS}
        assert chosen.observer == min(errors, key=errors.get) and error == min(errors.values()) < 0.4
    with pytest.raises(ValueError, match="unknown observer 'mean'; choose one of minmax, percentile"):
        calibration.observe(plain, "mean")


def test_int8_static_runs_onednn_with_fixed_scales_and_the_gelu_in_its_epilogue(mlp):
    model, x = mlp
    compiled, (code, *_) = run_and_get_code(lambda: fxopt.compile(
        model, x, quantize="int8-static", calibration=_batches(3), accuracy_budget=0.99,
        passes="eliminate-dead-nodes"))
    plan = compiled.report.precision
    assert [l.precision for l in plan.layers] == ["int8-static"] * 3 and plan.compiled >= 0.99
    assert all(l.static is not None and l.static.observer in calibration.OBSERVERS for l in plan.layers)
    stats = compiled.report.pipeline.record("quantize-static-int8").stats
    assert stats["linears"] == 3 and stats["GELU fused, uint8 out"] == 1
    calls = [line for line in code.splitlines() if "= torch.ops.onednn.qlinear_pointwise" in line]
    assert len(calls) == 3 and "= torch.ops.onednn.qlinear_prepack" not in code  # weights packed once
    gelu = [line for line in calls if "'gelu'" in line]
    assert len(gelu) == 1 and "torch.uint8" in gelu[0]  # up's GELU in oneDNN, uint8 straight into down
    assert "erf(" not in code  # no Inductor kernel computes the GELU
    assert "mkldnn._linear_pointwise" not in code and "extern_kernels.addmm" not in code
    assert "amax" not in code and "amin" not in code  # no run-time range reduction: the scales are fixed
    assert "static int8 error (range)" in plan.table()
    for batch in (x, torch.randn(7, 10, 64)):  # calibrated once, any batch size
        assert metrics.min_cosine(model(batch), compiled(batch)) > 0.99 and _rel(compiled(batch), model(batch)) < 0.1


def test_a_tight_budget_moves_the_costliest_roles_to_dynamic_int8(mlp):
    model, x = mlp
    compiled = fxopt.compile(model, x, quantize="int8-static", calibration=_batches(2), accuracy_budget=0.99995,
                             passes="eliminate-dead-nodes")
    plan = compiled.report.precision
    precisions = {l.precision for l in plan.layers}
    assert precisions - {"int8-static"} and plan.compiled >= 0.99995
    assert "roles by what int8-static costs" in plan.summary()
    assert any("int8-static there costs the most accuracy end to end" in l.reason for l in plan.layers)


def test_static_mode_without_calibration_says_what_to_pass(mlp):
    model, x = mlp
    with pytest.raises(CalibrationError, match=r"quantize='int8-static'.*calibration=\[batch"):
        fxopt.compile(model, x, quantize="int8-static")


def test_the_pass_without_calibrated_ranges_names_the_fix(mlp):
    model, x = mlp
    with pytest.raises(FxoptError, match=r"no calibrated activation range.*quantize='int8-static', calibration="):
        fxopt.compile(model, x, passes="eliminate-dead-nodes,quantize-static-int8")


def test_calibration_that_does_not_fit_is_named(mlp):
    model, x = mlp
    with pytest.raises(CalibrationError, match="calibration batch 1 does not fit"):
        fxopt.compile(model, x, quantize="int8-static", calibration=[x, torch.randn(4, 10, 32)])


def test_a_skipped_next_linear_gets_fp32_from_the_fused_gelu(mlp):
    """The GELU still runs in oneDNN's epilogue, but a linear the pass leaves alone must not be handed uint8."""
    model, x = mlp
    compiled = fxopt.compile(model, x, passes="eliminate-dead-nodes,quantize-static-int8{observer=minmax,skip=[down]}")
    stats = compiled.report.pipeline.record("quantize-static-int8").stats
    assert stats["linears"] == 2 and stats["GELU fused"] == 1 and "GELU fused, uint8 out" not in stats
    assert metrics.min_cosine(model(x), compiled(x)) > 0.99
