"""fuse-gelu-quantize-rows: the fused native kernel against the unfused arithmetic, the rewrite, where it is left
alone, and proof from Inductor's generated code that the int8 MLP calls the fused kernel instead of an erf loop."""
import pytest
import torch
from torch._inductor.utils import run_and_get_code

import fxopt
from conftest import MLP
from conftest import rel_err as _rel
from fxopt import native_kernels, onednn_int8
from fxopt.passes.quantize_dynamic_int8 import quantize_per_channel, quantize_per_token, scaled_row_sums
from fxopt.testing import check_pass, filecheck

pytestmark = [pytest.mark.skipif(not native_kernels.available("gelu_quantize_rows"),
                                 reason=f"no native build: {native_kernels.why_unavailable('gelu_quantize_rows')}"),
              pytest.mark.usefixtures("python_wrapper")]  # they read the code it generates


def _unfused(acc, zero_point, scale, colsum, bias):
    y = (acc - zero_point * colsum) * scale
    return quantize_per_token(torch.nn.functional.gelu(y if bias is None else y + bias))


@pytest.mark.parametrize("rows,cols,bias", [(64, 1536, True), (7, 77, False), (1, 16, True)])
def test_native_kernel_quantizes_what_the_unfused_ops_do(rows, cols, bias):
    """Codes within one step of the unfused ops' (the erf differs at fp32 rounding; a value on a rounding boundary
    may go the other way), scales and zero points to fp32 rounding; widths that are not a multiple of the
    vector width included."""
    torch.manual_seed(0)
    acc = torch.randn(rows, cols) * 40
    zero_point = torch.randint(0, 256, (rows, 1)).float()
    scale = torch.rand(rows, 1) * 0.02 + 1e-3
    colsum = torch.randn(cols)
    b = torch.randn(cols) if bias else None
    q, s, z = torch.ops.fxopt.gelu_quantize_rows(acc, zero_point, scale, colsum, b)
    q0, s0, z0 = _unfused(acc, zero_point, scale, colsum, b)
    assert q.dtype == torch.uint8 and q.shape == (rows, cols) and s.shape == z.shape == (rows, 1)
    assert (q.int() - q0.int()).abs().max() <= 1 and (q != q0).float().mean() < 1e-3
    assert torch.allclose(s, s0, rtol=1e-5) and torch.equal(z, z0)


class Int8GeluMLP(torch.nn.Module):
    """The graph ``quantize-dynamic-int8`` writes for an up projection, its GELU and the down projection's input,
    written out (so the pass's example needs no other pass); returns the down projection's dequantized input."""

    def __init__(self):
        super().__init__()
        onednn_int8.register_fake_prepack()  # so torch.export can trace the prepack
        torch.manual_seed(0)
        weight = torch.randn(32, 64) * 0.1
        q, scales = quantize_per_channel(weight)
        self.register_buffer("w_int8", q)
        self.register_buffer("w_scales", scales.float())
        self.register_buffer("w_colsum", scaled_row_sums(q, scales.float()))
        self.register_buffer("bias", torch.randn(32))

    def forward(self, x):
        q, scale, zero_point = torch.ops.fxopt.quantize_rows(x.view(-1, 64))
        packed = torch.ops.onednn.qlinear_prepack(self.w_int8, None)
        acc = torch.ops.onednn.qlinear_pointwise(q, 1.0, 0, packed, self.w_scales, None, None, 1.0, 0,
                                                 torch.float32, "none", [], "")
        y = (acc - zero_point * self.w_colsum) * scale + self.bias
        codes, row_scale, row_zero = torch.ops.fxopt.quantize_rows(torch.nn.functional.gelu(y))
        return (codes.float() - row_zero) * row_scale


def test_pass_fuses_the_epilogue_gelu_and_quantization():
    result = check_pass("fuse-gelu-quantize-rows", Int8GeluMLP().eval(), torch.randn(4, 10, 64), rtol=2e-2)
    assert result.stats["fused"] == 1
    filecheck(result.after, """
        CHECK: onednn.qlinear_pointwise
        CHECK-NEXT: fxopt.gelu_quantize_rows(%qlinear_pointwise, %getitem_2, %getitem_1, %w_colsum, %bias)
        CHECK-NOT: aten.gelu
        CHECK-NOT: fxopt.quantize_rows
    """)


class SharedGelu(torch.nn.Module):
    """The GELU's values are read twice (the int8 down projection and the output): nothing may be fused away."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(64, 128)
        self.down = torch.nn.Linear(128, 64)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.up(x))
        return self.down(h), h


def test_a_gelu_read_elsewhere_is_left_alone():
    torch.manual_seed(0)
    model, x = SharedGelu().eval(), torch.randn(4, 10, 64)
    compiled = fxopt.compile(model, x, passes="eliminate-dead-nodes,quantize-dynamic-int8,fuse-gelu-quantize-rows")
    assert "fused" not in compiled.report.pipeline.record("fuse-gelu-quantize-rows").stats
    assert all(_rel(a, b) < 5e-2 for a, b in zip(compiled(x), model(x)))


def test_inductor_calls_the_fused_kernel_in_an_int8_mlp():
    """In the int8 MLP, Inductor's code calls ``fxopt::gelu_quantize_rows`` once and computes no erf of its own;
    the output matches the unfused int8 graph's within what one quantization step moves, for any batch size."""
    torch.manual_seed(0)
    model, x = MLP(act=torch.nn.functional.gelu).eval(), torch.randn(4, 10, 64)
    unfused = fxopt.compile(model, x, passes="eliminate-dead-nodes,quantize-dynamic-int8")
    fused, (code, *_) = run_and_get_code(lambda: fxopt.compile(
        model, x, passes="eliminate-dead-nodes,quantize-dynamic-int8,fuse-gelu-quantize-rows"))
    assert code.count("torch.ops.fxopt.gelu_quantize_rows.default(") == 1
    assert code.count("torch.ops.fxopt.quantize_rows.default(") == 2  # the up and the head projections' inputs
    assert ".erf()" not in code and "std::erf(" not in code
    for batch in (x, torch.randn(7, 10, 64)):
        assert _rel(fused(batch), unfused(batch)) < 1e-2 and _rel(fused(batch), model(batch)) < 5e-2


def test_int8_mode_runs_the_pass_and_bf16_does_not():
    torch.manual_seed(0)
    model, x = MLP(act=torch.nn.functional.gelu).eval(), torch.randn(4, 10, 64)
    int8 = fxopt.compile(model, x, quantize="int8")
    assert int8.report.pipeline.record("fuse-gelu-quantize-rows").stats["fused"] == 1
    bf16 = fxopt.compile(model, x, quantize="bf16")
    assert "fuse-gelu-quantize-rows" not in [r.name for r in bf16.report.pipeline.records]
