"""native-attention: fxopt's AMX attention kernel against fp32 and ATen's bf16 flash kernel (heads read in place from a
fused q/k/v linear, grouped K/V heads, causal blocks, boolean and additive masks, a partial last block of queries, a
fully masked row), the pass's rewrite and what it leaves alone, and proof from Inductor's generated code that a bf16
self-attention block calls the kernel, under both of Inductor's wrappers."""
import re

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

import fxopt
from conftest import rel_err
from fxopt import native_kernels
from fxopt.testing import check_pass, filecheck
from test_cast_attention_bf16 import SelfAttention

NEG = torch.finfo(torch.float32).min
needs_amx = pytest.mark.skipif(native_kernels.amx_bf16() is not None,
                               reason=f"fxopt's prefill attention cannot run here: {native_kernels.amx_bf16()}")


def _case(name):
    """(q, k, v, mask, is_causal) in bf16, and the fp32 reference on the same bf16 values."""
    torch.manual_seed(0)
    if name == "encoder":  # MiniLM's heads, read in place from one q/k/v linear; Hugging Face's padding mask
        b, h, s, d = 2, 12, 128, 32
        qkv = (torch.randn(b, s, 3 * h * d) * 2).bfloat16()
        q, k, v = (t.view(b, s, h, d).transpose(1, 2) for t in qkv.split(h * d, -1))
        mask = torch.ones(b, 1, 1, s, dtype=torch.bool)
        mask[1, ..., 90:] = False
        return q, k, v, mask, False
    if name == "additive":
        q, k, v = (torch.randn(2, 4, 48, 32).bfloat16() for _ in range(3))
        mask = torch.zeros(2, 1, 48, 48)
        mask[0, ..., 30:] = NEG
        return q, k, v, mask + torch.randn(2, 1, 48, 48), False
    if name == "grouped causal":  # SmolLM2's groups of three, a last block of 5 queries
        q = torch.randn(1, 6, 37, 64).bfloat16()
        k, v = (torch.randn(1, 2, 37, 64).bfloat16() for _ in range(2))
        return q, k, v, None, True
    if name == "wide heads":
        q, k, v = (torch.randn(1, 2, 20, 128).bfloat16() for _ in range(3))
        return q, k, v, torch.randn(1, 2, 1, 20), False
    raise KeyError(name)


def _reference(q, k, v, mask, causal, dtype):
    group = q.shape[1] // k.shape[1]
    k, v = (t.repeat_interleave(group, 1).to(dtype) for t in (k, v))
    mask = mask if mask is None or mask.dtype == torch.bool else mask.to(dtype)
    return F.scaled_dot_product_attention(q.to(dtype), k, v, attn_mask=mask, is_causal=causal)


@needs_amx
@pytest.mark.parametrize("name", ["encoder", "additive", "grouped causal", "wide heads"])
def test_kernel_is_as_close_to_fp32_as_atens_bf16_attention(name):
    q, k, v, mask, causal = _case(name)
    out = native_kernels.prefill_attention(q, k, v, mask, is_causal=causal)
    exact = _reference(q, k, v, mask, causal, torch.float32)
    aten = _reference(q, k, v, mask, causal, torch.bfloat16)
    ours, theirs = (out.float() - exact).abs().max().item(), (aten.float() - exact).abs().max().item()
    assert ours <= 1.5 * theirs + 1e-3, (ours, theirs)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert out.transpose(1, 2).is_contiguous()  # laid out [batch, seq, heads, dim], as ATen's flash kernel lays it


@needs_amx
def test_a_fully_masked_row_gives_zeros():
    q, k, v = (torch.randn(1, 2, 20, 32).bfloat16() for _ in range(3))
    mask = torch.ones(1, 1, 20, 20, dtype=torch.bool)
    mask[..., 7, :] = False
    out = native_kernels.prefill_attention(q, k, v, mask)
    assert torch.equal(out[:, :, 7], torch.zeros_like(out[:, :, 7]))
    assert torch.isfinite(out.float()).all()


