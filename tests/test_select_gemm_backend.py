"""select-gemm-backend: measured choice per shape, cached per machine, exact numerics, shown in reports."""
import json

import pytest
import torch

import fxopt
from fxopt import gemm_backends
from fxopt.passes.select_gemm_backend import GemmOptions
from fxopt.testing import check_pass, filecheck

pytestmark = [pytest.mark.skipif(not gemm_backends.available(), reason="this torch build lacks MKL or oneDNN"),
              pytest.mark.usefixtures("python_wrapper")]  # they read its generated code


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(32, 64)
        self.down = torch.nn.Linear(64, 32, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))


def test_forced_mkl_golden_and_exact():
    result = check_pass("select-gemm-backend", MLP(), torch.randn(5, 32), options=GemmOptions(backend="mkl"))
    assert result.stats == {"mkl": 2}
    filecheck(result.after, """
        CHECK: %_mkl_linear_default = mkl._mkl_linear(%x, %_fxopt_linear_mkl_packed, %up.weight, %up.bias, 5) : f32[batch, 64]
        CHECK: mkl._mkl_linear(%relu, %_fxopt_linear_1_mkl_packed, %down.weight, None, 5) : f32[batch, 32]
        CHECK-NOT: aten.linear
    """)
    assert any("not timed" in d for d in result.diagnostics)


def test_forced_onednn_leaves_linears_to_inductor():
    result = check_pass("select-gemm-backend", MLP(), torch.randn(5, 32), options=GemmOptions(backend="onednn"))
    assert result.stats == {"onednn": 2} and not result.changed


def test_timings_are_cached_per_machine():
    check_pass("select-gemm-backend", MLP(), torch.randn(5, 32), options=GemmOptions(reps=3))
    table = json.loads(gemm_backends.cache_path().read_text())
    assert set(table) == {"5,32,64,1", "5,64,32,0"}
    assert set(table["5,32,64,1"]) == {"onednn", "mkl", "onednn-plain"}
    gemm_backends.cache_path().write_text(json.dumps({
        "5,32,64,1": {"onednn": 1.0, "mkl": 9.0, "onednn-plain": 2.0},
        "5,64,32,0": {"onednn": 9.0, "mkl": 1.0, "onednn-plain": 9.0}}))
    result = check_pass("select-gemm-backend", MLP(), torch.randn(5, 32))
    assert result.stats == {"onednn-plain": 1, "mkl": 1}  # decided from the cache, not measured again


@pytest.mark.parametrize("times, copy_margin, expected", [
    ({"onednn": 1.00, "mkl": 1.20, "onednn-plain": 1.05}, 0.10, "onednn-plain"),  # a copy for 5%: not worth it
    ({"onednn": 1.00, "mkl": 1.20, "onednn-plain": 1.05}, 0.0, "onednn"),
    ({"onednn": 1.00, "mkl": 0.50, "onednn-plain": 1.05}, 0.10, "mkl"),  # twice as fast: worth its copy
    ({"onednn": 1.00, "mkl": 1.20, "onednn-plain": 1.05, "gemv": 0.5}, 0.10, "gemv"),
    ({"onednn": 1.00, "mkl": 1.20}, 0.10, "onednn"),  # timed before onednn-plain existed
    ({"mkl": 0.50, "onednn-plain": 1.05}, 0.10, "mkl"),  # packed oneDNN left out (cacheable)
    ({"mkl": 1.00, "onednn-plain": 1.05}, 0.10, "onednn-plain"),
])
def test_a_packed_copy_of_the_weight_must_buy_more_than_copy_margin(times, copy_margin, expected):
    from fxopt.passes.select_gemm_backend import _fastest
    assert _fastest(times, 0.03, copy_margin) == expected


class Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(32, 64)
        self.down = torch.nn.Linear(64, 32, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x))) + x


