"""``fxopt.compile``: capture → pass pipeline → lowering, returning a drop-in replacement module.

The steps, each in its own module: :func:`fxopt.ir.capture` (``torch.export`` into fxopt's IR),
:func:`fxopt.compiled_graph.compile_graph` (portable passes, target passes, Inductor) and
:class:`fxopt.compiled_module.CompiledModule` (the call contract around the compiled graph).
"""
from __future__ import annotations

import sys

from collections.abc import Mapping
from typing import Any, Sequence

import torch

from fxopt.compile_report import CompileReport
from fxopt.compiled_graph import CompileOptions, compile_graph
from fxopt.compiled_module import CompiledModule
from fxopt.constant_pool import ConstantPool
from fxopt.graph_pass import GraphPass
from fxopt.decode_graphs import DEFAULT_MAX_CACHE_LEN
from fxopt.decode_guard import DEFAULT_DECODE_ACCURACY_BUDGET, example_prompt
from fxopt.generation import GenerationSetup, can_generate
from fxopt.generator_compile import generation_pipeline
from fxopt.ir.capture import CapturedModel, capture
from fxopt.memory import retain_freed_memory, trim_heap
from fxopt.pass_manager import Instrument
from fxopt import compression
from fxopt import quantize as quantization
from fxopt.layer_recovery import CALIBRATION_KEY


