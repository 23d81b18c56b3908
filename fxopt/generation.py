"""``generate()`` for a compiled causal LM: prefill once, then one decode-graph call per token.

Hugging Face semantics for what users pass: ``max_new_tokens`` (or ``max_length``), ``min_new_tokens``,
``eos_token_id`` (one or several), ``pad_token_id``, ``attention_mask`` (left-padded batches), greedy decoding
and sampling (``do_sample``, ``temperature``, ``top_k``, ``top_p``; seed with ``torch.manual_seed``: the warpers
run in Hugging Face's order and draw with ``torch.multinomial`` as it does), ``streamer`` (``put``/``end``,
like ``transformers.TextStreamer``). Unset arguments come from the model's ``generation_config``. Anything else
is an :class:`fxopt.InputError` naming it — never silently ignored. The result is Hugging Face's: the prompt
followed by the new tokens, finished rows padded with ``pad_token_id``.

Per token the loop does as little Python as it can: the decode graph's argument list is built once and
four of its entries change; :attr:`Generator.last_stats` splits the time into graph and everything else.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from fxopt.decode_graphs import GenerationGraphs
from fxopt.decode_guard import DEFAULT_DECODE_ACCURACY_BUDGET
from fxopt.errors import InputError

#: The ``generate()`` arguments fxopt honours; any other is refused by name.
SUPPORTED = ("input_ids", "attention_mask", "max_new_tokens", "max_length", "min_new_tokens", "eos_token_id",
             "pad_token_id", "do_sample", "temperature", "top_k", "top_p", "streamer", "generation_config",
             "use_cache")


@dataclass
class GenerationStats:
    """Where the time of one ``generate()`` call went."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    batch: int = 0
    prefill_seconds: float = 0.0  # prefill graph + first token: the time to first token
    decode_seconds: float = 0.0  # every step after the first token
    decode_graph_seconds: float = 0.0  # ... of which inside the decode graph
    steps: int = 0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.steps / self.decode_seconds if self.decode_seconds else 0.0

    @property
    def overhead_per_token_ms(self) -> float:
        """Python and framework time per decode step outside the graph."""
        return (self.decode_seconds - self.decode_graph_seconds) / self.steps * 1e3 if self.steps else 0.0

    def describe(self) -> str:
        return (f"prompt {self.prompt_tokens} tokens × {self.batch}: first token after "
                f"{self.prefill_seconds * 1e3:.0f} ms; {self.steps} decode steps at "
                f"{self.decode_tokens_per_second:.1f} tokens/s ({self.decode_graph_seconds / max(self.steps, 1) * 1e3:.1f}"
                f" ms in the graph + {self.overhead_per_token_ms:.2f} ms outside per step)")


@dataclass
class _Settings:
    max_new_tokens: int
    min_new_tokens: int
    eos: list[int]
    pad: int | None
    do_sample: bool
    temperature: float
    top_k: int | None
    top_p: float
    streamer: object = None


def resolve_settings(prompt_len: int, kwargs: dict, generation_config) -> _Settings:
    """The generation arguments of one call, with the model's ``generation_config`` for the unset ones."""
    unknown = sorted(k for k in kwargs if k not in SUPPORTED)
    if unknown:
        raise InputError(f"generate() of the compiled model does not support {', '.join(unknown)}; it takes "
                         f"{', '.join(SUPPORTED)}. Use the original model's generate() for the others.")
    if kwargs.get("use_cache") is False:
        raise InputError("use_cache=False: the compiled model always decodes with its KV cache")
    cfg = kwargs.get("generation_config") or generation_config

    def get(name, default=None):  # the call's value, else the model's generation_config, else HF's default
        for value in (kwargs.get(name), getattr(cfg, name, None)):
            if value is not None:
                return value
        return default

    max_new = kwargs.get("max_new_tokens")
    if max_new is None and kwargs.get("max_length") is not None:
        max_new = kwargs["max_length"] - prompt_len
    if max_new is None:
        max_new = getattr(cfg, "max_new_tokens", None)
    if max_new is None:  # Hugging Face's default: max_length 20, prompt included
        max_new = (getattr(cfg, "max_length", None) or 20) - prompt_len
    eos = get("eos_token_id")
    eos = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
    pad = get("pad_token_id")
    if pad is None and eos:
        pad = eos[0]
    do_sample = bool(get("do_sample", False))
    settings = _Settings(int(max_new), int(get("min_new_tokens", 0) or 0), eos, pad, do_sample,
                         float(get("temperature", 1.0)), get("top_k", 50), float(get("top_p", 1.0)),
                         kwargs.get("streamer"))
    if settings.max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {settings.max_new_tokens}")
    if do_sample and settings.temperature <= 0:
        raise InputError(f"temperature must be positive for sampling, got {settings.temperature}")
    if not 0 < settings.top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {settings.top_p}")
    return settings


