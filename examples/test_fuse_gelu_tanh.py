"""Tests of the example pass, as a third party would write them."""
import torch
import transformers

import fxopt
from fuse_gelu_tanh import fuse_gelu_tanh
from fxopt.testing import check_pass, filecheck


def test_fires_on_gpt2_and_keeps_numerics():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=256, n_embd=32, n_layer=3, n_head=2, n_positions=64)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 256, (2, 12))
    result = check_pass(fuse_gelu_tanh, model, input_ids=ids, rtol=1e-5)
    assert result.stats == {"fuse-gelu-tanh": 3}  # one per layer
    filecheck(result.after, """
        CHECK: %gelu_default = aten.gelu(%view_9, approximate='tanh') : f32[batch, seq, 128]
        CHECK-NOT: aten.tanh
    """)


def test_in_a_pipeline_compiled_by_inductor():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), transformers.activations.NewGELUActivation()).eval()
    compiled = fxopt.compile(model, torch.randn(4, 8), passes=["eliminate-dead-nodes", fuse_gelu_tanh])
    x = torch.randn(5, 8)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    assert compiled.report.pipeline.record("fuse-gelu-tanh").changed
