"""pack-linears-bf16: the rewritten graph (packing node, fp32 bias and GELU in oneDNN's epilogue), where the GELU
is left alone, proof from Inductor's code that oneDNN gets the packed weight as an input with GELU fused, and
that a bf16 compile now lowers unfrozen, so that the caches serve the next one."""
import re

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

import fxopt
from conftest import rel_err as _rel
from fxopt import onednn_bf16
from fxopt.testing import check_pass, filecheck
from fxopt.unfrozen_lowering import freezing_reason

pytestmark = [pytest.mark.skipif(not onednn_bf16.available(), reason="no oneDNN in this torch build"),
              pytest.mark.usefixtures("python_wrapper")]  # they read its generated code


class Bf16MLP(torch.nn.Module):
    """The form ``cast-linears-bf16`` writes: bf16 linears on bf16 constants, cast back, fp32 bias added after.
    ``gelu_feeds_fp32`` also adds the GELU's result to the output in fp32."""

    def __init__(self, width=32, hidden=64, gelu_feeds_fp32=False):
        super().__init__()
        self.gelu_feeds_fp32 = gelu_feeds_fp32
        self.register_buffer("fc1", (torch.randn(hidden, width) / width ** 0.5).bfloat16())
        self.register_buffer("fc2", (torch.randn(width, hidden) / hidden ** 0.5).bfloat16())
        self.register_buffer("fc1_bias", torch.randn(hidden) * 0.1)

    def forward(self, x):
        h = F.gelu(F.linear(x.to(torch.bfloat16), self.fc1).float() + self.fc1_bias)
        y = F.linear(h.to(torch.bfloat16), self.fc2).float()
        return (y, h) if self.gelu_feeds_fp32 else y


def test_bias_and_gelu_move_into_the_packed_linear():
    torch.manual_seed(0)
    result = check_pass("pack-linears-bf16", Bf16MLP(), torch.randn(8, 32), rtol=2e-2)
    assert result.stats == {"linears": 2, "fp32 biases": 1, "GELUs": 1}
    filecheck(result.after, """
        CHECK: mkldnn._reorder_linear_weight(%fc1, 8) : bf16[64, 32]
        CHECK-NEXT: mkldnn._linear_pointwise(%to, %_reorder_linear_weight_default, %fc1_bias, 'gelu', [], 'none') : bf16[batch, 64]
        CHECK: mkldnn._reorder_linear_weight(%fc2, 8)
        CHECK-NEXT: mkldnn._linear_pointwise(%_linear_pointwise_default, %_reorder_linear_weight_default_1, None, 'none', [], '')
        CHECK-NOT: aten.gelu
        CHECK-NOT: aten.linear
    """)


def test_a_gelu_whose_result_is_also_used_in_fp32_stays_fp32():
    """Rounding the GELU to bf16 would change the fp32 use: only the bias moves into the epilogue."""
    torch.manual_seed(0)
    result = check_pass("pack-linears-bf16", Bf16MLP(gelu_feeds_fp32=True), torch.randn(8, 32), rtol=2e-2)
    assert result.stats == {"linears": 2, "fp32 biases": 1}
    filecheck(result.after, """
        CHECK: mkldnn._linear_pointwise(%to, %_reorder_linear_weight_default, %fc1_bias, 'none', [], '') : bf16[batch, 64]
        CHECK-NEXT: aten._to_copy(%_linear_pointwise_default, dtype=float32) : f32[batch, 64]
        CHECK-NEXT: aten.gelu(
    """)


def test_options_turn_the_epilogue_off():
    torch.manual_seed(0)
    options = fxopt.passes.pack_linears_bf16.options(fuse_bias=False)
    result = check_pass("pack-linears-bf16", Bf16MLP(), torch.randn(8, 32), options=options, rtol=2e-2)
    assert result.stats == {"linears": 2}
    assert "aten.gelu" in result.after and "aten.add" in result.after


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(64, 256), torch.nn.Linear(256, 64)

    def forward(self, x):
        return self.down(F.gelu(self.up(x))) + x


def test_inductor_calls_onednn_on_the_lifted_packed_weight_with_gelu_fused():
    """The bf16 graph lowers unfrozen; oneDNN gets the packed weights as inputs (no copy kernel reads them) and
    applies the GELU itself."""
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(4, 16, 64)
    compiled, (code, *_) = run_and_get_code(lambda: fxopt.compile(model, x, quantize="bf16"))
    assert freezing_reason(compiled.graph_module) is None
    calls = re.findall(r"mkldnn\._linear_pointwise\.default\((\w+), (\w+), (\w+), '(\w+)'", code)
    assert [c[3] for c in calls] == ["gelu", "none"], code
    for _, weight, _, _ in calls:  # each weight is one of the compiled code's arguments, read by oneDNN only
        assert re.search(rf"\b{weight}\b[^\n]*= args", code) and not re.search(rf"cpp_fused\w*\([^\n]*\b{weight}\b",
                                                                               code), (weight, code)
    assert ".erf()" not in code  # no GELU kernel of Inductor's
    assert _rel(compiled(x), model(x)) < 2e-2


def test_a_second_bf16_compile_loads_the_compiled_code_from_the_caches(tmp_path, monkeypatch):
    """Before this pass a bf16 graph needed freezing, which AOTAutograd's cache refuses."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(4, 16, 64)
    first = fxopt.compile(model, x, quantize="bf16")
    hits = counters["aot_autograd"]["autograd_cache_hit"]
    second = fxopt.compile(model, x, quantize="bf16")
    assert counters["aot_autograd"]["autograd_cache_hit"] == hits + 1
    torch.testing.assert_close(second(x), first(x), rtol=0, atol=0)