def test_by_default_no_linear_gets_a_onednn_packed_weight(monkeypatch):
    """Inductor's FX graph cache refuses graphs holding oneDNN-packed weights: measured choices leave them out
    (cacheable=True), so even a linear where packed oneDNN is far faster goes to the best of the others."""
    monkeypatch.setattr(gemm_backends, "measure",
                        lambda *a, **k: {"onednn": 0.1, "mkl": 2.0, "onednn-plain": 1.0})
    assert check_pass("select-gemm-backend", MLP(), torch.randn(5, 32)).stats == {"onednn-plain": 2}
    assert check_pass("select-gemm-backend", MLP(), torch.randn(5, 32),
                      options=GemmOptions(cacheable=False)).stats == {"onednn": 2}


def test_forced_onednn_plain_golden_and_exact():
    """oneDNN on the model's own weight; the residual add reads the linear second, where Inductor's
    linear + bias pattern (which asserts a packed weight) does not match it."""
    result = check_pass("select-gemm-backend", Residual(), torch.randn(5, 32),
                        options=GemmOptions(backend="onednn-plain"))
    assert result.stats == {"onednn-plain": 2}
    filecheck(result.after, """
        CHECK: mkldnn._linear_pointwise(%x, %up.weight, %up.bias, 'none', [], '') : f32[batch, 64]
        CHECK: %_linear_pointwise_default_1 = mkldnn._linear_pointwise(%relu, %down.weight, None, 'none', [], '')
        CHECK: aten.add.Tensor(%x, %_linear_pointwise_default_1)
        CHECK-NOT: aten.linear
    """)


def test_onednn_plain_runs_on_the_model_weights_with_fused_epilogues():
    """The compiled code's weights are the model's own tensors (no packed copy), and oneDNN still fuses the
    activation and the residual add."""
    from torch._inductor.utils import run_and_get_code
    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.randn(4, 16, 32)
    compiled, (code, *_) = run_and_get_code(
        lambda: fxopt.compile(model, x, passes="eliminate-dead-nodes,select-gemm-backend{backend=onednn-plain}"))
    assert code.count("torch.ops.mkldnn._linear_pointwise.default(") == 1 and "'relu'" in code
    assert code.count("torch.ops.mkldnn._linear_pointwise.binary(") == 1 and "'add'" in code
    assert "_reorder_linear_weight" not in code and "_mkl_linear" not in code
    for batch in (1, 3, 9):
        x = torch.randn(batch, 16, 32)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_compiled_with_inductor_at_other_batches():
    torch.manual_seed(0)
    model = MLP().eval()
    compiled = fxopt.compile(model, torch.randn(8, 32), passes="eliminate-dead-nodes,select-gemm-backend{backend=mkl}")
    assert compiled.report.pipeline.record("select-gemm-backend").stats == {"mkl": 2}
    for batch in (1, 3, 40):
        x = torch.randn(batch, 32)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_cost_of_an_mkl_linear_counts_the_weight_not_the_packed_buffer():
    from fxopt import PassContext
    from fxopt.cost import estimate
    from fxopt.ir.capture import capture
    from fxopt.registry import get_pass
    gm = capture(MLP(), (torch.randn(5, 32),)).graph_module
    before = estimate(gm).bytes
    get_pass("select-gemm-backend")(gm, PassContext(options=GemmOptions(backend="mkl")))
    assert any(n.target is torch.ops.mkl._mkl_linear.default for n in gm.graph.nodes)
    assert estimate(gm).bytes == before


def test_a_busy_timing_is_measured_again_and_the_best_kept(monkeypatch):
    """A busy spell made oneDNN look 14× slower than MKL; the re-measurement gives the quiet order."""
    runs = iter([{"onednn": 23.7, "mkl": 1.7}, {"onednn": 1.2, "mkl": 1.6}])
    monkeypatch.setattr(gemm_backends, "interleaved_ms", lambda fns, reps: next(runs))
    assert gemm_backends.measure(8, 16, 32, bias=False) == {"onednn": 1.2, "mkl": 1.6}


