"""Shared fixtures: the real models are loaded once per test session."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture
def int8_start(monkeypatch):
    """``quantize="auto"`` starts each linear from the faster of int8 and bf16 on this machine
    (fxopt.precision_speed): on a CPU with AMX some start in bf16. Tests of the int8 search and kernels fix that
    start to int8, so that they hold the same way on every host."""
    from fxopt import quant_planner

    monkeypatch.setattr(quant_planner.precision_speed, "bf16_where_faster", lambda gm, linears: {})


@pytest.fixture
def python_wrapper(monkeypatch):
    """Inductor's Python wrapper, for tests that read the code it generates: graphs of aten and oneDNN float ops are
    otherwise lowered with its C++ wrapper (fxopt.cpp_wrapper), whose code those tests do not parse."""
    monkeypatch.setenv("FXOPT_CPP_WRAPPER", "0")


@pytest.fixture(scope="session")
def minilm():
    from fxopt import models
    return models.load("minilm")


@pytest.fixture(scope="session")
def smollm2():
    from fxopt import models
    return models.load("smollm2")


@pytest.fixture(scope="session")
def minilm_compiled(minilm):
    """MiniLM through the default pipeline and Inductor, compiled at batch 8 × 128."""
    import fxopt
    return fxopt.compile(minilm.model, minilm.inputs(8, 128))


@pytest.fixture(scope="session")
def minilm_artifact(minilm, minilm_compiled, tmp_path_factory):
    """``minilm_compiled`` saved with its tokenizer (fxopt.save): an artifact folder."""
    import fxopt
    path = tmp_path_factory.mktemp("artifacts") / "minilm.fxopt"
    return fxopt.save(minilm_compiled, path, tokenizer=minilm.tokenizer, verbose=False)


@pytest.fixture(scope="session")
def tiny_llama():
    """A 2-layer Llama with grouped-query attention from a small random config (eos 3, pad 0, bos 1)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=3, pad_token_id=0, bos_token_id=1)
    return LlamaForCausalLM(config).eval()


class MLP(torch.nn.Module):
    """Three linears (up with a bias, down without, head with) around an activation: the small model the
    linear-rewriting passes (quantization, bf16) are tested on."""

    def __init__(self, act=torch.relu):
        super().__init__()
        self.act = act
        self.up = torch.nn.Linear(64, 256)
        self.down = torch.nn.Linear(256, 64, bias=False)
        self.head = torch.nn.Linear(64, 32)

    def forward(self, x):
        return self.head(self.down(self.act(self.up(x))))


def repeat_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    """Hugging Face's grouped-query repeat (modeling_llama.repeat_kv): each K/V head copied for its query heads."""
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, group, s, d).reshape(b, h * group, s, d)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def pytest_addoption(parser):
    parser.addoption("--accept", action="store_true",
                     help="rewrite goldens (the passes' Before/After docstrings) from what the code prints now; "
                          "review the diff before committing")
