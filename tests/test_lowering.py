"""What Inductor makes of fxopt's graphs: GEMM epilogues fused (shown in the generated code), weights frozen only
where the graph needs it, so that a second compile loads the compiled code from the caches."""
import pytest
import torch
from torch._inductor.utils import run_and_get_code

import fxopt
from fxopt import gemm_backends
from fxopt.unfrozen_lowering import freezing_reason

pytestmark = pytest.mark.usefixtures("python_wrapper")  # they read the code it generates


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


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")
def test_onednn_on_the_plain_weight_lowers_unfrozen_with_its_epilogues():
    """The weights become inputs of the compiled code, and oneDNN still carries bias, gelu and the residual."""
    code = _code("eliminate-dead-nodes,select-gemm-backend{backend=onednn-plain}")
    assert "'gelu'" in code and "torch.ops.mkldnn._linear_pointwise.binary(" in code and "'add'" in code
    assert "_frozen_param" not in code and "cpp_fused" not in code


def _block_graph(passes):
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(4, 16, 64)
    return fxopt.compile(model, x, passes=passes, backend="eager").graph_module


@pytest.mark.skipif(not gemm_backends.available(), reason="this torch build lacks MKL or oneDNN")
def test_freezing_is_kept_where_the_graph_needs_it():
    assert freezing_reason(_block_graph("select-gemm-backend{backend=onednn-plain}")) is None
    assert freezing_reason(_block_graph("select-gemm-backend{backend=mkl}")) is None  # MKL's packing, as plain bytes
    assert "packs its weight only when frozen" in freezing_reason(_block_graph("eliminate-dead-nodes"))
    gm = _block_graph("select-gemm-backend{backend=onednn-plain}")
    gm.register_buffer("packed", torch.randn(8, 8).to_mkldnn())
    with gm.graph.inserting_before(next(iter(gm.graph.find_nodes(op="output")))):
        gm.graph.get_attr("packed")
    assert "packed for oneDNN or MKL" in freezing_reason(gm)


def test_a_computation_on_weights_alone_is_left_to_freezing():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(8, 8))

        def forward(self, x):
            return x @ (self.w * 2).t()

    gm = fxopt.compile(Scaled().eval(), torch.randn(2, 8), passes="eliminate-dead-nodes", backend="eager").graph_module
    assert "computes from weights alone" in freezing_reason(gm)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")
def test_a_second_compile_loads_the_compiled_code_from_the_caches(tmp_path, monkeypatch):
    """What makes a warm start cheap: with the weights as inputs, AOTAutograd's and Inductor's caches both hit."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(4, 16, 64)
    spec = "eliminate-dead-nodes,select-gemm-backend{backend=onednn-plain}"
    first = fxopt.compile(model, x, passes=spec)
    hits = counters["aot_autograd"]["autograd_cache_hit"]
    second = fxopt.compile(model, x, passes=spec)
    assert counters["aot_autograd"]["autograd_cache_hit"] == hits + 1
    assert any("not frozen" in note for note in second.report.notes)
    torch.testing.assert_close(second(x), first(x), rtol=0, atol=0)
    torch.testing.assert_close(second(x), model(x), rtol=1e-5, atol=1e-5)
