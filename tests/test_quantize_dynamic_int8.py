"""quantize-dynamic-int8 and cast-linears-bf16: the rewritten graph, its accuracy, and proof from Inductor's
generated code that oneDNN's int8 GEMM (with a weight packed once) and the bf16 GEMM run."""
import pytest
import torch
from torch._inductor.utils import run_and_get_code

import fxopt
from conftest import MLP as GeluMLP
from conftest import rel_err as _rel
from fxopt import native_kernels
from fxopt.passes.quantize_dynamic_int8 import quantize_per_token, quantize_rows
from fxopt.rewriter import Rewriter
from fxopt.testing import check_pass, filecheck

pytestmark = pytest.mark.usefixtures("python_wrapper")  # they read the code it generates


def MLP():
    return GeluMLP(act=torch.nn.functional.gelu)


def _run_quantize_rows(x):
    """The graph :func:`quantize_rows` writes, run eagerly on ``x``."""
    gm = torch.fx.symbolic_trace(torch.nn.Identity())
    graph = gm.graph
    placeholder = next(iter(graph.nodes))
    placeholder.meta["val"] = torch.empty(x.shape)
    rw = Rewriter(gm)
    out_node = graph.find_nodes(op="output")[0]
    out_node.args = (quantize_rows(rw, placeholder, out_node),)
    gm.recompile()
    return gm(x)


def test_per_token_quantization_round_trips_within_half_a_step():
    """Rows of very different ranges, one all-negative and one all-zero: each row gets its own scale and zero
    point, so every element comes back within half of its own row's step."""
    x = torch.randn(5, 40) * torch.tensor([0.01, 1.0, 30.0, 1.0, 0.0])[:, None]
    x[3] = -x[3].abs() - 1
    q, scale, zp = _run_quantize_rows(x)
    assert q.dtype == torch.uint8
    back = (q.float() - zp) * scale
    assert ((back - x).abs() <= scale / 2 + 1e-6).all()
    assert torch.equal(back[4], torch.zeros(40))


def _edge_rows():
    torch.manual_seed(0)
    x = torch.randn(9, 77) * torch.tensor([0.01, 1.0, 30.0, 1.0, 0.0, 1e-12, 5.0, 1.0, 1.0])[:, None]
    x[3] = -x[3].abs() - 1  # all negative
    x[6] = x[6].abs()  # all positive
    step = (x[7].amax() - x[7].amin().clamp_max(0)) / 255
    x[7, :5] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5]) * step  # near rounding ties
    return x


@pytest.mark.skipif(not native_kernels.available("quantize_rows"),
                    reason=f"no native build: {native_kernels.why_unavailable('quantize_rows')}")
def test_native_quantize_rows_is_bit_for_bit_the_aten_form(monkeypatch):
    """``fxopt::quantize_rows`` (the graph's op where the native kernels build) and the aten ops (elsewhere) give
    the same codes, scales and zero points, bit for bit, on rows of every kind and a width that is not a multiple
    of the vector width; and the pass's graph in either form computes them."""
    for x in (_edge_rows(), torch.randn(256, 576) * 4, torch.randn(3, 16)):
        native = quantize_per_token(x)
        with monkeypatch.context() as m:
            m.setattr(native_kernels, "available", lambda kernel=None: False)
            aten_form = quantize_per_token(x)
            graph_form = _run_quantize_rows(x)
        assert all(torch.equal(a, b) for a, b in zip(native, aten_form))
        assert all(torch.equal(a, b) for a, b in zip(native, graph_form))
        assert all(torch.equal(a, b) for a, b in zip(native, _run_quantize_rows(x)))


@pytest.mark.skipif(not native_kernels.available("quantize_rows"),
                    reason=f"no native build: {native_kernels.why_unavailable('quantize_rows')}")
def test_int8_graph_computes_a_gelu_once_per_element():
    """After a GELU, Inductor's own fused quantization computes the GELU's erf twice per element (once for the
    row's range, once to quantize); with ``fxopt::quantize_rows`` its generated code holds one ``erf`` per GELU."""
    torch.manual_seed(0)
    model, x = MLP().eval(), torch.randn(4, 10, 64)
    compiled, (code, *_) = run_and_get_code(
        lambda: fxopt.compile(model, x, passes="eliminate-dead-nodes,quantize-dynamic-int8"))
    assert code.count("torch.ops.fxopt.quantize_rows.default(") == 3  # one per linear
    assert code.count(".erf()") + code.count("std::erf(") == 1
    assert _rel(compiled(x), model(x)) < 5e-2


