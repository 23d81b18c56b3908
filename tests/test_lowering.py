"""What Inductor makes of fxopt's graphs: GEMM epilogues fused (shown in the generated code)."""
import pytest
import torch
from torch._inductor.utils import run_and_get_code

import fxopt
from fxopt import gemm_backends


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(64, 256)
        self.down = torch.nn.Linear(256, 64)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x))) + x


def _code(passes):
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(4, 16, 64)
    compiled, (code, *_) = run_and_get_code(lambda: fxopt.compile(model, x, passes=passes))
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    return code


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")
def test_onednn_gemms_carry_bias_activation_and_residual():
    code = _code("eliminate-dead-nodes,select-gemm-backend{backend=onednn}")
    assert code.count("torch.ops.mkldnn._linear_pointwise.default(") == 1
    assert "'gelu'" in code  # linear + bias + gelu: one oneDNN call
    assert code.count("torch.ops.mkldnn._linear_pointwise.binary(") == 1 and "'add'" in code  # + residual
    assert "cpp_fused" not in code  # no separate pointwise kernels left


@pytest.mark.skipif(not gemm_backends.available(), reason="this torch build lacks MKL or oneDNN")
def test_mkl_gemms_get_one_fused_epilogue_kernel_each():
    code = _code("eliminate-dead-nodes,select-gemm-backend{backend=mkl}")
    assert code.count("torch.ops.mkl._mkl_linear.default(") == 2
    assert code.count("async_compile.cpp_pybinding") == 2  # bias+gelu, then bias+residual add