def check_request(input_ids, attention_mask, kwargs: dict, generation_config, *, max_cache_len: int,
                  max_batch: int, vocab_size: int | None) -> _Settings:
    """Every check of a ``generate()`` call that needs no graph: run before anything is compiled or computed."""
    if input_ids is None:
        raise InputError("generate() needs input_ids (the tokenized prompt)")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise InputError(f"input_ids must be an int64 tensor [batch, prompt_len], got "
                         f"{getattr(input_ids, 'dtype', type(input_ids).__name__)} "
                         f"{list(getattr(input_ids, 'shape', []))}")
    batch, prompt_len = input_ids.shape
    s = resolve_settings(prompt_len, kwargs, generation_config)
    if prompt_len + s.max_new_tokens > max_cache_len:
        raise InputError(f"the prompt ({prompt_len} tokens) plus max_new_tokens ({s.max_new_tokens}) needs "
                         f"{prompt_len + s.max_new_tokens} cache slots; the model was compiled with "
                         f"max_cache_len={max_cache_len}: recompile with "
                         f"fxopt.compile(..., max_cache_len={prompt_len + s.max_new_tokens}) or more")
    if batch > max_batch:
        raise InputError(f"batch {batch} is above the compiled maximum {max_batch}; recompile with "
                         f"max_batch={batch} or more")
    if vocab_size is not None and input_ids.numel() and (int(input_ids.min()) < 0 or
                                                         int(input_ids.max()) >= vocab_size):
        raise InputError(f"input_ids holds token ids outside the vocabulary [0, {vocab_size}): "
                         f"min {int(input_ids.min())}, max {int(input_ids.max())}")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise InputError(f"attention_mask {list(attention_mask.shape)} must have input_ids' shape "
                             f"{list(input_ids.shape)}")
        if bool((attention_mask[:, -1] == 0).any()):
            raise InputError("attention_mask has padding at the end of a prompt; pad on the left "
                             "(tokenizer.padding_side = 'left'), as Hugging Face generation requires")
    return s


class Generator:
    """Runs generation over compiled prefill and decode graphs (see the module docstring)."""

    def __init__(self, graphs: GenerationGraphs, generation_config, vocab_size: int | None = None,
                 accuracy=None):
        self.graphs = graphs
        self.accuracy = accuracy  # what the decode precision's guard measured (fxopt.decode_guard), or None
        self.generation_config = copy.deepcopy(generation_config)
        self.vocab_size = vocab_size
        self.last_stats = GenerationStats()

    # -- the loop -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
        layout, graphs = self.graphs.layout, self.graphs
        s = check_request(input_ids, attention_mask, kwargs, self.generation_config,
                          max_cache_len=layout.max_cache_len, max_batch=graphs.max_batch, vocab_size=self.vocab_size)
        batch, prompt_len = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        stats = GenerationStats(prompt_tokens=prompt_len, batch=batch)
        start = time.perf_counter()
        keys, values = layout.allocate(batch)
        mask = torch.zeros(batch, layout.max_cache_len, dtype=torch.long)
        mask[:, :prompt_len] = attention_mask
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
        logits = graphs.prefill(input_ids.contiguous(), positions, mask, torch.tensor(0), *keys, *values)[0]

        out = torch.empty(batch, prompt_len + s.max_new_tokens, dtype=torch.long)
        out[:, :prompt_len] = input_ids
        unfinished = torch.ones(batch, dtype=torch.bool)
        eos = torch.tensor(s.eos, dtype=torch.long) if s.eos else None
        next_pos = positions[:, -1:] + 1
        cache_len = torch.tensor(prompt_len)
        token = torch.empty(batch, 1, dtype=torch.long)
        args = [token, next_pos, mask, cache_len, *keys, *values]
        if s.streamer is not None:
            s.streamer.put(input_ids.cpu())
        graph_time = 0.0
        produced = 0
        for step in range(s.max_new_tokens):
            chosen = self._choose(logits, step, s)
            if eos is not None:
                chosen = torch.where(unfinished, chosen, torch.full_like(chosen, s.pad if s.pad is not None else 0))
                unfinished &= ~torch.isin(chosen, eos)
            out[:, prompt_len + step] = chosen
            produced = step + 1
            if s.streamer is not None:
                s.streamer.put(chosen.cpu())
            if step == 0:
                stats.prefill_seconds = time.perf_counter() - start
                decode_start = time.perf_counter()
            if step + 1 == s.max_new_tokens or (eos is not None and not bool(unfinished.any())):
                break
            token.copy_(chosen.view(batch, 1))
            slot = prompt_len + step
            mask[:, slot] = 1
            cache_len.fill_(slot)
            t0 = time.perf_counter()
            logits = graphs.decode(*args)[0]
            graph_time += time.perf_counter() - t0
            next_pos += 1
            stats.steps += 1
        stats.decode_seconds = time.perf_counter() - decode_start
        stats.decode_graph_seconds = graph_time
        stats.new_tokens = produced
        self.last_stats = stats
        if s.streamer is not None:
            s.streamer.end()
        return out[:, :prompt_len + produced]

    @staticmethod
    def _choose(logits: torch.Tensor, step: int, s: _Settings) -> torch.Tensor:
        """The next token of every row: Hugging Face's processors and warpers, in its order."""
        scores = logits.float()
        if step < s.min_new_tokens and s.eos:
            scores = scores.clone()
            scores[:, s.eos] = -float("inf")
        if not s.do_sample:
            return scores.argmax(-1)
        if s.temperature != 1.0:
            scores = scores / s.temperature
        if s.top_k is not None and 0 < s.top_k < scores.shape[-1]:
            kth = torch.topk(scores, s.top_k)[0][..., -1, None]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if s.top_p < 1.0:
            sorted_logits, sorted_indices = torch.sort(scores, descending=False)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            remove = cumulative <= (1 - s.top_p)
            remove[..., -1:] = False
            scores = scores.masked_fill(remove.scatter(1, sorted_indices, remove), -float("inf"))
        return torch.multinomial(scores.softmax(-1), 1).squeeze(1)


