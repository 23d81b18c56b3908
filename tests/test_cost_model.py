"""The cost model: exact formulas on hand-checkable graphs, agreement with FlopCounterMode on the real
models, per-pass savings in the compile report, the roofline and its cache."""
import json

import pytest
import sympy
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from fxopt.cost import estimate, machine_peaks, predict_seconds
from fxopt.cost.roofline import MachinePeaks, cache_path
from fxopt.ir import capture
from fxopt.ir.meta import dim_symbol

B, S = dim_symbol("batch"), dim_symbol("seq")
aten = torch.ops.aten


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 16)

    def forward(self, x):
        return torch.relu(self.fc(x))


def test_exact_formulas_for_linear_relu():
    report = estimate(capture(Tiny(), (torch.randn(4, 8),)).graph_module)
    assert report.unknown_ops == {}
    linear, relu = report.nodes
    assert sympy.simplify(linear.matmul_flops - 2 * B * 8 * 16) == 0
    assert sympy.simplify(linear.other_flops - 16 * B) == 0  # the bias add
    assert sympy.simplify(relu.flops - 16 * B) == 0
    assert sympy.simplify(linear.bytes_read - (B * 8 * 4 + 16 * 8 * 4 + 16 * 4)) == 0
    assert sympy.simplify(linear.bytes_written - B * 16 * 4) == 0
    assert sympy.simplify(report.flops - (256 * B + 16 * B + 16 * B)) == 0
    assert report.at(batch=3) == {"flops": 864.0, "matmul_flops": 768.0,
                                  "bytes": float(3 * 32 + 512 + 64 + 3 * 64 + 3 * 64 + 3 * 64)}
    with pytest.raises(ValueError, match="give a size for batch"):
        report.at(seq=3)


