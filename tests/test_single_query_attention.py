"""single-query-attention: one query per sequence (a decode step) attends over the un-repeated K/V heads, on fxopt's
native kernel or spelled out in ATen ops; other attention is left alone."""
import pytest
import torch

import fxopt
from conftest import repeat_kv
from fxopt import native_kernels
from fxopt.passes.single_query_attention import SingleQueryOptions
from fxopt.testing import check_pass

pytestmark = pytest.mark.usefixtures("python_wrapper")  # they read the code it generates

needs_native = pytest.mark.skipif(not native_kernels.available(),
                                  reason=f"no native build: {native_kernels.why_unavailable()}")


def gqa_step(q, keys, values, mask):
    return torch.nn.functional.scaled_dot_product_attention(q, repeat_kv(keys, 2), repeat_kv(values, 2), mask,
                                                            scale=0.35)


def _gqa_inputs():
    torch.manual_seed(0)
    mask = torch.zeros(1, 1, 1, 16, dtype=torch.bool)
    mask[..., :11] = True
    return torch.randn(1, 4, 1, 8), torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8), mask


@needs_native
def test_one_query_over_repeated_heads_runs_on_the_native_kernel_on_the_kv_heads():
    result = check_pass("single-query-attention", gqa_step, *_gqa_inputs())
    assert result.stats == {"attentions (native kernel)": 1}
    assert "fxopt.decode_attention(%q, %keys, %values, %mask, 0.35)" in result.after
    assert "scaled_dot_product_attention" not in result.after and "aten.expand" not in result.after


def test_spelled_out_it_groups_the_query_heads_of_each_kv_head():
    result = check_pass("single-query-attention", gqa_step, *_gqa_inputs(), options=SingleQueryOptions(native=False))
    assert result.stats == {"attentions": 1}
    assert "scaled_dot_product_attention" not in result.after and "aten.expand" not in result.after
    assert "f32[2, 2, batch, 16]" in result.after  # scores per K/V head and its group of query heads, heads first


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_native), False])
def test_an_additive_mask_per_head_and_no_grouping(native):
    torch.manual_seed(0)

    def mha_step(q, keys, values, mask):
        return torch.nn.functional.scaled_dot_product_attention(q, keys, values, mask)

    result = check_pass("single-query-attention", mha_step, torch.randn(1, 4, 1, 16), torch.randn(1, 4, 16, 16),
                        torch.randn(1, 4, 16, 16), torch.randn(1, 4, 1, 16), options=SingleQueryOptions(native=native))
    assert result.stats == {"attentions (native kernel)" if native else "attentions": 1}


@needs_native
def test_the_native_kernel_matches_sdpa_and_gives_zeros_where_every_slot_is_masked():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 6, 1, 64), torch.randn(3, 2, 40, 64), torch.randn(3, 2, 40, 64)
    mask = torch.rand(3, 1, 1, 40) > 0.3
    mask[2] = False
    out = native_kernels.decode_attention(q, k, v, mask, 0.125)
    ref = torch.nn.functional.scaled_dot_product_attention(q[:2], repeat_kv(k, 3)[:2], repeat_kv(v, 3)[:2], mask[:2],
                                                           scale=0.125)
    torch.testing.assert_close(out[:2], ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[2], torch.zeros_like(out[2]))


def test_attention_of_many_queries_is_left_alone():
    result = check_pass("single-query-attention", gqa_step, torch.randn(1, 4, 6, 8),
                        torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8), torch.ones(1, 1, 6, 16, dtype=torch.bool))
    assert not result.changed and "scaled_dot_product_attention" in result.after


@needs_native
def test_a_decode_graph_attends_on_the_native_kernel(tiny_llama):
    """The decode-step graph of a grouped-query Llama calls the kernel from Inductor's code, with no SDPA and no
    repeated cache; the prefill graph keeps SDPA; the generated tokens are eager's."""
    from torch._inductor.utils import run_and_get_code

    ids = torch.tensor([[1, 5, 9, 17, 33, 2, 8]])
    compiled, codes = run_and_get_code(lambda: fxopt.compile_generator(tiny_llama, ids, max_cache_len=32))
    decode_code = next(c for c in codes if "fxopt.decode_attention" in c)
    assert decode_code.count("torch.ops.fxopt.decode_attention.default(") == 2
    assert "scaled_dot_product" not in decode_code
    assert compiled.graphs.decode.report.pipeline.record("single-query-attention").stats == {
        "attentions (native kernel)": 2}
    assert not compiled.graphs.prefill.report.pipeline.record("single-query-attention").changed
    expected = tiny_llama.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(compiled.generate(ids, max_new_tokens=12), expected)
