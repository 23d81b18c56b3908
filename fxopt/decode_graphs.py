"""The prefill and decode-step graphs of a causal LM, with its KV cache as explicit tensors.

``generate()`` needs two graphs, each captured through ``torch.export``, run through fxopt's pass pipeline and
lowered once:

* **prefill**: the prompt, ``seq`` tokens (dynamic), written into an empty cache;
* **decode**: one token per sequence, attending to the cache.

Both trace :class:`StaticCacheStep`, the model's forward over a *static* cache whose per-layer key and value
tensors are inputs of shape ``[batch, kv_heads, max_cache_len, head_dim]``; the new keys and values are written
into them in place (``index_copy_``), so no cache is copied per token. The cache length is fixed when the graphs
are compiled (``max_cache_len``); what is filled is told by ``cache_len`` and the 2-D ``attention_mask`` over
the cache slots, from which the step builds its own 4-D mask (causal over slots, padding from the mask), so
left-padded batches work. Only the last position's logits are computed (``logits_to_keep=1``).

Both graphs are compiled with :func:`fxopt.compiled_graph.compile_graph` and one constant pool, so fused
weights are built once for the two::

    graphs = compile_generation_graphs(model, build_pipeline(), CompileOptions(), max_cache_len=512)
    keys, values = graphs.layout.allocate(batch=1)
    logits = graphs.prefill(ids, positions, mask, torch.tensor(0), *keys, *values)[0]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from fxopt.compiled_graph import CompiledGraph, CompileOptions, compile_graph
from fxopt.constant_pool import ConstantPool
from fxopt.errors import CaptureError, PipelineSpecError
from fxopt.graph_pass import GraphPass
from fxopt.ir.capture import capture

#: Default number of cache slots: prompt plus new tokens must fit. Every decode step attends over all slots
#: (masked), so a larger cache costs a little per token (SmolLM2: 23 MB of cache read per step at 512).
DEFAULT_MAX_CACHE_LEN = 512

#: Precisions of the decode graph: its weights are read once per token, so their bytes set its speed. The prefill
#: graph stays in the pipeline's precision (the first token is exact).
DECODE_PRECISIONS = ("fp32", "bf16", "int8-weight-only", "int4-weight-only")

#: The pass each quantized decode precision adds (after fuse-sibling-linears, before select-gemm-backend), and its
#: options. The LM head stays fp32 for int4: on SmolLM2 (8 chat prompts, 64 greedy tokens) int4 group-32 weights
#: agreed with fp32 on 93% of tokens with the LM head in fp32, 31% with it in int4. int8 uses groups of 32 with
#: each group's grid chosen (symmetric or asymmetric), the LM head included: SmolLM2's GGUF weights lie on such
#: grids, so it reproduces them (100% of fp32's tokens on the chat prompts; one scale per row: 63%).
_DECODE_PASS = {"bf16": ("cast-linears-bf16", {"skip": ("lm_head",), "kernel": "auto"}),
                "int8-weight-only": ("quantize-weights-int8",
                                     {"group_size": 32, "scheme": "auto", "kernel": "measure"}),
                "int4-weight-only": ("quantize-weights-int4", {"skip": ["lm_head"]})}


@dataclass(frozen=True)
class CacheLayout:
    """The shapes of a model's static KV cache."""

    layers: int
    kv_heads: int
    k_head_dim: int
    v_head_dim: int
    max_cache_len: int
    dtype: torch.dtype

    def allocate(self, batch: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        keys = [torch.zeros(batch, self.kv_heads, self.max_cache_len, self.k_head_dim, dtype=self.dtype)
                for _ in range(self.layers)]
        values = [torch.zeros(batch, self.kv_heads, self.max_cache_len, self.v_head_dim, dtype=self.dtype)
                  for _ in range(self.layers)]
        return keys, values


def text_config(model: torch.nn.Module):
    """The config of a model's language part (the model's own config for a plain causal LM)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def cache_layout(model: torch.nn.Module, max_cache_len: int) -> CacheLayout:
    """The static cache a Hugging Face causal LM needs; a clear :class:`CaptureError` for architectures whose
    cache is not one full-attention key/value pair per layer."""
    config = text_config(model)
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        kinds = sorted(set(layer_types) - {"full_attention"})
        raise CaptureError(f"{type(model).__name__} has {', '.join(kinds)} layers; fxopt's decode graphs support "
                           "full-attention caches only. Use generate() of the original model for it.")
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dtype = next(model.parameters()).dtype
    return CacheLayout(config.num_hidden_layers, kv_heads, head_dim, head_dim, max_cache_len, dtype)


class StaticCacheStep(torch.nn.Module):
    """A causal LM's forward over a static cache given as tensors (what both generation graphs capture).

    ``forward(input_ids [b, q], position_ids [b, q], attention_mask [b, max_cache_len], cache_len [],
    keys, values)`` returns the last position's logits ``[b, vocab]`` and writes the new keys and values into
    ``keys[i]``/``values[i]`` at slots ``cache_len … cache_len + q - 1``.
    """

    def __init__(self, model: torch.nn.Module, layout: CacheLayout):
        super().__init__()
        self.model = model
        self.layout = layout
        self.text_config = text_config(model)
        self.bool_mask = getattr(self.text_config, "_attn_implementation", "sdpa") != "eager"

    def forward(self, input_ids, position_ids, attention_mask, cache_len, keys, values):
        from transformers.cache_utils import StaticCache

        cache = StaticCache(max_cache_len=self.layout.max_cache_len, config=self.text_config)
        for layer, k, v in zip(cache.layers, keys, values):
            layer.keys, layer.values = k, v
            layer.cumulative_length = cache_len.clone()  # the layer advances its own copy
            layer.device = k.device
            layer.batch_size, layer.num_heads = k.shape[0], k.shape[1]
            layer.k_head_dim, layer.v_head_dim = k.shape[-1], v.shape[-1]
            layer.is_initialized = True
        slots = torch.arange(self.layout.max_cache_len, device=input_ids.device)
        query_slots = cache_len + torch.arange(input_ids.shape[1], device=input_ids.device)
        mask = (slots[None, :] <= query_slots[:, None])[None, None] & attention_mask.bool()[:, None, None, :]
        # A padding query sees no slot at all; let it see every slot (finite garbage nobody reads) instead of
        # making softmax produce NaN, which the cache would then carry into real positions.
        mask = mask | ~mask.any(-1, keepdim=True)
        if not self.bool_mask:
            mask = torch.zeros(mask.shape, dtype=self.layout.dtype).masked_fill(~mask, torch.finfo(self.layout.dtype).min)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, cache=cache,
                         use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]


def step_inputs(layout: CacheLayout, batch: int, tokens: int, filled: int = 0) -> dict[str, Any]:
    """Example inputs of a step: ``tokens`` new tokens per sequence after ``filled`` cached ones."""
    keys, values = layout.allocate(batch)
    mask = torch.zeros(batch, layout.max_cache_len, dtype=torch.long)
    mask[:, :filled + tokens] = 1
    return {"input_ids": torch.ones(batch, tokens, dtype=torch.long),
            "position_ids": torch.arange(filled, filled + tokens).repeat(batch, 1),
            "attention_mask": mask, "cache_len": torch.tensor(filled), "keys": keys, "values": values}


def _dim_axes(prefill: bool) -> dict[str, dict[int, str]]:
    tokens = {0: "batch", 1: "seq"} if prefill else {0: "batch"}
    return {"input_ids": tokens, "position_ids": tokens, "attention_mask": {0: "batch"}, "cache_len": {},
            "keys": {0: "batch"}, "values": {0: "batch"}}


@dataclass
class GenerationGraphs:
    """The compiled prefill and decode graphs of one causal LM and the cache they share."""

    prefill: CompiledGraph
    decode: CompiledGraph
    layout: CacheLayout
    max_batch: int


def decode_pipeline(pipeline: Sequence[tuple[GraphPass, Any]], precision: str) -> list[tuple[GraphPass, Any]]:
    """The pipeline of the decode graph: ``pipeline`` with the passes that give it ``precision``."""
    if precision not in DECODE_PRECISIONS:
        raise PipelineSpecError(f"unknown decode precision {precision!r}; choose one of {', '.join(DECODE_PRECISIONS)}")
    pipeline = list(pipeline)
    names = [p.name for p, _ in pipeline]
    if precision in _DECODE_PASS and _DECODE_PASS[precision][0] not in names:
        from fxopt.registry import get_pass

        name, options = _DECODE_PASS[precision]
        quantize = get_pass(name)
        at = names.index("fuse-sibling-linears") + 1 if "fuse-sibling-linears" in names else len(pipeline)
        if "select-gemm-backend" in names:
            at = min(at, names.index("select-gemm-backend"))
        pipeline.insert(at, (quantize, quantize.make_options(**options)))
    return pipeline


def compile_generation_graphs(model: torch.nn.Module, pipeline: Sequence[tuple[GraphPass, Any]],
                              options: CompileOptions | None = None, *, max_cache_len: int = DEFAULT_MAX_CACHE_LEN,
                              max_batch: int = 16, decode_precision: str = "fp32",
                              pool: ConstantPool | None = None) -> GenerationGraphs:
    """Capture, optimize and lower the prefill and decode graphs of ``model`` (one constant pool for both; give
    the forward graph's ``pool`` and they also reuse the constants its compiled code holds)."""
    decode_passes = decode_pipeline(pipeline, decode_precision)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if isinstance(max_pos, int) and max_cache_len > max_pos:
        raise CaptureError(f"max_cache_len={max_cache_len} is beyond the model's max_position_embeddings "
                           f"({max_pos}); give max_cache_len <= {max_pos}")
    if max_cache_len < 4:
        raise CaptureError(f"max_cache_len={max_cache_len} is too small; give at least 4 slots")
    layout = cache_layout(model, max_cache_len)
    step = StaticCacheStep(model, layout).eval()
    # Examples at batch 1 (traced as 2, so batch stays dynamic) and a 64-token prompt: the sizes target passes
    # such as select-gemm-backend measure at.
    example_prompt = min(64, max_cache_len - 1)
    prefill = capture(step, (), step_inputs(layout, 1, example_prompt), dims={"batch": (1, max_batch),
                      "seq": (1, max_cache_len)}, dim_axes=_dim_axes(prefill=True))
    decode = capture(step, (), step_inputs(layout, 1, 1, filled=example_prompt), dims={"batch": (1, max_batch)},
                     dim_axes=_dim_axes(prefill=False))
    pool = pool if pool is not None else ConstantPool()
    graphs = GenerationGraphs(
        prefill=compile_graph(prefill, pipeline, options, pool=pool, name=f"{type(model).__name__} prefill"),
        decode=compile_graph(decode, decode_passes, options, pool=pool, name=f"{type(model).__name__} decode"),
        layout=layout, max_batch=max_batch)
    pool.release()
    # the example caches (a step's only float inputs) are zeros again if the graphs are saved: SmolLM2's take
    # 67 MB at 384 slots
    for graph in (graphs.prefill, graphs.decode):
        examples = graph.captured.example_inputs
        graph.captured.release_examples([i for i, t in enumerate(examples) if t.is_floating_point()])
    return graphs
