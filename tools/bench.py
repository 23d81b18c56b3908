"""``fxopt bench``: eager, torch.compile and fxopt side by side on the real models, with accuracy.

Each configuration runs in its own process (Dynamo caches compiled code per code object, so two
compiled copies of one model class in one process can share a graph compiled under the other's
settings). Inside that process the candidate is timed *interleaved* with eager on the same inputs:
warm-up first, then ``reps`` rounds of (eager, candidate), medians of each. Only ratios from one
process are compared; absolute times across processes are not.

Adding a mode = adding a function to :data:`CONFIGS` that returns a callable with eager's signature.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tabulate import tabulate

#: The shapes the benchmark runs: MiniLM batch 8 × 128 tokens, SmolLM2 prefill 1 × 256 tokens.
WORKLOADS = {"minilm": (8, 128), "smollm2": (1, 256)}


def torch_compile_config(dynamic: bool):
    def build(model, inputs):
        compiled = torch.compile(model, dynamic=dynamic, options={"freezing": True})
        return lambda **kw: compiled(**kw), ""
    return build


def fxopt_config(**compile_kwargs):
    def build(model, inputs):
        import fxopt
        compiled = fxopt.compile(model, inputs, **compile_kwargs)
        return compiled, compiled.report.pipeline.table()
    build.predicts = True
    return build


def predicted_speedup(compiled, batch: int, seq: int) -> float:
    """The cost model's roofline prediction: the captured graph run op by op (eager) vs the optimized graph
    with Inductor's pointwise fusion modeled."""
    from fxopt.cost import estimate, predict_seconds

    report = compiled.report
    eager = predict_seconds(report.cost_captured, batch=batch, seq=seq)
    optimized = predict_seconds(estimate(compiled.graph_module, fused=True), batch=batch, seq=seq)
    return eager / optimized


#: configuration name → builder(model, example inputs) -> (callable, extra text)
CONFIGS: dict[str, Callable] = {
    "torch.compile static+freezing": torch_compile_config(dynamic=False),
    "torch.compile dynamic+freezing": torch_compile_config(dynamic=True),
    "fxopt": fxopt_config(),
    # the A/B that keeps select-gemm-backend honest: every linear left on oneDNN, as Inductor chooses
    "fxopt without select-gemm-backend": fxopt_config(disable=("select-gemm-backend",)),
}


@dataclass
class Measurement:
    model: str
    config: str
    shape: str
    eager_ms: float
    candidate_ms: float
    compile_s: float
    accuracy: dict
    extra: str = ""
    predicted: float | None = None  # the cost model's predicted speed vs eager (fxopt configurations)
    peak_rss_mb: float = 0.0  # the worker's peak resident memory: model, compilation and the first calls
    runs: list[float] = field(default_factory=list)  # speed vs eager of each process, with --processes N

    @property
    def speedup(self) -> float:
        return statistics.median(self.runs) if self.runs else self.eager_ms / self.candidate_ms

    @property
    def spread(self) -> str:
        return f"{min(self.runs):.2f}–{max(self.runs):.2f}×" if len(self.runs) > 1 else "-"


def combine(runs: list[Measurement]) -> Measurement:
    """One row from the same configuration measured in several processes: medians, the largest peak memory,
    and each process's speed-up kept for the spread (a process can run a few % fast or slow as a whole)."""
    first = runs[0]
    return Measurement(
        first.model, first.config, first.shape,
        statistics.median(m.eager_ms for m in runs), statistics.median(m.candidate_ms for m in runs),
        statistics.median(m.compile_s for m in runs), first.accuracy, first.extra, first.predicted,
        max(m.peak_rss_mb for m in runs), [m.speedup for m in runs])


def accuracy(model_name: str, reference, output, inputs) -> dict:
    """MiniLM: mean-pooled embedding cosine (min over the batch); SmolLM2: top-1 next-token agreement.
    Both: max |Δ| / max |reference| of the main output."""
    if model_name == "minilm":
        ref, out = reference.last_hidden_state, output.last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        pooled_ref = (ref * mask).sum(1) / mask.sum(1)
        pooled_out = (out * mask).sum(1) / mask.sum(1)
        cosine = torch.nn.functional.cosine_similarity(pooled_ref, pooled_out, dim=-1).min().item()
        return {"max_rel_err": _rel(out, ref), "min_cosine": cosine}
    ref, out = reference.logits, output.logits
    agree = (ref.argmax(-1) == out.argmax(-1)).float().mean().item()
    return {"max_rel_err": _rel(out, ref), "top1_agreement": agree}


def _rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def format_accuracy(acc: dict) -> str:
    parts = [f"rel err {acc['max_rel_err']:.1e}"]
    if "min_cosine" in acc:
        parts.append(f"cos {acc['min_cosine']:.6f}")
    if "top1_agreement" in acc:
        parts.append(f"top-1 {acc['top1_agreement'] * 100:.1f}%")
    return ", ".join(parts)