class BF16Attention(torch.nn.Module):
    def forward(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.18)


@needs_amx
def test_pass_rewrites_bf16_attention_and_leaves_the_rest_alone():
    q, k, v = (torch.randn(2, 2, 48, 32).bfloat16() for _ in range(3))
    mask = torch.ones(2, 1, 1, 48, dtype=torch.bool)
    result = check_pass("native-attention", BF16Attention(), q, k, v, mask, rtol=2e-2)
    assert result.stats == {"attentions": 1}
    filecheck(result.after, "CHECK: fxopt.prefill_attention(%q, %k, %v, %mask, 0.18, False) : bf16[")
    for why, args in [("not bf16", (q.float(), k.float(), v.float(), mask)),
                      ("head size not a multiple of 32", (q[..., :16], k[..., :16], v[..., :16], mask)),
                      ("one query", (q[:, :, :1], k, v, mask))]:
        result = check_pass("native-attention", BF16Attention(), *args)
        assert result.stats == {f"left alone ({why})": 1} and not result.changed


@needs_amx
def test_hugging_faces_all_true_table_is_dropped_from_the_mask():
    """``table[:, :, :seq, :] & padding[batch, 1, 1, seq]`` with an all-true table: the kernel reads the padding mask
    and broadcasts it itself, so Inductor writes no ``[batch, 1, seq, seq]`` mask per attention."""
    class TableMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.ones(1, 1, 64, 64, dtype=torch.bool))

        def forward(self, q, k, v, padding):
            s = q.shape[2]
            mask = self.table[:, :, :s, :s] & padding[:, None, None, :].bool()
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    q, k, v = (torch.randn(2, 2, 48, 32).bfloat16() for _ in range(3))
    padding = torch.ones(2, 48, dtype=torch.int64)
    padding[1, 40:] = 0
    result = check_pass("native-attention", TableMask(), q, k, v, padding, rtol=2e-2)
    assert result.stats == {"attentions": 1}
    call = next(line for line in result.after.splitlines() if "fxopt.prefill_attention(" in line)
    mask_arg = call.split("(")[1].split(",")[3].strip()
    assert re.search(rf"{mask_arg} = .* : bool\[batch, 1, 1, 48\]", result.after), result.after
    assert "table" not in result.after


def test_without_amx_attention_stays_atens(monkeypatch):
    monkeypatch.setattr(native_kernels, "amx_bf16", lambda: "this CPU has no AMX bf16 tiles")
    q, k, v = (torch.randn(2, 2, 48, 32).bfloat16() for _ in range(3))
    result = check_pass("native-attention", BF16Attention(), q, k, v, torch.ones(2, 1, 1, 48, dtype=torch.bool))
    assert not result.changed and "aten.scaled_dot_product_attention" in result.after
    assert any("no AMX" in note for note in result.diagnostics)


@needs_amx
@pytest.mark.parametrize("wrapper", ["python", "cpp"])
def test_inductor_calls_the_kernel_in_a_bf16_attention_block(wrapper, monkeypatch):
    monkeypatch.setenv("FXOPT_CPP_WRAPPER", "1" if wrapper == "cpp" else "0")
    torch.manual_seed(0)
    model, x = SelfAttention(width=128, heads=4).eval(), torch.randn(2, 64, 128)  # MiniLM's head size, 32
    compiled, (code, *_) = run_and_get_code(lambda: fxopt.compile(model, x, quantize="bf16"))
    assert "flash_attention" not in code, code
    if wrapper == "cpp":
        assert "inductor_entry_impl" in code and 'aoti_torch_call_dispatcher("fxopt::prefill_attention"' in code
    else:
        assert code.count("torch.ops.fxopt.prefill_attention.default(") == 1, code
    assert rel_err(compiled(x), model(x)) < 2e-2
