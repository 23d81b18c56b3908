"""``fxopt bench --generate``: time to first token, prefill and decode tokens/s of generation, side by side.

Configurations: Hugging Face eager ``generate()`` (its dynamic KV cache), ``torch.compile`` of the forward with a
static cache, and fxopt's compiled prefill + decode graphs (fp32, and the decode precisions given). Each runs in
its own process with eager HF timed in the same process, interleaved, so the ratios compare like with like. Every
configuration generates the same number of tokens from the same prompt, greedily:

* **time to first token** = the time of ``generate(max_new_tokens=1)``;
* **decode tokens/s** = ``(new_tokens - 1) / (time(new_tokens) - time(1))``, each the median of ``reps`` calls;
* **agreement**: the share of new tokens equal to eager fp32's greedy tokens, on the benchmark prompt and on
  :data:`CHAT_PROMPTS` (8 chat-formatted questions, 64 tokens each, position by position); **France**: whether the
  answer to "What is the capital of France?" names Paris.
"""
from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tabulate import tabulate

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


#: configuration name → builder(model, example inputs) -> generate-like callable
CONFIGS: dict[str, Callable] = {
    "HF eager (dynamic cache)": _hf_eager,
    "torch.compile static cache": _hf_static_compile,
    "fxopt fp32": _fxopt(),
    "fxopt bf16 decode": _fxopt(decode_precision="bf16"),
    "fxopt int8 weight-only decode": _fxopt(decode_precision="int8-weight-only"),
    "fxopt int4 weight-only decode": _fxopt(decode_precision="int4-weight-only"),
}


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
    peak_rss_mb: float
    notes: list[str] = field(default_factory=list)

    @property
    def decode_speedup(self) -> float:
        return self.decode_tps / self.eager_decode_tps

    @property
    def ttft_speedup(self) -> float:
        return self.eager_ttft_ms / self.ttft_ms


def _timed(fn, **kw) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn(**kw)
    return time.perf_counter() - t0, out


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
        eager = _hf_eager(model, None)
        for fn in (eager, candidate):  # warm-up
            fn(**prompt, **greedy)
        times = {name: {"first": [], "all": []} for name in ("eager", "candidate")}
        outputs = {}
        for _ in range(reps):
            for name, fn in (("eager", eager), ("candidate", candidate)):
                t1, _ = _timed(fn, **prompt, do_sample=False, max_new_tokens=1)
                tn, out = _timed(fn, **prompt, **greedy)
                times[name]["first"].append(t1)
                times[name]["all"].append(tn)
                outputs[name] = out
        chat = _chat(tok, "What is the capital of France?")
        answer = candidate(**chat, do_sample=False, max_new_tokens=24)
        chat_agreement = 1.0 if config == "HF eager (dynamic cache)" else _chat_agreement(tok, eager, candidate, greedy)
    answer_text = tok.decode(answer[0, chat["input_ids"].shape[1]:], skip_special_tokens=True)
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    tps = {n: (NEW_TOKENS - 1) / (med[n]["all"] - med[n]["first"]) for n in med}
    new = slice(PROMPT_TOKENS, PROMPT_TOKENS + NEW_TOKENS)
    agreement = (outputs["candidate"][0, new] == outputs["eager"][0, new]).float().mean().item()
    notes = [f"answer: {answer_text.strip()[:80]!r}"]
    compiled = getattr(CONFIGS[config], "compiled", None)
    if compiled is not None and compiled.generator is not None:
        notes.append(compiled.generator.last_stats.describe())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return GenerationMeasurement(config, med["candidate"]["first"] * 1e3, tps["candidate"], med["eager"]["first"] * 1e3,
                                 tps["eager"], compile_s, agreement, chat_agreement, "paris" in answer_text.lower(),
                                 peak, notes)


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
             f"{m.agreement * 100:.0f}%", f"{m.chat_agreement * 100:.0f}%", "yes" if m.france else "NO"]
            for m in results]
    return tabulate(rows, headers=["configuration", "first token ms", "vs eager", "prefill tok/s", "decode tok/s",
                                   "decode vs eager", "compile s", "peak RSS MB", "greedy = eager fp32",
                                   "on 8 chat prompts", "Paris"], tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="fxopt bench --generate", description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated from: {', '.join(CONFIGS)}")
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