def test_attention_formula():
    class Attn(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    report = estimate(capture(Attn(), (q, k, v)).graph_module)
    (node,) = report.nodes
    assert sympy.simplify(node.matmul_flops - 2 * (2 * B * 4 * 6 * 6 * 8)) == 0


def test_unknown_ops_are_reported_by_name():
    class Weird(torch.nn.Module):
        def forward(self, x):
            return torch.special.bessel_j0(x)

    report = estimate(capture(Weird(), (torch.randn(3, 3),)).graph_module)
    assert report.unknown_ops == {"special_bessel_j0": 1}


def _flop_counter_total(model, inputs):
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu:
               lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v)}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(**inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize("name, shapes", [("minilm", [(1, 16), (4, 57), (8, 128)]),
                                          ("smollm2", [(1, 32), (2, 77), (1, 256)])])
def test_matmul_flops_agree_with_flop_counter_mode(name, shapes, request):
    real = request.getfixturevalue(name)
    report = estimate(capture(real.model, (), real.inputs(2, 16)).graph_module)
    assert report.unknown_ops == {}
    for batch, seq in shapes:
        ours = report.at(batch=batch, seq=seq)["matmul_flops"]
        theirs = _flop_counter_total(real.model, real.inputs(batch, seq))
        assert abs(ours - theirs) / theirs < 0.01, (batch, seq, ours, theirs)


def test_minilm_flops_are_a_polynomial_in_batch_and_seq(minilm_compiled):
    flops = minilm_compiled.report.flops_optimized
    poly = sympy.Poly(flops, B, S)
    assert poly.degree(S) == 2 and poly.degree(B) == 1  # attention is quadratic in seq
    assert "FLOPs (formula)" in str(minilm_compiled.report)


def test_compile_report_records_savings_per_pass(minilm_compiled):
    record = minilm_compiled.report.pipeline.record("fuse-sibling-linears")
    assert record.extra["mb_delta"] < 0  # q/k/v read their input once instead of three times
    assert record.extra["gflop_delta"] == pytest.approx(0.0, abs=1e-6)  # fusion moves no FLOPs
    cse = minilm_compiled.report.pipeline.record("eliminate-common-subexpressions")
    assert sympy.simplify(cse.extra["flops_delta"]) != 0 or cse.extra["mb_delta"] <= 0
    assert "Δ GFLOP" in minilm_compiled.report.pipeline.table()


def test_roofline_cache_and_prediction(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    peaks = machine_peaks()
    assert cache_path().exists() and peaks.fp32_flops > 1e9 and peaks.bandwidth > 1e9
    cache_path().write_text(json.dumps({"fp32_flops": 1e9, "bf16_flops": 2e9, "int8_ops": 4e9, "bandwidth": 1e9}))
    assert machine_peaks().fp32_flops == 1e9  # read from the cache
    cache_path().write_text("{corrupt")
    assert machine_peaks().fp32_flops > 1e9  # a corrupt cache is measured again
    report = estimate(capture(Tiny(), (torch.randn(4, 8),)).graph_module)
    fake = MachinePeaks(fp32_flops=1e9, bf16_flops=1e9, int8_ops=1e9, bandwidth=1e12)
    assert predict_seconds(report, fake, batch=1000) == pytest.approx((256 + 16 + 16) * 1000 / 1e9)


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(32, 96)

    def forward(self, x, mask):
        q, k, v = self.qkv(x).unflatten(-1, (3, 4, 8)).permute(2, 0, 3, 1, 4)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, mask[:, None])


class FakeTimings:
    """GemmTimings' interface, answering without timing anything."""

    def __init__(self):
        self.asked = []

    def get_kernel(self, kind, rows, k, n):
        self.asked.append(("linear", kind, rows, k, n))
        return 7.0

    def get_attention(self, *shape, dtype=torch.float32):
        self.asked.append(("sdpa" if dtype == torch.float32 else f"sdpa {dtype}", *shape))
        return 3.0

    def get_op(self, key, call):
        self.asked.append(("op", key))
        return 5.0


def test_measured_kernels_replace_the_roofline_of_gemms_and_attention():
    """With ``kernels=``, a linear and an attention cost their measured time at their shape (here faked), and every
    other node its roofline time."""
    from fxopt import gemm_backends
    from fxopt.cost.kernel_times import MeasuredKernels
    from fxopt.cost.roofline import node_seconds

    if not gemm_backends.available():
        pytest.skip("this torch build has no oneDNN/MKL")
    x, mask = torch.randn(2, 5, 32), torch.ones(2, 5, 5, dtype=torch.bool)
    report = estimate(capture(Attention(), (x, mask)).graph_module)
    fake_peaks = MachinePeaks(fp32_flops=1e9, bf16_flops=1e9, int8_ops=1e9, bandwidth=1e12)
    timings = FakeTimings()
    seconds = node_seconds(report, fake_peaks, MeasuredKernels(timings), batch=2, seq=5)
    timed = {n.name: n.timed[0] for n in report.nodes if n.timed}
    assert sorted(timed.values()) == ["linear+bias", "sdpa"]  # eager's linear adds its bias: timed with it
    assert sorted(timings.asked) == [("linear", "fp32-bias", 10, 32, 96), ("sdpa", 2, 4, 5, 5, 8, 8, 1)]
    for name, kind in timed.items():
        assert seconds[name] == pytest.approx(7e-3 if kind == "linear+bias" else 3e-3)
    roofline = node_seconds(report, fake_peaks, batch=2, seq=5)
    assert all(seconds[n] == roofline[n] for n in seconds if n not in timed)


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16, bias=False)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x))) + x


def test_eager_pointwise_ops_and_biased_linears_are_timed_at_their_shapes():
    """The eager graph's GELU and add are timed as ATen runs them (far below the memory roofline), its biased fp32
    linear with the bias; the fused (Inductor) estimate keeps the roofline for pointwise ops and the plain GEMM."""
    from fxopt.cost.kernel_times import MeasuredKernels, op_call
    from fxopt.cost.roofline import node_seconds

    gm = capture(Mlp(), (torch.randn(4, 16),)).graph_module
    eager = {n.op: n.timed for n in estimate(gm).nodes if n.timed}
    assert eager["linear"][0] in ("linear+bias", "linear")  # the up projection (bias) and the down one (none)
    assert [n.timed[0] for n in estimate(gm).nodes if n.op == "linear"] == ["linear+bias", "linear"]
    assert eager["gelu"][0] == eager["add"][0] == "op"
    fused = {n.op: n.timed for n in estimate(gm, fused=True).nodes if n.timed}
    assert set(fused) == {"linear"} and all(t[0] == "linear" for t in fused.values())

    key, call = op_call(*eager["gelu"][1:], dims={B: 3})
    assert key == "op,aten.gelu.default,[float32[3, 64]],[]" and call().shape == (3, 64)
    seconds = node_seconds(estimate(gm), MachinePeaks(1e9, 1e9, 1e9, 1e12), MeasuredKernels(FakeTimings()), batch=3)
    gelu = next(n.name for n in estimate(gm).nodes if n.op == "gelu")
    assert seconds[gelu] == pytest.approx(5e-3)


