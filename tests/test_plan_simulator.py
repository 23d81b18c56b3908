"""The planner's simulation of a plan computes what the quantized graph computes: with oneDNN's int8 kernel, bit for
bit; without it (an fp32 GEMM on the dequantized weights), to fp32 rounding."""
import copy

import pytest
import torch

import fxopt
from conftest import MLP
from conftest import rel_err as _rel
from fxopt import calibration, onednn_int8
from fxopt.graph_pass import PassContext
from fxopt.ir.capture import capture
from fxopt.plan_simulator import Int8Weights, PlanSimulator
from fxopt.registry import get_pass


@pytest.fixture(scope="module")
def graph():
    """The MLP's canonical fp32 graph, each linear's calibrated (min/max) input range in its meta, and its
    inputs."""
    torch.manual_seed(0)
    captured = capture(MLP(act=torch.nn.functional.gelu).eval(), (torch.randn(4, 10, 64),))
    gm = captured.graph_module
    for name in ("eliminate-dead-nodes", "canonicalize"):
        get_pass(name)(gm)
    linears = [n for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default]
    record = {n.name: [] for n in linears}
    with torch.no_grad():
        PlanSimulator(gm, record=record).run(*captured.example_inputs)
    for n in linears:
        n.meta[calibration.RANGE_KEY] = calibration.observe(record[n.name], "minmax")
    return gm, captured.example_inputs


@pytest.mark.parametrize("mode, pass_name", [("int8", "quantize-dynamic-int8"),
                                             ("int8-static", "quantize-static-int8")])
def test_a_simulated_plan_is_the_quantized_graph(graph, mode, pass_name):
    gm, inputs = graph
    quantized = copy.deepcopy(gm)
    p = get_pass(pass_name)
    options = p.make_options(fuse_gelu=False) if mode == "int8-static" else p.default_options()
    p(quantized, PassContext(example_inputs=inputs, options=options))
    linears = {n.name: n.meta[calibration.RANGE_KEY] for n in gm.graph.nodes if calibration.RANGE_KEY in n.meta}
    plan = {name: mode for name in linears}
    with torch.no_grad():
        expected = quantized(*inputs)[0]
        fallback = PlanSimulator(gm, plan, weights=Int8Weights(use_kernel=False), ranges=linears).run(*inputs)[0]
        assert 0 < _rel(fallback, expected) < 1e-5  # the same values, summed in another order
        if not onednn_int8.available():
            pytest.skip("this torch has no oneDNN int8 linear")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            simulated = PlanSimulator(gm, plan, ranges=linears).run(*inputs)[0]
    assert torch.equal(simulated, expected)
    assert sum(e.count for e in prof.key_averages() if e.key == "onednn::qlinear_pointwise") == len(linears)


@pytest.mark.parametrize("mode", ["int8-static", "auto"])
def test_the_plan_compiled_eagerly_scores_what_it_simulated(monkeypatch, mode, int8_start):
    """Through the whole pipeline: the compiled model's score, with ``backend="eager"``, is the planner's simulated
    score exactly (with Inductor they differ by its fp32 summation order: the planning margin)."""
    if not onednn_int8.available():
        pytest.skip("this torch has no oneDNN int8 linear")
    monkeypatch.setenv("FXOPT_PLAN_CACHE", "0")
    torch.manual_seed(0)
    model, x = MLP().eval(), torch.randn(4, 10, 64)  # ReLU: no GELU for oneDNN's epilogue to compute
    batches = [torch.randn(4, 10, 64, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    compiled = fxopt.compile(model, x, quantize=mode, calibration=batches, accuracy_budget=0.99, backend="eager",
                             passes="eliminate-dead-nodes")
    plan = compiled.report.precision
    assert {l.precision for l in plan.layers} == {"int8-static" if mode == "int8-static" else "int8"}
    assert plan.compiled == plan.simulated


def test_the_search_simulates_each_plan_once(monkeypatch, int8_start):
    """The search meets some plans twice (the best role's own gain is also its first ranked plan); each is
    simulated once."""
    monkeypatch.setenv("FXOPT_PLAN_CACHE", "0")
    simulated = []
    init = PlanSimulator.__init__

    def counting_init(self, gm, precision=None, **kwargs):
        init(self, gm, precision, **kwargs)
        if precision:
            simulated.append((tuple(sorted(precision.items())), kwargs.get("noise_seed")))

    monkeypatch.setattr(PlanSimulator, "__init__", counting_init)
    torch.manual_seed(0)
    model, x = MLP(act=torch.nn.functional.gelu).eval(), torch.randn(4, 10, 64)
    compiled = fxopt.compile(model, x, quantize="auto", accuracy_budget=0.99997, passes="eliminate-dead-nodes")
    plan = compiled.report.precision
    assert "roles by what int8 costs" in plan.summary()  # the search ranked the roles
    assert len(simulated) == len(set(simulated)) == plan.evaluations > 3
