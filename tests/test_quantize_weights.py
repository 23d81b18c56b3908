"""Weight-only quantization passes: per-channel int8 (_weight_int8pack_mm or gemv), grouped int8 (gemv) and grouped
int4 (_weight_int4pack_mm_for_cpu), each shown running in Inductor's code, within the accuracy their formats allow,
with skip by name."""
import pytest
import torch
from torch._inductor.utils import run_and_get_code

import fxopt
from conftest import MLP
from fxopt.passes.quantize_weights_int8 import quantize_per_channel
from fxopt.testing import check_pass, filecheck

pytestmark = pytest.mark.usefixtures("python_wrapper")  # they read the code it generates


def test_per_channel_quantization_error_is_within_half_a_step():
    w = torch.randn(48, 80) * torch.linspace(0.01, 3, 48)[:, None]  # rows of very different ranges
    q, scales = quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and scales.shape == (48,)
    assert ((q.float() * scales[:, None] - w).abs() <= scales[:, None] / 2 + 1e-6).all()


def test_pass_rewrites_linears_and_keeps_skipped_ones():
    torch.manual_seed(0)
    opts = fxopt.passes.quantize_weights_int8.make_options(skip=["head"])
    result = check_pass("quantize-weights-int8", MLP().eval(), torch.randn(4, 10, 64), options=opts, rtol=2e-2)
    assert result.stats["linears"] == 2 and result.stats["kept fp32 (skip)"] == 1
    filecheck(result.after, """
        CHECK: %_fxopt_linear_int8 = const : i8[256, 64]
        CHECK-NEXT: %_fxopt_linear_scales = const : bf16[256]
        CHECK: %_to_copy_default = aten._to_copy(%view_default, dtype=bfloat16) : bf16[10*batch, 64]
        CHECK-NEXT: aten._weight_int8pack_mm(%_to_copy_default, %_fxopt_linear_int8, %_fxopt_linear_scales) : bf16[10*batch, 256]
        CHECK-NEXT: aten._to_copy(%_weight_int8pack_mm_default, dtype=float32) : f32[10*batch, 256]
        CHECK-NEXT: aten.add.Tensor(%_to_copy_default_1, %up.bias)
        CHECK: aten._weight_int8pack_mm(%_to_copy_default_2, %_fxopt_linear_1_int8, %_fxopt_linear_1_scales) : bf16[10*batch, 64]
        CHECK-NOT: %down.weight
        CHECK: aten.linear(%view_default_3, %head.weight, %head.bias) : f32[batch, 10, 32]
    """)
    assert 1e-4 < result.max_rel_error < 2e-2  # lossy, and by about what per-channel int8 costs


def test_fp32_activations_are_an_option():
    torch.manual_seed(0)
    opts = fxopt.passes.quantize_weights_int8.make_options(activations="float32")
    result = check_pass("quantize-weights-int8", MLP().eval(), torch.randn(4, 10, 64), options=opts, rtol=2e-2)
    assert "bfloat16" not in result.after and "aten._weight_int8pack_mm" in result.after


def test_inductor_runs_the_int8_kernel():
    torch.manual_seed(0)
    model, x = MLP().eval(), torch.randn(4, 10, 64)
    compiled, (code, *_) = run_and_get_code(
        lambda: fxopt.compile(model, x, passes="eliminate-dead-nodes,quantize-weights-int8"))
    assert code.count("extern_kernels._weight_int8pack_mm(") == 3  # the int8 kernel, fed int8 frozen weights
    assert code.count("device='cpu', dtype=torch.int8)") == 3
    assert "mkldnn._linear_pointwise" not in code and "extern_kernels.addmm" not in code  # no fp32 GEMM left
    out, ref = compiled(x), model(x)
    assert (out - ref).abs().max() / ref.abs().max() < 2e-2
    assert compiled.report.pipeline.record("quantize-weights-int8").extra["max_rel_error"] < 2e-2


