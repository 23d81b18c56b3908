"""grouped-query-attention: attention over repeated K/V heads reads the K/V heads in place (``enable_gqa``), with
the same result bit for bit, and Inductor's code then passes the un-repeated K/V to the flash kernel."""
import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import fxopt
from conftest import repeat_kv
from fxopt.testing import check_pass

pytestmark = pytest.mark.usefixtures("python_wrapper")  # one test reads the code it generates


def gqa_prefill(q, keys, values, mask):
    return torch.nn.functional.scaled_dot_product_attention(q, repeat_kv(keys, 3), repeat_kv(values, 3), mask,
                                                            scale=0.125)


class GQAPrefill(torch.nn.Module):
    def forward(self, q, keys, values, mask):
        return gqa_prefill(q, keys, values, mask)


def _inputs(batch=2, seq=12, dtype=torch.float32):
    torch.manual_seed(0)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    mask = causal.expand(batch, 1, seq, seq).clone()
    mask[0, ..., :3] = False  # left padding in the first sequence
    mask[0, :, :3, 0] = True  # ... whose padded rows still see one slot
    return (torch.randn(batch, 9, seq, 64, dtype=dtype), torch.randn(batch, 3, seq, 64, dtype=dtype),
            torch.randn(batch, 3, seq, 64, dtype=dtype), mask)


def test_attention_over_repeated_heads_takes_the_kv_heads_with_enable_gqa():
    result = check_pass("grouped-query-attention", gqa_prefill, *_inputs(), rtol=0)
    assert result.stats == {"attentions": 1}
    assert "aten.scaled_dot_product_attention(%q, %keys, %values, %mask, scale=0.125, enable_gqa=True)" \
        in result.after, result.after
    assert "aten.expand" not in result.after and "aten.reshape" not in result.after
    assert result.max_rel_error == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_atens_grouped_attention_is_the_repeated_one_bit_for_bit(dtype):
    """What the pass relies on: query head h of a group of 3 reads K/V head h // 3, as repeat_kv puts it (SmolLM2's
    head counts and head dim)."""
    q, k, v, mask = _inputs(dtype=dtype)
    grouped = torch.nn.functional.scaled_dot_product_attention(q, k, v, mask, scale=0.125, enable_gqa=True)
    assert torch.equal(grouped, gqa_prefill(q, k, v, mask))


def test_inductor_hands_the_flash_kernel_the_unrepeated_keys_and_values():
    q, k, v, mask = _inputs()
    compiled, (code, *_) = run_and_get_code(lambda: fxopt.compile(GQAPrefill(), (q, k, v, mask)))
    calls = re.findall(r"_scaled_dot_product_flash_attention_for_cpu\.default\((\w+), (\w+), (\w+)", code)
    assert calls == [("arg0_1", "arg1_1", "arg2_1")], code  # the graph's own inputs: K/V with their 3 heads
    assert "clone" not in code and "expand" not in code, code
    assert torch.equal(compiled(q, k, v, mask), gqa_prefill(q, k, v, mask))


def test_keys_and_values_repeated_differently_are_left_alone():
    def mismatched(q, keys, values, mask):  # 6 query heads: keys 2 × 3, values 3 × 2
        return torch.nn.functional.scaled_dot_product_attention(q, repeat_kv(keys, 3), repeat_kv(values, 2), mask)

    q, k, v, mask = _inputs()
    result = check_pass("grouped-query-attention", mismatched, q[:, :6], k[:, :2], v, mask)
    assert result.stats == {"left alone (groups differ)": 1}
    assert "enable_gqa" not in result.after