def test_plausible_timings_are_measured_once(monkeypatch):
    calls = []

    def quiet(fns, reps):
        calls.append(reps)
        return {"onednn": 1.0, "mkl": 1.5}

    monkeypatch.setattr(gemm_backends, "interleaved_ms", quiet)
    gemm_backends.measure(8, 16, 32, bias=True)
    assert len(calls) == 1


def test_forced_gemv_golden_and_exact():
    result = check_pass("select-gemm-backend", MLP(), torch.randn(1, 32), options=GemmOptions(backend="gemv"))
    assert result.stats == {"gemv": 2}
    filecheck(result.after, """
        CHECK: prims.inductor_force_stride_order(%x, [32, 1])
        CHECK: aten.view(%up.weight, [64, 1, 32])
        CHECK: aten.mul
        CHECK: aten.sum
        CHECK: aten.permute
        CHECK: aten.add
        CHECK: aten.clone
        CHECK-NOT: aten.linear
    """)


def test_gemv_is_one_inductor_reduction_per_linear_and_no_gemm_library():
    """The proof that the decode path runs: Inductor's code streams the weights itself, for any batch."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(1, 1, 32)  # a decode step: one token, batch dynamic
    compiled, (code, *_) = run_and_get_code(
        lambda: fxopt.compile(model, x, passes="eliminate-dead-nodes,select-gemm-backend{backend=gemv}"))
    assert "mkldnn." not in code and "_mkl_linear" not in code and "extern_kernels.mm" not in code
    assert "extern_kernels.addmm" not in code
    assert code.count("tmp_acc0_vec = tmp_acc0_vec +") >= 2  # a vectorized sum over `in` for each linear
    for batch in (1, 3, 8):
        x = torch.randn(batch, 1, 32)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_gemv_is_timed_for_few_rows_only(monkeypatch):
    timed = []

    def quiet(fns, reps):
        timed.append(set(fns))
        return {name: 1.0 for name in fns}

    monkeypatch.setattr(gemm_backends, "interleaved_ms", quiet)
    gemm_backends.measure(1, 16, 32, bias=True)
    gemm_backends.measure(gemm_backends.GEMV_MAX_ROWS + 1, 16, 32, bias=True)
    assert timed == [{"onednn", "mkl", "onednn-plain", "gemv"}, {"onednn", "mkl", "onednn-plain"}]


def test_a_cached_entry_without_gemv_is_measured_again(monkeypatch):
    gemm_backends.cache_path().parent.mkdir(parents=True, exist_ok=True)
    gemm_backends.cache_path().write_text(json.dumps({"1,16,32,0": {"onednn": 1.0, "mkl": 2.0}}))
    monkeypatch.setattr(gemm_backends, "measure", lambda *a, **k: {"onednn": 1.0, "mkl": 2.0, "gemv": 0.5})
    assert gemm_backends.GemmTimings().get(1, 16, 32, False)["gemv"] == 0.5


@pytest.mark.parametrize("backend", ["gemv", "onednn", "onednn-plain"])
def test_generate_with_each_decode_backend_equals_hugging_face(tiny_llama, backend):
    spec = f"eliminate-dead-nodes,fuse-rms-norm,fuse-sibling-linears,select-gemm-backend{{backend={backend}}}"
    compiled = fxopt.compile(tiny_llama, {"input_ids": torch.randint(4, 128, (1, 10))}, passes=spec,
                             max_cache_len=48)
    for seed in range(2):
        torch.manual_seed(seed)
        ids = torch.randint(4, 128, (1, 6 + 4 * seed))
        assert torch.equal(compiled.generate(input_ids=ids, max_new_tokens=12, do_sample=False),
                           tiny_llama.generate(input_ids=ids, max_new_tokens=12, do_sample=False))