def test_few_row_linears_run_as_an_int8_gemv_in_inductor():
    """A decode step's linears: Inductor streams the int8 weights itself, with exact fp32 activations."""
    import copy

    torch.manual_seed(0)
    model = MLP().eval()
    compiled, (code, *_) = run_and_get_code(
        lambda: fxopt.compile(model, torch.randn(1, 1, 64), passes="eliminate-dead-nodes,quantize-weights-int8{kernel=gemv}"))
    assert "_weight_int8pack_mm" not in code and "mkldnn._linear_pointwise" not in code
    assert "extern_kernels.addmm" not in code and code.count("device='cpu', dtype=torch.int8)") == 3
    assert compiled.report.pipeline.record("quantize-weights-int8").stats["gemv"] == 3
    dequantized = copy.deepcopy(model)  # the same int8 weights, multiplied out in fp32
    for linear in (dequantized.up, dequantized.down, dequantized.head):
        q, scales = quantize_per_channel(linear.weight.data)
        linear.weight.data = q.float() * scales[:, None]
    for batch in (1, 3):
        x = torch.randn(batch, 1, 64)
        torch.testing.assert_close(compiled(x), dequantized(x), rtol=1e-4, atol=1e-5)


def _on_gguf_grids(n=64, k=128, g=32):
    """Weights as SmolLM2's GGUF stores them: a Q4_1-like one (``d * q + m`` per block, q in 0..15) and a
    Q8_0-like one (``d * q`` per block, q in -127..127)."""
    q4 = torch.randint(0, 16, (n, k // g, g))
    q4[..., 0], q4[..., 1] = 0, 15
    q4_1 = (q4 * (torch.rand(n, k // g, 1) * 0.01 + 1e-3) - torch.rand(n, k // g, 1) * 0.05).view(n, k)
    q8 = torch.randint(-127, 128, (n, k // g, g))
    q8[..., 0] = 127
    q8_0 = (q8 * (torch.rand(n, k // g, 1) * 0.001 + 1e-4)).view(n, k)
    return q4_1, q8_0


def _dequantize(q, scales, zeros):
    n, k = q.shape
    w = q.float().view(n, scales.shape[1], -1) * scales[..., None]
    return (w if zeros is None else w + zeros[..., None]).view(n, k)


def test_int8_groups_recover_weights_on_gguf_grids_where_one_scale_per_row_does_not():
    from fxopt.passes.quantize_weights_int8 import quantize_groups

    torch.manual_seed(0)
    q4_1, q8_0 = _on_gguf_grids()
    for w, exact_scheme in ((q4_1, "asymmetric"), (q8_0, "symmetric")):
        for scheme in (exact_scheme, "auto"):
            q, scales, zeros = quantize_groups(w, 32, scheme)
            assert q.dtype == torch.int8 and scales.shape == (64, 4)
            assert (_dequantize(q, scales, zeros) - w).abs().max() <= 1e-6 * w.abs().max()
        q, scales = quantize_per_channel(w)
        assert (q.float() * scales[:, None] - w).norm() > 1e-3 * w.norm()
    assert quantize_groups(q8_0, 32, "auto")[2] is None  # all groups symmetric: no zeros, no second reduction
    gaussian = torch.randn(64, 128)  # on no grid: auto is at least as good as either scheme, group by group
    errors = {s: (_dequantize(*quantize_groups(gaussian, 32, s)) - gaussian).square().sum().item()
              for s in ("symmetric", "asymmetric", "auto")}
    assert errors["auto"] <= min(errors["symmetric"], errors["asymmetric"])


def test_grouped_int8_runs_as_a_gemv_on_int8_weights_in_inductor():
    """Group-wise scales and zeros for a decode step: Inductor streams the int8 weights (no dequantized fp32
    copy folded from the constants), and the result is the linear of the dequantized weights."""
    import copy

    from fxopt.passes.quantize_weights_int8 import quantize_groups

    torch.manual_seed(0)
    model = MLP().eval()
    q4_1, _ = _on_gguf_grids(256, 64)
    model.up.weight.data = q4_1
    compiled, (code, *_) = run_and_get_code(lambda: fxopt.compile(
        model, torch.randn(1, 1, 64),
        passes="eliminate-dead-nodes,quantize-weights-int8{group_size=32,scheme=auto,kernel=gemv}"))
    assert "_weight_int8pack_mm" not in code and "mkldnn._linear_pointwise" not in code
    assert "extern_kernels.addmm" not in code and code.count("device='cpu', dtype=torch.int8)") == 3
    assert "(256, 64), (64, 1), device='cpu', dtype=torch.float32)" not in code  # up's weight: no fp32 copy
    record = compiled.report.pipeline.record("quantize-weights-int8")
    assert record.stats["gemv"] == 3 and record.stats["linears with asymmetric groups"] >= 1
    dequantized = copy.deepcopy(model)
    for linear in (dequantized.up, dequantized.down, dequantized.head):
        linear.weight.data = _dequantize(*quantize_groups(linear.weight.data, 32, "auto"))
    torch.testing.assert_close(dequantized.up.weight, model.up.weight, rtol=0, atol=1e-7)  # on its grid: exact
    for batch in (1, 3):
        x = torch.randn(batch, 1, 64)
        torch.testing.assert_close(compiled(x), dequantized(x), rtol=1e-4, atol=1e-5)


def test_grouped_int8_leaves_what_it_cannot_group_in_fp32():
    torch.manual_seed(0)
    opts = fxopt.passes.quantize_weights_int8.make_options(group_size=48)  # divides none of 64 and 256
    result = check_pass("quantize-weights-int8", MLP().eval(), torch.randn(1, 1, 64), options=opts, rtol=2e-2)
    assert result.stats == {"kept fp32 (shape)": 3}
    many_rows = check_pass("quantize-weights-int8", MLP().eval(), torch.randn(4, 10, 64),
                           options=fxopt.passes.quantize_weights_int8.make_options(group_size=32), rtol=2e-2)
    assert many_rows.stats == {"kept fp32 (shape)": 3}  # 40 rows: a gemv would read each weight 40 times


def test_int4_groups_recover_weights_that_lie_on_a_4_bit_grid():
    from fxopt.passes.quantize_weights_int4 import pack_for_cpu, quantize_grouped

    torch.manual_seed(0)
    n, k, g = 64, 128, 32  # a Q4_1-like weight: w = d * q + m per block of 32, q in 0..15 using the full range
    q = torch.randint(0, 16, (n, k))
    q[:, ::g], q[:, 1::g] = 0, 15
    d = torch.rand(n, k // g, 1) * 0.01 + 1e-3
    m = -torch.rand(n, k // g, 1) * 0.05
    w = (q.view(n, k // g, g) * d + m).view(n, k)
    q2, scales, zeros = quantize_grouped(w, g)
    assert torch.equal(q2, q.int())
    packed, scales_zeros = pack_for_cpu(q2, scales, zeros, torch.float32)
    x = torch.randn(3, k)
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, g, scales_zeros)
    assert (out - x @ w.t()).abs().max() / (x @ w.t()).abs().max() < 1e-5  # fp32 activations: exact


def test_int4_pass_and_its_kernel_in_inductor():
    torch.manual_seed(0)
    model, x = MLP().eval(), torch.randn(4, 10, 64)
    compiled, (code, *_) = run_and_get_code(
        lambda: fxopt.compile(model, x, passes="eliminate-dead-nodes,quantize-weights-int4{skip=[head]}"))
    # Inductor lowers the ATen int4 op to its packed int4 CPU kernel: up and down (head kept fp32)
    assert code.count("torch.ops.quantized.int4mm_packed_weight_cpu.default(") == 2
    record = compiled.report.pipeline.record("quantize-weights-int4")
    assert record.stats["linears"] == 2 and record.stats["kept fp32 (skip)"] == 1
    out, ref = compiled(x), model(x)
    # random Gaussian weights lie on no 4-bit grid: each is off by up to half a step (1/30 of its group's range),
    # and three such layers compound; what matters is that the kernel ran and the error is of that order
    assert (out - ref).abs().max() / ref.abs().max() < 0.2


def test_few_row_linears_run_as_a_bf16_gemv_in_inductor():
    """decode_precision="bf16": Inductor streams the bf16 weights (no fp32 copy folded by freezing), fp32 rows."""
    import copy

    torch.manual_seed(0)
    model = MLP().eval()
    compiled, (code, *_) = run_and_get_code(
        lambda: fxopt.compile(model, torch.randn(1, 1, 64), passes="eliminate-dead-nodes,cast-linears-bf16{kernel=auto}"))
    assert "mkldnn._linear_pointwise" not in code and "extern_kernels.mm" not in code and "extern_kernels.addmm" not in code
    assert code.count("device='cpu', dtype=torch.bfloat16)") == 3
    assert compiled.report.pipeline.record("cast-linears-bf16").stats["gemv"] == 3
    rounded = copy.deepcopy(model)  # the same bf16 weights, multiplied out in fp32
    for linear in (rounded.up, rounded.down, rounded.head):
        linear.weight.data = linear.weight.data.to(torch.bfloat16).float()
    for batch in (1, 3):
        x = torch.randn(batch, 1, 64)
        torch.testing.assert_close(compiled(x), rounded(x), rtol=1e-4, atol=1e-5)
