"""cast-attention-bf16: the rewritten graph, its accuracy, proof from Inductor's code that the flash attention
kernel gets bf16 Q/K/V, and that ``quantize="bf16"`` adds the pass only where bf16 is native."""
import dataclasses
import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import fxopt
import fxopt.quantize
from conftest import rel_err as _rel
from fxopt.testing import check_pass, filecheck

pytestmark = pytest.mark.usefixtures("python_wrapper")  # they read the code it generates

NEG = torch.finfo(torch.float32).min  # what Hugging Face models put in an additive mask: not finite in bf16


class SDPA(torch.nn.Module):
    def forward(self, q, k, v, mask):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _qkv(batch=2, heads=4, seq=6, dim=8):
    torch.manual_seed(0)
    return [torch.randn(batch, heads, seq, dim) for _ in range(3)]


class SelfAttention(torch.nn.Module):
    """Projections around SDPA, so that ``quantize="bf16"`` has linears to plan."""

    def __init__(self, width=64, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)

    def forward(self, x):
        b, s, w = x.shape
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(a.transpose(1, 2).reshape(b, s, w))


@pytest.mark.parametrize("mask_kind", ["additive", "boolean"])
def test_attention_runs_on_bf16_qkv_and_keeps_the_mask_as_it_was(mask_kind):
    """Q, K and V become bf16, the output fp32 again; the mask is not cast (an fp32 mask holding fp32's lowest
    value would round to -inf in bf16, and a fully masked row would turn to NaN)."""
    q, k, v = _qkv()
    keep = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    keep[1, ..., 4:] = False
    keep[0, ..., 2, :] = False  # a fully masked row: fp32's lowest value gives a uniform row, not NaN
    mask = keep if mask_kind == "boolean" else torch.zeros(2, 1, 6, 6).masked_fill(~keep, NEG)
    dtype = "bool" if mask_kind == "boolean" else "f32"
    result = check_pass("cast-attention-bf16", SDPA(), q, k, v, mask, rtol=2e-2)
    assert result.stats["attentions"] == 1
    filecheck(result.after, f"""
        CHECK: %mask = input : {dtype}[
        CHECK: aten._to_copy(%q, dtype=bfloat16) : bf16[
        CHECK: aten._to_copy(%k, dtype=bfloat16) : bf16[
        CHECK: aten._to_copy(%v, dtype=bfloat16) : bf16[
        CHECK-NEXT: aten.scaled_dot_product_attention(%_to_copy_default, %_to_copy_default_1, %_to_copy_default_2, %mask) : bf16[
        CHECK-NEXT: aten._to_copy(%scaled_dot_product_attention_default, dtype=float32) : f32[
        CHECK-NOT: aten._to_copy(%mask
    """)
    if mask_kind == "additive":
        out = fxopt.compile(SDPA(), (q, k, v, mask), passes="cast-attention-bf16")(q, k, v, mask)
        assert torch.isfinite(out).all()


def test_inductor_runs_flash_attention_on_bf16_buffers():
    q, k, v = _qkv(seq=32, dim=16)
    mask = torch.ones(2, 1, 32, 32, dtype=torch.bool).tril()
    compiled, (code, *_) = run_and_get_code(
        lambda: fxopt.compile(SDPA(), (q, k, v, mask), passes="eliminate-dead-nodes,cast-attention-bf16"))
    calls = re.findall(r"_scaled_dot_product_flash_attention_for_cpu\.default\((\w+), (\w+), (\w+)", code)
    assert len(calls) == 1, code
    for buf in calls[0]:  # each of Q, K, V is a buffer Inductor allocated as bf16
        assert re.search(rf"\b{buf} = empty_strided_cpu\([^\n]*torch\.bfloat16\)", code), (buf, code)
    assert _rel(compiled(q, k, v, mask), SDPA()(q, k, v, mask)) < 2e-2


@pytest.mark.parametrize("mode", ["bf16", "auto"])
@pytest.mark.parametrize("native", [True, False])
def test_bf16_and_auto_cast_attention_only_where_bf16_is_native(native, mode, monkeypatch):
    """Where bf16 is emulated (its measured rate below fp32's), bf16 attention would be slower than fp32's.
    ``"auto"`` casts it before its planner, whose simulations then include it."""
    peaks = fxopt.quantize.machine_peaks()
    bf16 = 2 * peaks.fp32_flops if native else peaks.fp32_flops / 2
    monkeypatch.setattr(fxopt.quantize, "machine_peaks", lambda: dataclasses.replace(peaks, bf16_flops=bf16))
    torch.manual_seed(0)
    model, x = SelfAttention().eval(), torch.randn(2, 16, 64)
    compiled = fxopt.compile(model, x, quantize=mode)
    names = [r.name for r in compiled.report.pipeline.records]
    assert ("cast-attention-bf16" in names) == native
    assert "cast-linears-bf16" in names
    if native:
        assert names.index("cast-attention-bf16") < names.index("plan-precision")
    assert _rel(compiled(x), model(x)) < 2e-2



def test_the_int8_modes_keep_fp32_attention(monkeypatch):
    """bf16 attention made MiniLM's int8-static faster but SmolLM2's int8-static plan miss its budget on held-out
    text (+2.51% perplexity against +1.52% with fp32 attention)."""
    peaks = fxopt.quantize.machine_peaks()
    monkeypatch.setattr(fxopt.quantize, "machine_peaks",
                        lambda: dataclasses.replace(peaks, bf16_flops=2 * peaks.fp32_flops))
    assert fxopt.quantize.bf16_attention_pays("bf16") and fxopt.quantize.bf16_attention_pays("auto")
    assert not fxopt.quantize.bf16_attention_pays("int8") and not fxopt.quantize.bf16_attention_pays("int8-static")
    torch.manual_seed(0)
    model, x = SelfAttention().eval(), torch.randn(2, 16, 64)
    compiled = fxopt.compile(model, x, quantize="int8-static", calibration=[torch.randn(2, 16, 64)])
    assert "cast-attention-bf16" not in [r.name for r in compiled.report.pipeline.records]
