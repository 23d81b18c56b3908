"""fxopt's native int8 GEMV (fxopt.native_kernels): built on this machine, the same numbers as Inductor's gemv loop,
called from Inductor's code when chosen, and chosen only where measured faster."""
import copy

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import fxopt
from conftest import MLP
from fxopt import native_kernels
from fxopt.gemv import gemv_grouped
from fxopt.passes.quantize_weights_int8 import quantize_groups
from fxopt.testing import check_pass

pytestmark = [pytest.mark.skipif(not native_kernels.available(), reason=f"no native build: {native_kernels.why_unavailable()}"),
              pytest.mark.usefixtures("python_wrapper")]  # they read its generated code


@pytest.mark.parametrize("rows,out,zeros,bias", [(1, 1536, True, False), (3, 1538, False, True), (2, 7, True, True)])
def test_native_kernel_computes_what_the_gemv_loop_does(rows, out, zeros, bias):
    """Blocks of four output channels and a tail (1538, 7), batch rows, zeros and bias: all to fp32 rounding."""
    torch.manual_seed(0)
    x = torch.randn(rows, 1, 576)
    q = torch.randint(-127, 128, (out, 576), dtype=torch.int8)
    s, z = torch.rand(out, 18) / 50, torch.rand(out, 18) / 50 if zeros else None
    b = torch.randn(out) if bias else None
    ref = gemv_grouped(x, q, s, z, b)
    got = native_kernels.gemv_int8_grouped(x, q, s, z, b)
    assert got.shape == ref.shape == (rows, 1, out)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_inductor_calls_the_native_kernel_on_int8_weights():
    """kernel=native: Inductor's code calls the op on the int8 weights (no fp32 copy, no other GEMM), and the
    result is the linear of the dequantized weights."""
    torch.manual_seed(0)
    model = MLP().eval()
    compiled, (code, *_) = run_and_get_code(lambda: fxopt.compile(
        model, torch.randn(1, 1, 64),
        passes="eliminate-dead-nodes,quantize-weights-int8{group_size=32,scheme=auto,kernel=native}"))
    assert code.count("torch.ops.fxopt.gemv_int8_grouped.default(") == 3
    assert "_weight_int8pack_mm" not in code and "mkldnn._linear_pointwise" not in code
    assert "extern_kernels.addmm" not in code and code.count("device='cpu', dtype=torch.int8)") == 3
    assert compiled.report.pipeline.record("quantize-weights-int8").stats["native gemv"] == 3
    dequantized = copy.deepcopy(model)
    for linear in (dequantized.up, dequantized.down, dequantized.head):
        q, s, z = quantize_groups(linear.weight.data, 32, "auto")
        w = q.view(q.shape[0], -1, 32).float() * s[..., None] + (0 if z is None else z[..., None])
        linear.weight.data = w.view_as(linear.weight)
    for batch in (1, 3):
        x = torch.randn(batch, 1, 64)
        torch.testing.assert_close(compiled(x), dequantized(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("native_ms,expected", [(0.5, "native gemv"), (1.5, "gemv")])
def test_measure_picks_the_kernel_this_machine_runs_faster(monkeypatch, native_ms, expected):
    from fxopt import gemm_backends

    monkeypatch.setattr(gemm_backends.GemmTimings, "get_grouped_int8",
                        lambda self, *a: {"gemv": 1.0, "native": native_ms})
    result = check_pass(
        "quantize-weights-int8", MLP().eval(), torch.randn(1, 1, 64),
        options=fxopt.passes.quantize_weights_int8.make_options(group_size=32), rtol=2e-2)
    assert result.stats[expected] == 3


def test_native_kernel_is_refused_for_groups_it_cannot_run():
    with pytest.raises(Exception, match="multiple of 16"):
        check_pass("quantize-weights-int8", MLP().eval(), torch.randn(1, 1, 64),
                                 options=fxopt.passes.quantize_weights_int8.make_options(group_size=8, kernel="native"))