def test_pass_rewrites_linears_to_the_onednn_int8_linear():
    torch.manual_seed(0)
    opts = fxopt.passes.quantize_dynamic_int8.make_options(skip=["head"])
    result = check_pass("quantize-dynamic-int8", MLP().eval(), torch.randn(4, 10, 64), options=opts, rtol=5e-2)
    assert result.stats["linears"] == 2 and result.stats["kept fp32 (skip)"] == 1
    filecheck(result.after, """
        CHECK: %_fxopt_linear_int8 = const : i8[256, 64]
        CHECK-NEXT: %_fxopt_linear_scales = const : f32[256]
        CHECK-NEXT: %_fxopt_linear_colsum = const : f32[256]
        CHECK: fxopt.quantize_rows(%view_default) : (u8[10*batch, 64], f32[10*batch, 1], f32[10*batch, 1])
        CHECK: onednn.qlinear_prepack(%_fxopt_linear_int8, None)
        CHECK-NEXT: onednn.qlinear_pointwise(%getitem, 1.0, 0, %qlinear_prepack_default, %_fxopt_linear_scales
        CHECK-NEXT: aten.mul.Tensor(%getitem_2, %_fxopt_linear_colsum)
        CHECK-NEXT: aten.sub.Tensor(%qlinear_pointwise_default, %mul_tensor)
        CHECK-NEXT: aten.mul.Tensor(%sub_tensor, %getitem_1)
        CHECK-NEXT: aten.add.Tensor(%mul_tensor_1, %up.bias)
        CHECK: aten.linear(%view_default_3, %head.weight, %head.bias) : f32[batch, 10, 32]
    """)
    assert 1e-4 < result.max_rel_error < 5e-2  # lossy, by about what 8-bit activations and weights cost


def test_inductor_runs_onednn_int8_gemms_with_weights_packed_once():
    torch.manual_seed(0)
    model, x = MLP().eval(), torch.randn(4, 10, 64)
    compiled, (code, *_) = run_and_get_code(
        lambda: fxopt.compile(model, x, passes="eliminate-dead-nodes,quantize-dynamic-int8"))
    calls = [line for line in code.splitlines() if "= torch.ops.onednn.qlinear_pointwise" in line]
    assert len(calls) == 3  # the int8 GEMM, on every call
    assert not any("_frozen_param" in line for line in calls)  # ... on weights packed once, passed as inputs
    assert "= torch.ops.onednn.qlinear_prepack" not in code  # so nothing packs at run time
    assert not any("frozen into" in note for note in compiled.report.notes)  # so Inductor's caches serve the next compile
    assert "mkldnn._linear_pointwise" not in code and "extern_kernels.addmm" not in code  # no fp32 GEMM left
    assert _rel(compiled(x), model(x)) < 5e-2
    x2 = torch.randn(7, 10, 64)  # another batch size: the same compiled code
    assert _rel(compiled(x2), model(x2)) < 5e-2


def test_a_second_int8_compile_loads_from_the_caches_and_runs_its_own_weights(tmp_path, monkeypatch):
    """The packed int8 weights are inputs of the compiled code, not constants in it: the caches key on the graph
    and the shapes, so a model with other weights loads the same code and runs with its own weights."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    spec = "eliminate-dead-nodes,quantize-dynamic-int8"
    x = torch.randn(4, 10, 64)
    torch.manual_seed(0)
    first_model, second_model = MLP().eval(), MLP().eval()
    first = fxopt.compile(first_model, x, passes=spec)
    hits = counters["aot_autograd"]["autograd_cache_hit"]
    second = fxopt.compile(second_model, x, passes=spec)
    assert counters["aot_autograd"]["autograd_cache_hit"] == hits + 1
    assert _rel(second(x), second_model(x)) < 5e-2 and _rel(first(x), first_model(x)) < 5e-2
    assert _rel(second_model(x), first_model(x)) > 0.5  # two different models, each run on its own weights


def test_bf16_pass_and_its_gemm_in_inductor():
    torch.manual_seed(0)
    model, x = MLP().eval(), torch.randn(4, 10, 64)
    result = check_pass("cast-linears-bf16", model, x, rtol=2e-2)
    assert result.stats["linears"] == 3
    filecheck(result.after, """
        CHECK: %_fxopt_linear_bf16 = const : bf16[256, 64]
        CHECK: aten._to_copy(%view_default, dtype=bfloat16) : bf16[10*batch, 64]
        CHECK-NEXT: aten.linear(%_to_copy_default, %_fxopt_linear_bf16) : bf16[10*batch, 256]
        CHECK-NEXT: aten._to_copy(%linear_default, dtype=float32) : f32[10*batch, 256]
        CHECK-NEXT: aten.add.Tensor(%_to_copy_default_1, %up.bias)
        CHECK: aten.gelu
    """)
    compiled, (code, *_) = run_and_get_code(
        lambda: fxopt.compile(model, x, passes="eliminate-dead-nodes,cast-linears-bf16"))
    assert code.count("torch.ops.mkldnn._linear_pointwise.default(") == 3  # oneDNN, packed bf16 weights
    assert "torch.bfloat16" in code
    assert _rel(compiled(x), model(x)) < 2e-2
