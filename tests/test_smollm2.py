"""fxopt.compile on the real SmolLM2-135M (Llama): logits and greedy generation equal eager's."""
import pytest
import torch

import fxopt
from conftest import rel_err


@pytest.fixture(scope="module")
def smollm2_compiled(smollm2):
    return fxopt.compile(smollm2.model, smollm2.inputs(1, 64))


@pytest.mark.slow
def test_smollm2_logits_match_eager(smollm2, smollm2_compiled):
    with torch.no_grad():
        for batch, seq in ((1, 64), (2, 100), (1, 7)):
            inputs = smollm2.inputs(batch, seq)
            out, ref = smollm2_compiled(**inputs), smollm2.model(**inputs)
            assert type(out).__name__ == "CausalLMOutputWithPast"
            assert rel_err(out.logits, ref.logits) < 1e-4, (batch, seq)
            assert torch.equal(out.logits.argmax(-1), ref.logits.argmax(-1))


PROMPTS = ("What is the capital of France?", "Write a short poem about rivers.", "Who wrote Hamlet?",
           "Explain photosynthesis in one sentence.", "List three prime numbers.")


@pytest.mark.slow
def test_smollm2_generate_gives_eagers_greedy_tokens(smollm2, smollm2_compiled):
    """The KV-cache prefill and decode graphs give eager's greedy tokens, on 5 prompts."""
    tok = smollm2.tokenizer
    for question in PROMPTS:
        min_new = 0 if "France" in question else 32
        prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
        kwargs = dict(max_new_tokens=32, min_new_tokens=min_new, do_sample=False)
        ref = smollm2.model.generate(**prompt, **kwargs)
        out = smollm2_compiled.generate(**prompt, **kwargs)
        assert torch.equal(out, ref)
        if min_new:
            assert out.shape[1] - prompt["input_ids"].shape[1] == 32
        else:
            answer = tok.decode(out[0, prompt["input_ids"].shape[1]:])
            assert "Paris" in answer
    graphs = smollm2_compiled.generator.graphs
    assert graphs.decode.report.pipeline.record("fuse-sibling-linears").stats["groups fused"] == 60
    assert graphs.prefill.report.nodes_optimized < graphs.prefill.report.nodes_captured


@pytest.mark.slow
def test_smollm2_left_padded_batch_generation(smollm2, smollm2_compiled):
    tok = smollm2.tokenizer
    tok.padding_side = "left"
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
             for q in PROMPTS[:3]]
    batch = tok(texts, return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=12, do_sample=False)
    assert torch.equal(smollm2_compiled.generate(**batch, **kwargs), smollm2.model.generate(**batch, **kwargs))


@pytest.mark.slow
def test_smollm2_attributes_delegate_to_the_model(smollm2, smollm2_compiled):
    assert smollm2_compiled.config is smollm2.model.config
    assert smollm2_compiled.report.pipeline.record("eliminate-dead-nodes").stats["assertions"] > 100


@pytest.mark.slow
def test_smollm2_fusion_stats(smollm2_compiled):
    pipeline = smollm2_compiled.report.pipeline
    assert pipeline.record("fuse-rms-norm").stats["fuse-rms-norm"] == 61  # 2 per layer × 30 + final
    # 30 q/k/v groups (grouped-query: 576, 192, 192) + 30 gate/up pairs
    assert pipeline.record("fuse-sibling-linears").stats == {"groups fused": 60, "linears fused": 150}
    # the rotary cos and sin tables; the 8192 × 8192 causal-mask table is over the size cap
    assert pipeline.record("fold-position-tables").stats == {"tables": 2, "over size cap": 1}
    # every remaining linear (4 per layer + the LM head) was placed on a measured GEMM backend
    assert sum(pipeline.record("select-gemm-backend").stats.values()) == 121