def measure(model_name: str, config: str, reps: int = 20, warmup: int = 3,
            build: Callable | None = None) -> Measurement:
    """Build one configuration and time it interleaved with eager, in this process."""
    from fxopt import models

    real = models.load(model_name)
    batch, seq = WORKLOADS[model_name]
    inputs = real.inputs(batch, seq)
    build = build or CONFIGS[config]
    with torch.no_grad():
        start = time.perf_counter()
        candidate, extra = build(real.model, inputs)
        output = candidate(**inputs)  # first call: compilation happens here for torch.compile
        compile_s = time.perf_counter() - start
        reference = real.model(**inputs)
        for _ in range(warmup):
            real.model(**inputs)
            candidate(**inputs)
        eager_t, cand_t = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            real.model(**inputs)
            t1 = time.perf_counter()
            candidate(**inputs)
            t2 = time.perf_counter()
            eager_t.append(t1 - t0)
            cand_t.append(t2 - t1)
    predicted = predicted_speedup(candidate, batch, seq) if getattr(build, "predicts", False) else None
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return Measurement(model_name, config, f"{batch}×{seq}", statistics.median(eager_t) * 1e3,
                       statistics.median(cand_t) * 1e3, compile_s, accuracy(model_name, reference, output, inputs),
                       extra, predicted, peak_mb)


def run_worker(module: str, args: list[str], what: str) -> dict:
    """Run ``python -m module --worker *args`` in a fresh process and return the JSON object it prints last."""
    cmd = [sys.executable, "-m", module, "--worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    line = next((l for l in reversed(proc.stdout.splitlines()) if l.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"benchmark worker for {what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line)


def run_isolated(model_name: str, config: str, reps: int) -> Measurement:
    """Run :func:`measure` in a fresh Python process and read its JSON result."""
    args = ["--models", model_name, "--configs", config, "--reps", str(reps)]
    return Measurement(**run_worker("fxopt.tools.bench", args, f"{model_name} / {config}"))


def table(results: list[Measurement]) -> str:
    rows = [[m.model, m.shape, m.config, f"{m.eager_ms:.1f}", f"{m.candidate_ms:.1f}", f"{m.speedup:.2f}×",
             m.spread, _prediction(m), f"{m.compile_s:.1f}", f"{m.peak_rss_mb:.0f}", format_accuracy(m.accuracy)]
            for m in results]
    return tabulate(rows, headers=["model", "batch×seq", "configuration", "eager ms", "ms", "speed vs eager",
                                   "spread over processes", "predicted (error)", "compile s", "peak RSS MB",
                                   "accuracy vs eager"], tablefmt="github")


def _prediction(m: Measurement) -> str:
    if m.predicted is None:
        return "-"
    return f"{m.predicted:.2f}× ({(m.predicted - m.speedup) / m.speedup * 100:+.0f}%)"


def write_markdown(path: str, results: list[Measurement], command: str) -> None:
    from fxopt.cost.roofline import cpu_model, machine_peaks

    machine = (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}; peaks measured by "
               f"fxopt.cost.machine_peaks(): {machine_peaks().describe()}")
    passes = "\n\n".join(f"Per-pass table, fxopt on {m.model}:\n\n```\n{m.extra}\n```" for m in results if m.extra)
    text = (f"# Benchmarks\n\nMeasured {datetime.date.today().isoformat()} on this project's CPU machine "
            f"({machine}). Medians of interleaved runs; each configuration in its own process, with eager "
            f"timed in that same process, so compare the *speed vs eager* ratios, not absolute times "
            f"across rows. With several processes per configuration (`--processes`), the speed is the "
            f"median of the processes' ratios and the spread their range.\n\n"
            f"Command:\n\n```\n{command}\n```\n\n{table(results)}\n\n{passes}\n")
    with open(path, "w") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fxopt bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,smollm2", help="comma-separated: minilm, smollm2")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated from: {', '.join(CONFIGS)}")
    parser.add_argument("--reps", type=int, default=20, help="timed rounds (after warm-up); default 20")
    parser.add_argument("--processes", type=int, default=1,
                        help="measure each configuration in this many fresh processes, taking turns (default 1)")
    parser.add_argument("--write", metavar="PATH", help="also write the table as markdown (e.g. BENCHMARKS.md)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models_ = [m.strip() for m in args.models.split(",") if m.strip()]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [m for m in models_ if m not in WORKLOADS] + [c for c in configs if c not in CONFIGS]
    if bad or args.reps < 1 or args.processes < 1:
        parser.error(f"unknown model or configuration: {bad}" if bad else "--reps and --processes must be at least 1")
    if args.worker:
        m = measure(models_[0], configs[0], reps=args.reps)
        print(json.dumps(m.__dict__))
        return 0
    results = []
    for model_name in models_:
        runs: dict[str, list[Measurement]] = {c: [] for c in configs}
        for round_ in range(args.processes):  # configurations take turns, so slow spells hit them alike
            for config in configs:
                of = f" (process {round_ + 1}/{args.processes})" if args.processes > 1 else ""
                print(f"[bench] {model_name} / {config}{of} …", file=sys.stderr, flush=True)
                runs[config].append(run_isolated(model_name, config, args.reps))
        results.extend(combine(runs[c]) if args.processes > 1 else runs[c][0] for c in configs)
    print(table(results))
    if args.write:
        command = "fxopt bench " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
        write_markdown(args.write, results, command.strip())
        print(f"wrote {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
