"""``fxopt.compile_generator``: a causal LM's prefill and decode graphs only, for programs that just generate.

``fxopt.compile`` returns a drop-in module: it compiles the full-sequence forward graph that ``compiled(...)``
runs, and the prefill and decode graphs ``generate()`` runs on its first call. A chat program or a generation
server never calls the forward graph, which costs a third of the compile time and, on SmolLM2, about 100 MB
resident. ``compile_generator`` compiles the two graphs ``generate()`` needs, through the same pipeline and
with the same decode-precision accuracy guard, and returns the :class:`fxopt.generation.Generator` that runs
them::

    gen = fxopt.compile_generator(model, tokenizer("What is 2 + 2?", return_tensors="pt"),
                                  decode_precision="int8-weight-only")
    out = gen.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=64)
    gen.last_stats.describe()        # prefill, decode tokens/s, graph time vs the rest

``fxopt generate`` and ``fxopt chat`` compile this way.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import torch

from fxopt.compiled_graph import CompileOptions
from fxopt.decode_graphs import DEFAULT_MAX_CACHE_LEN, decode_pipeline
from fxopt.decode_guard import DEFAULT_DECODE_ACCURACY_BUDGET, example_prompt
from fxopt.errors import FxoptError
from fxopt.generation import CAUSAL_LM_GEMM_OPTIONS, Generator, GenerationSetup, can_generate
from fxopt.pipeline import build_pipeline, with_options


def generation_pipeline(model: torch.nn.Module, passes: Any, *, opt_level: int, disable: Sequence[str],
                        decode_precision: str, decode_accuracy_budget: float) -> list:
    """The pipeline a causal LM's graphs run (the default one holds each weight once), after checking the
    request: a bad spec, decode precision or budget fails here, before anything is captured."""
    pipeline = build_pipeline(passes, opt_level=opt_level, disable=disable)
    if passes is None and can_generate(model):  # weights held once by all of its graphs
        pipeline = with_options(pipeline, "select-gemm-backend", **CAUSAL_LM_GEMM_OPTIONS)
    decode_pipeline(pipeline, decode_precision)
    if not 0 <= decode_accuracy_budget <= 1:
        raise FxoptError(f"decode_accuracy_budget is a fraction of tokens, in [0, 1]; got {decode_accuracy_budget}")
    return pipeline


def compile_generator(model: torch.nn.Module, example_prompt_ids: Any, *,
                      passes: str | Sequence[str] | None = None, opt_level: int = 1, disable: Sequence[str] = (),
                      max_cache_len: int = DEFAULT_MAX_CACHE_LEN, max_batch: int = 16,
                      decode_precision: str = "fp32",
                      decode_accuracy_budget: float = DEFAULT_DECODE_ACCURACY_BUDGET,
                      check_numerics: bool = True, verbose: bool = False) -> Generator:
    """Compile ``model``'s prefill and decode graphs (no forward graph) and return their generation loop.

    ``example_prompt_ids``: a typical prompt, as token ids ``[1, tokens]`` or a tokenizer's output; a lossy
    ``decode_precision`` must pick fp32's next token on at least ``decode_accuracy_budget`` of its positions
    (:mod:`fxopt.decode_guard`). The other options are :func:`fxopt.compile`'s.
    """
    if not can_generate(model):
        raise FxoptError(f"{type(model).__name__} cannot generate: compile_generator needs a causal LM "
                         "(a model with generate() and a language-model head); use fxopt.compile")
    pipeline = generation_pipeline(model, passes, opt_level=opt_level, disable=disable,
                                   decode_precision=decode_precision, decode_accuracy_budget=decode_accuracy_budget)
    kwargs = dict(example_prompt_ids) if isinstance(example_prompt_ids, Mapping) else {}
    ids = example_prompt((example_prompt_ids,) if isinstance(example_prompt_ids, torch.Tensor) else (), kwargs)
    if ids is None:
        raise FxoptError("example_prompt_ids must be token ids [batch, tokens] (int64) or a tokenizer's output "
                         f"with input_ids; got {type(example_prompt_ids).__name__}")
    options = CompileOptions(check_numerics=check_numerics, verbose=verbose)
    setup = GenerationSetup(model, pipeline, options, max_cache_len, max_batch, decode_precision, None, ids,
                            decode_accuracy_budget)
    return setup.build()