def can_generate(model: torch.nn.Module) -> bool:
    """A Hugging Face model with a generation head (``LlamaForCausalLM`` yes, ``BertModel`` no)."""
    check = getattr(model, "can_generate", None)
    return bool(callable(check) and check())


#: select-gemm-backend's options in a causal LM's default pipeline. Its forward, prefill and decode graphs read
#: the same weights, and memory is what limits an LLM on a CPU, so no linear runs on a packed second copy of its
#: weight (``copy_margin=1``: the copy would have to take no time). On an Intel Xeon host where MKL's packed GEMMs
#: beat oneDNN on the plain weight by 1.3–1.4× at 64 rows, the copies were 540 MB for SmolLM2 and its compiled
#: model generated at 2.1× eager's peak memory (BENCHMARKS.md). An explicit ``passes=`` pipeline runs as given.
CAUSAL_LM_GEMM_OPTIONS = {"copy_margin": 1.0}


@dataclass
class GenerationSetup:
    """What ``generate()`` compiles on its first call: the model, the pipeline and the cache's size."""

    model: torch.nn.Module
    pipeline: list
    options: object
    max_cache_len: int
    max_batch: int
    decode_precision: str = "fp32"
    pool: object = None  # the forward graph's (released) constant pool, so constants are built once
    example_ids: torch.Tensor | None = None  # the compile example's prompt: what the decode guard measures on
    decode_accuracy_budget: float = DEFAULT_DECODE_ACCURACY_BUDGET

    @property
    def vocab_size(self) -> int | None:
        from fxopt.decode_graphs import text_config

        return getattr(text_config(self.model), "vocab_size", None)

    def check(self, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        check_request(kwargs.pop("input_ids", None), kwargs.pop("attention_mask", None), kwargs,
                      self.model.generation_config, max_cache_len=self.max_cache_len, max_batch=self.max_batch,
                      vocab_size=self.vocab_size)

    def build(self) -> Generator:
        """Compile the prefill and decode graphs and return the loop that runs them."""
        from fxopt.decode_graphs import compile_generation_graphs
        from fxopt.decode_guard import guard
        from fxopt.memory import trim_heap

        graphs = compile_generation_graphs(self.model, self.pipeline, self.options, max_cache_len=self.max_cache_len,
                                           max_batch=self.max_batch, decode_precision=self.decode_precision,
                                           pool=self.pool)
        trim_heap()
        accuracy = guard(self.model, graphs, self.example_ids, self.decode_precision, self.decode_accuracy_budget)
        return Generator(graphs, self.model.generation_config, self.vocab_size, accuracy)


def hf_generate(original: torch.nn.Module, forward, *args, **kwargs):
    """Hugging Face's own loop over a compiled full-sequence ``forward`` (no KV cache; each step recomputes the
    prefix). Used only for causal LMs whose cache the decode graphs do not support."""
    if not hasattr(original, "generate"):
        raise AttributeError(f"{type(original).__name__} has no generate()")
    shell = copy.copy(original)  # shares weights and submodules; only its forward differs
    shell.forward = forward
    shell.generation_config = copy.deepcopy(original.generation_config)
    shell.generation_config.use_cache = False
    kwargs["use_cache"] = False
    return shell.generate(*args, **kwargs)
