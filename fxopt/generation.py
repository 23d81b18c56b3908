"""``generate()`` for a compiled causal LM: Hugging Face's generation loop over the compiled forward.

The compiled graph is the full-sequence forward, so each step recomputes the prefix (``use_cache=False``);
greedy results are token-for-token eager's.
"""
from __future__ import annotations

import copy

import torch


def hf_generate(original: torch.nn.Module, forward, *args, **kwargs):
    """Run ``original.generate(*args, **kwargs)`` with ``forward`` in place of the model's own forward."""
    if not hasattr(original, "generate"):
        raise AttributeError(f"{type(original).__name__} has no generate()")
    shell = copy.copy(original)  # shares weights and submodules; only its forward differs
    shell.forward = forward
    shell.generation_config = copy.deepcopy(original.generation_config)
    shell.generation_config.use_cache = False
    kwargs["use_cache"] = False
    return shell.generate(*args, **kwargs)