class QuantizeRows(torch.nn.Module):
    def forward(self, x):
        q, scale, zero = torch.ops.fxopt.quantize_rows(x)
        return q, scale, zero


def test_native_ops_are_timed_at_their_shapes_in_both_graphs():
    """fxopt's own kernels (here ``fxopt::quantize_rows``) cost what they take at their shape, in the eager and in the
    fused estimate: their roofline put MiniLM's at a third of what they ran."""
    from fxopt import native_kernels  # noqa: F401 - defines the fxopt ops
    from fxopt.cost.kernel_times import MeasuredKernels, op_call
    from fxopt.cost.roofline import node_seconds

    gm = capture(QuantizeRows(), (torch.randn(4, 16),)).graph_module
    for fused in (False, True):
        timed = {n.op: n.timed for n in estimate(gm, fused=fused).nodes if n.timed}
        assert set(timed) == {"quantize_rows"} and timed["quantize_rows"][0] == "op"
    report = estimate(gm, fused=True)
    key, call = op_call(*timed["quantize_rows"][1:], dims={B: 3})
    assert key == "op,fxopt.quantize_rows.default,[float32[3, 16]],[]"
    if native_kernels.available("quantize_rows"):
        assert call()[0].shape == (3, 16)
    timings = FakeTimings()
    seconds = node_seconds(report, MachinePeaks(1e9, 1e9, 1e9, 1e12), MeasuredKernels(timings), batch=3)
    node = next(n.name for n in report.nodes if n.op == "quantize_rows")
    assert seconds[node] == pytest.approx(5e-3) and timings.asked == [("op", key)]


def test_a_bf16_attention_is_timed_in_bf16():
    """After cast-attention-bf16 an attention's Q/K/V are bf16: it costs bf16 attention's measured time, not fp32's;
    a dtype fxopt does not time keeps its roofline."""
    from fxopt import gemm_backends
    from fxopt.cost.kernel_times import MeasuredKernels

    if not gemm_backends.available():
        pytest.skip("this torch build has no oneDNN/MKL")
    timings = FakeTimings()
    kernels = MeasuredKernels(timings)
    assert kernels.seconds("sdpa", "bfloat16", 2, 4, 5, 5, 8, 8, 1) == pytest.approx(3e-3)
    assert kernels.seconds("sdpa", "float16", 2, 4, 5, 5, 8, 8, 1) is None
    assert timings.asked == [("sdpa torch.bfloat16", 2, 4, 5, 5, 8, 8, 1)]


def test_kernels_are_timed_in_turns_and_cached(tmp_path, monkeypatch):
    """Each shape is timed in fp32 and uint8 (oneDNN's int8 linear) in turns; bf16 is kept as its ratio to an fp32
    timing taken with it; an attention shape in fp32, and bf16 as its ratio to fp32 in turns; all of it lands in
    the GEMM timings file, marked with the timing version (an entry of another version is measured again)."""
    from fxopt import gemm_backends, onednn_int8

    if not (gemm_backends.available() and onednn_int8.available()):
        pytest.skip("this torch build has no oneDNN int8")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    timings = gemm_backends.GemmTimings(reps=2)
    assert timings.get_kernel("uint8", 16, 64, 32) > 0
    assert set(timings.table["kernel,16,64,32"]) == {"fp32", "uint8", "version"}
    assert timings.get_kernel("bf16", 16, 64, 32) > 0 and "bf16/fp32" in timings.table["kernel,16,64,32"]
    assert timings.get_attention(1, 2, 4, 4, 8, 8, 1) > 0
    assert timings.get_attention(1, 2, 4, 4, 8, 8, 1, dtype=torch.bfloat16) > 0
    assert set(timings.table["sdpa,1,2,4,4,8,8,1"]) == {"float32", "bfloat16/float32", "version"}
    timings.save()
    again = gemm_backends.GemmTimings()
    assert again.get_kernel("uint8", 16, 64, 32) == timings.get_kernel("uint8", 16, 64, 32) and again.measured == 0
    assert again.get_attention(1, 2, 4, 4, 8, 8, 1, dtype=torch.bfloat16) > 0 and again.measured == 0
    again.table["kernel,16,64,32"]["version"] = gemm_backends.TIMING_VERSION - 1  # cached by an older fxopt
    again.get_kernel("uint8", 16, 64, 32)
    assert again.measured == 1 and again.table["kernel,16,64,32"]["version"] == gemm_backends.TIMING_VERSION
    with pytest.raises(ValueError, match="unknown GEMM kernel 'fp8'"):
        gemm_backends.measure_kernels(("fp8",), 4, 4, 4)


