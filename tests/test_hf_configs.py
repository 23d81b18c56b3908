"""Transformers architectures built from small configs with random weights: same outputs as eager."""
import pytest
import torch
import transformers as tf

import fxopt
from conftest import rel_err

VOCAB = 512


def _bert():
    return tf.BertModel(tf.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, max_position_embeddings=128))


def _gpt2():
    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128))


def _llama():
    return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                              max_position_embeddings=128))


def _qwen2():
    return tf.Qwen2ForCausalLM(tf.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                              max_position_embeddings=128))


def _t5_encoder():
    return tf.T5EncoderModel(tf.T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                         num_heads=4))


def _deberta():  # a hand-written LayerNorm (sqrt, with bias)
    return tf.DebertaModel(tf.DebertaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=128, max_position_embeddings=128))


def _cohere():  # a hand-written LayerNorm (rsqrt, no bias), parallel attention and MLP
    return tf.CohereForCausalLM(tf.CohereConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                max_position_embeddings=128, eos_token_id=2))


ARCHITECTURES = {"bert": _bert, "gpt2": _gpt2, "llama": _llama, "qwen2": _qwen2, "t5-encoder": _t5_encoder,
                 "deberta": _deberta, "cohere": _cohere}

#: What the default pipeline's fusions do on each architecture (stats of the passes that changed it).
EXPECTED_FUSIONS = {
    "bert": {"fuse-sibling-linears": {"groups fused": 2, "linears fused": 6}},
    "gpt2": {},
    "llama": {"fuse-rms-norm": {"fuse-rms-norm": 5}, "fuse-sibling-linears": {"groups fused": 4, "linears fused": 10}},
    "qwen2": {"fuse-rms-norm": {"fuse-rms-norm": 5}, "fuse-sibling-linears": {"groups fused": 4, "linears fused": 10}},
    "t5-encoder": {"fuse-rms-norm": {"fuse-rms-norm": 5}, "fuse-sibling-linears": {"groups fused": 2, "linears fused": 6}},
    "deberta": {"fuse-layer-norm": {"sqrt, with bias": 5}},
    # parallel attention and MLP read the same norm: q, k, v, gate and up become one linear per layer
    "cohere": {"fuse-layer-norm": {"rsqrt, no bias": 3},
               "fuse-sibling-linears": {"groups fused": 2, "linears fused": 10}},
}


def _inputs(batch, seq, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_config_built_model_matches_eager(name):
    torch.manual_seed(0)
    model = ARCHITECTURES[name]().eval()
    compiled = fxopt.compile(model, _inputs(2, 24))
    fusions = {r.name: r.stats for r in compiled.report.pipeline.records
               if r.name.startswith("fuse-") and r.stats}
    assert fusions == EXPECTED_FUSIONS[name]
    with torch.no_grad():
        for batch, seq in ((2, 24), (3, 9), (1, 40)):
            inputs = _inputs(batch, seq, seed=batch * 100 + seq)
            out, ref = compiled(**inputs), model(**inputs)
            assert type(out) is type(ref)
            main = "logits" if hasattr(ref, "logits") else "last_hidden_state"
            assert rel_err(getattr(out, main), getattr(ref, main)) < 1e-4, (name, batch, seq)