def compile(
    model: torch.nn.Module,
    example_inputs: Any = None,
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    passes: str | Sequence[str | GraphPass] | None = None,
    dynamic: bool = True,
    dims: Mapping[str, tuple[int, int]] | None = None,
    dim_axes: Mapping[str, Mapping[int, str]] | None = None,
    backend: str = "inductor",
    freezing: bool | str = "auto",
    opt_level: int = 1,
    disable: Sequence[str] = (),
    check_numerics: bool = True,
    numeric_rtol: float = 1e-4,
    on_numeric_failure: str = "raise",
    verify: bool = True,
    print_after: Sequence[str] | None = None,
    instruments: Sequence[Instrument] = (),
    verbose: bool = False,
    max_cache_len: int = DEFAULT_MAX_CACHE_LEN,
    max_batch: int = 16,
    decode_precision: str = "fp32",
    decode_accuracy_budget: float = DEFAULT_DECODE_ACCURACY_BUDGET,
    quantize: str | None = None,
    calibration: Sequence[Any] | None = None,
    accuracy_budget: float | Mapping[str, float] | None = None,
    compress: Mapping[str, float] | None = None,
) -> CompiledModule:
    """Compile ``model`` for inference and return a module with the same call signature and outputs.

    ``example_inputs``: a tensor, a tuple of positional arguments, or a mapping of keyword arguments
    (a tokenizer's ``BatchEncoding`` works). ``passes``: ``None`` for the default pipeline at
    ``opt_level``, a spec string (``"eliminate-dead-nodes,fold-constants"``) or a list of names/passes.
    ``dynamic``/``dims``: batch (and, for Hugging Face models, sequence) sizes are dynamic within
    ``dims`` (defaults in :data:`fxopt.ir.capture.DEFAULT_DIM_RANGES`); one compiled artifact serves them all.
    ``dim_axes`` names the dynamic axes of inputs the automatic rule does not fit (a KV cache's length axis:
    ``dim_axes={"past": {0: "batch", 2: "cache"}}, dims={"cache": (16, 2048)}``; see :func:`fxopt.ir.capture`).
    ``check_numerics`` runs the graph on the example inputs after every pass and names the pass that
    moved the outputs by more than ``numeric_rtol`` (``on_numeric_failure="skip"`` reverts it instead).
    ``freezing``: ``"auto"`` lowers with the weights as inputs of the compiled code, so that Inductor's caches serve
    the next compile of the same model, unless the graph needs them frozen into it (quantized or packed weights;
    :mod:`fxopt.unfrozen_lowering`); ``True``/``False`` force it.
    For causal LMs, ``generate()`` runs prefill and decode graphs with a static KV cache of ``max_cache_len``
    slots for up to ``max_batch`` sequences, compiled through the same pipeline on its first call (or by
    ``compiled.prepare_generation()``); ``decode_precision="int8-weight-only"`` quantizes the decode graph's
    weights (:data:`fxopt.decode_graphs.DECODE_PRECISIONS`); before the first ``generate()`` a lossy decode graph's
    next tokens must agree with the fp32 model's on at least ``decode_accuracy_budget`` of the example prompt's
    positions (:mod:`fxopt.decode_guard`).
    ``quantize`` runs the linears in lower precision under an accuracy budget (:mod:`fxopt.quant_planner`):
    ``"int8"`` (int8 GEMMs, per-token dynamic activation scales), ``"int8-static"`` (int8 GEMMs, activation
    scales fixed from ``calibration``, which it requires; the linears it hurts most fall back to dynamic int8 or
    higher precision), ``"bf16"``, ``"auto"`` (per linear int8, bf16 or fp32, planned to hold the budget) or
    ``"int8-weight-only"``. ``calibration``: example inputs (a list of
    batches like ``example_inputs``; default: the example inputs) on which the planner measures sensitivity
    and checks ``accuracy_budget``: a number for the model's default metric (encoders: min pooled cosine,
    default 0.995; causal LMs: relative perplexity increase, default 0.02) or ``{"metric": bound}``.
    ``compress`` prunes and factorizes the linears (:mod:`fxopt.compression`): ``{"prune_mlp": 0.3}`` removes 30% of
    every MLP block's hidden channels, ``{"low_rank": 0.9}`` factorizes linears where a rank holding 90% of the
    spectrum is measured faster; both refit on ``calibration`` (default: the example inputs).
    """
    args, kwargs = _split_example(example_inputs, example_kwargs)
    # a bad spec, decode precision or budget fails before capture
    pipeline = generation_pipeline(model, passes, opt_level=opt_level, disable=disable,
                                   decode_precision=decode_precision, decode_accuracy_budget=decode_accuracy_budget)
    quantization.check_request(quantize, accuracy_budget, calibration, compress=bool(compress))  # ... a bad request
    compression.check_request(compress)
    options = CompileOptions(backend=backend, check_numerics=check_numerics, numeric_rtol=numeric_rtol,
                             on_numeric_failure=on_numeric_failure, verify=verify, print_after=print_after,
                             instruments=tuple(instruments), verbose=verbose, freezing=freezing)
    if verbose:
        print(f"[fxopt] capturing {type(model).__name__} with torch.export …", file=sys.stderr, flush=True)
    captured = capture(model, args, kwargs, dynamic=dynamic, dims=dict(dims) if dims else None,
                       dim_axes={k: dict(v) for k, v in dim_axes.items()} if dim_axes else None)
    if verbose:
        print(f"[fxopt] running {len(pipeline)} passes (one line each) …", file=sys.stderr, flush=True)
    graph_pipeline = pipeline
    if quantize is not None or compress:
        batches = quantization.bind_calibration(captured, calibration)
    if compress:
        captured.graph_module.meta[CALIBRATION_KEY] = batches
        graph_pipeline = compression.compression_pipeline(graph_pipeline, compress)
    if quantize is not None:
        graph_pipeline = quantization.precision_pipeline(graph_pipeline, quantize, accuracy_budget, batches, captured)
    pool = ConstantPool()
    graph = compile_graph(captured, graph_pipeline, options, pool=pool)
    if quantize is not None:
        quantization.verify_compiled(graph, batches)  # the budget, on the real kernels; the plan into the report
    pool.release()  # the compiled code holds what it needs; nothing else keeps fxopt-made constants alive
    trim_heap()  # give the compilation's freed memory back to the OS (SmolLM2: 1,961 → 1,612 MB resident)
    retain_freed_memory()  # ... and keep what each call frees for the next one (a 50 MB output: 20 → 5 ms)
    # the generation graphs reuse what the forward graph's code still holds (packed weights: one copy, not two)
    generation = (GenerationSetup(model, pipeline, options, max_cache_len, max_batch, decode_precision, pool,
                                  example_prompt(args, kwargs), decode_accuracy_budget)
                  if can_generate(model) else None)
    return CompiledModule(model, graph, generation)


def _split_example(example_inputs, example_kwargs) -> tuple[tuple, dict]:
    kwargs = dict(example_kwargs or {})
    if example_inputs is None:
        return (), kwargs
    if isinstance(example_inputs, Mapping):
        return (), {**dict(example_inputs), **kwargs}
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), kwargs
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), kwargs
    raise TypeError("example_inputs must be a tensor, a tuple/list of arguments or a mapping of keyword "
                    f"arguments, got {type(example_inputs).__name__}")


__all__ = ["compile", "CompileReport", "CapturedModel"]