def test_critical_path_follows_the_heaviest_chain():
    class TwoBranches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.big = torch.nn.Linear(64, 64)
            self.small = torch.nn.Linear(64, 64)

        def forward(self, x):
            return self.big(x) + torch.relu(self.small(x))

    report = estimate(capture(TwoBranches(), (torch.randn(2, 64),)).graph_module)
    path = report.critical_path({"linear": 10.0, "linear_1": 1.0, "relu": 1.0, "add": 1.0})
    assert path[-2:] == ["linear", "add"] and "relu" not in path
    heavy_small = report.critical_path({"linear": 1.0, "linear_1": 10.0, "relu": 1.0, "add": 1.0})
    assert heavy_small[-3:] == ["linear_1", "relu", "add"]


def test_by_op_on_a_dynamic_graph_asks_for_the_sizes():
    report = estimate(capture(Tiny(), (torch.randn(4, 8),)).graph_module)
    with pytest.raises(ValueError, match=r"give a size for batch.*by_op\(batch=...\)"):
        report.by_op()
    assert {row[0] for row in report.by_op(batch=4)} >= {"linear", "relu"}


@pytest.mark.parametrize("fused, decomposed", [
    (lambda x: torch.nn.functional.silu(x), lambda x: x * torch.sigmoid(x)),
    (lambda x: torch.nn.functional.gelu(x), lambda x: x * 0.5 * (1.0 + torch.erf(x / 2 ** 0.5))),
    (lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
     lambda x: 0.5 * x * (1.0 + torch.tanh(0.79788 * (x + 0.044715 * torch.pow(x, 3.0))))),
])
def test_a_fused_op_never_costs_more_than_its_decomposition(fused, decomposed):
    from fxopt.testing import _as_module

    x = torch.randn(4, 8)
    costs = [estimate(capture(_as_module(f), (x,)).graph_module).at(batch=4) for f in (fused, decomposed)]
    assert costs[0]["flops"] <= costs[1]["flops"] and costs[0]["bytes"] <= costs[1]["bytes"]


def test_host_rates_probe_both_precisions_against_the_cached_peaks(tmp_path, monkeypatch):
    """The bench's "host GEMM rate vs peak" column: fp32 and bf16 rates as fractions of the cached peaks."""
    from fxopt.cost import host_rates

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache_path().parent.mkdir(parents=True, exist_ok=True)
    cache_path().write_text(json.dumps({"fp32_flops": 1.0, "bf16_flops": 2.0, "int8_ops": 4.0, "bandwidth": 1.0}))
    rates = host_rates.probe()
    assert set(rates) == {"fp32", "bf16"} and all(r > 0 for r in rates.values())
    sampler = host_rates.RateSampler()
    assert sampler.rates() == {}
    sampler.times = {"fp32": [1.0, 1.0, 2.0], "bf16": [4.0, 1.0, 1.0]}  # seconds per 1024³ GEMM
    assert sampler.rates() == pytest.approx({"fp32": 2 * 1024 ** 3, "bf16": 1024 ** 3})  # medians over the peaks
    assert sampler.rates(last=1) == pytest.approx({"fp32": 1024 ** 3, "bf16": 1024 ** 3})
    assert host_rates.describe({"fp32": 0.941, "bf16": 0.61}) == "fp32 94%, bf16 61%"
    assert host_rates.describe({}) == "-"
    assert host_rates.slow_spell_note([{"fp32": 0.95, "bf16": 0.9}]) == ""
    note = host_rates.slow_spell_note([{"fp32": 0.95, "bf16": 0.42}, {"fp32": 0.9, "bf16": 0.74}])
    assert "bf16 42–74%" in note and "fp32 90–95%" not in note
