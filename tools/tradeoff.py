"""``fxopt tradeoff MODEL``: speed against accuracy over compression levels and precisions, with the Pareto front.

Each point is ``fxopt.compile`` with one setting — MLP channel pruning (``prune-mlp-channels``), attention-head
pruning (``prune-attention-heads``), low-rank
factorization (``factorize-low-rank``), int8 (alone and after pruning) — timed against eager fp32 in the same
process (interleaved, median), with the cost model's FLOPs at the example shape and the accuracy on held-out
text: MiniLM's min pooled-embedding cosine on sentences of the Python license, SmolLM2's perplexity on the
Python license. Calibration (the pruning importance and the layer-wise refit) uses Python's reference
documentation (``pydoc_data``), never the evaluation text. Prints a table, draws speed against accuracy with
the Pareto front marked (``--plot``), and names the fastest point within the accuracy bound.

    fxopt tradeoff minilm --plot docs/tradeoff-minilm.png
    fxopt tradeoff smollm2 --plot docs/tradeoff-smollm2.png
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
from tabulate import tabulate

#: (label, fxopt.compile keyword arguments) of every point.
POINTS: list[tuple[str, dict]] = [
    ("fp32", {}),
    *[(f"prune MLP {r:.0%}", {"compress": {"prune_mlp": r}}) for r in (0.02, 0.05, 0.1, 0.25, 0.5)],
    ("prune MLP 10%, no refit", {"compress": {"prune_mlp": 0.1, "recover": False}}),
    *[(f"prune heads {r:.0%}", {"compress": {"prune_heads": r}}) for r in (0.05, 0.1, 0.2)],
    ("prune heads 10%, no refit", {"compress": {"prune_heads": 0.1, "recover": False}}),
    *[(f"low rank {e:.0%} energy", {"compress": {"low_rank": e}}) for e in (0.98, 0.9, 0.8)],
    ("int8", {"quantize": "int8"}),
    ("prune MLP 5% + int8", {"compress": {"prune_mlp": 0.05}, "quantize": "int8"}),
]
#: The accuracy bound the fastest point must hold, per model (issue 14): min cosine ≥ 0.99, perplexity ≤ +5%.
BOUNDS = {"minilm": ("min cosine", 0.99), "smollm2": ("perplexity", 0.05)}
#: A permissive budget for the int8 points: the trade-off measures accuracy, it does not refuse a point.
LOOSE_BUDGET = {"minilm": {"min_cosine": 0.0}, "smollm2": {"perplexity": 100.0}}


@dataclass
class Point:
    label: str
    speedup: float
    gflops: float
    accuracy: float  # min cosine (MiniLM) or relative perplexity increase (SmolLM2)
    compile_s: float
    note: str = ""


def calibration(real) -> list[dict]:
    """Unpadded calibration batches of Python's reference documentation (padding rows would skew the statistics)."""
    from fxopt.metrics import calibration_sentences

    if real.name == "minilm":
        return [dict(real.tokenizer(s, return_tensors="pt")) for s in calibration_sentences(256)]
    text = " ".join(calibration_sentences(400))
    ids = real.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    rows = [ids[i * 256:(i + 1) * 256].unsqueeze(0) for i in range(min(8, ids.numel() // 256))]
    return [{"input_ids": r, "attention_mask": torch.ones_like(r)} for r in rows]


class Accuracy:
    """The model's held-out metric against eager fp32."""

    def __init__(self, real):
        from fxopt import metrics

        self.real, self.metrics = real, metrics
        if real.name == "minilm":
            self.batch = real.tokenizer(metrics.evaluation_sentences(64), padding=True, return_tensors="pt")
            with torch.no_grad():
                self.reference = real.model(**self.batch).last_hidden_state
        else:
            self.reference = metrics.perplexity(self._logits(real.model), real.tokenizer)

    def _logits(self, model):
        return lambda ids: model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits

    def __call__(self, compiled) -> float:
        if self.real.name == "minilm":
            with torch.no_grad():
                out = compiled(**self.batch).last_hidden_state
            return self.metrics.min_cosine(self.reference, out, self.batch["attention_mask"])
        return self.metrics.perplexity(self._logits(compiled), self.real.tokenizer) / self.reference - 1

    def describe(self, value: float) -> str:
        return f"{value:.4f}" if self.real.name == "minilm" else f"{value:+.2%}"


def speedup(eager, candidate, inputs: dict, reps: int) -> float:
    """Median eager time over median candidate time, timed in turns."""
    times = {"eager": [], "candidate": []}
    with torch.no_grad():
        for fn in (eager, candidate):
            fn(**inputs)
        for _ in range(reps):
            for name, fn in (("eager", eager), ("candidate", candidate)):
                start = time.perf_counter()
                fn(**inputs)
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["eager"]) / statistics.median(times["candidate"])


def pareto(points: list[Point], higher_is_better: bool) -> list[Point]:
    """Points no other point beats on both speed and accuracy."""
    def better(a: Point, b: Point) -> bool:
        acc = a.accuracy >= b.accuracy if higher_is_better else a.accuracy <= b.accuracy
        strictly = a.speedup > b.speedup or (a.accuracy > b.accuracy if higher_is_better else a.accuracy < b.accuracy)
        return a.speedup >= b.speedup and acc and strictly
    return [p for p in points if not any(better(q, p) for q in points if q is not p)]


def _labels(spec: str) -> set[str]:
    """The labels of a comma-separated ``--points`` list; a label with a comma in it ("prune MLP 10%, no refit")
    is taken whole."""
    known, labels, parts = {label for label, _ in POINTS}, set(), [s.strip() for s in spec.split(",")]
    i = 0
    while i < len(parts):
        if i + 1 < len(parts) and f"{parts[i]}, {parts[i + 1]}" in known:
            labels.add(f"{parts[i]}, {parts[i + 1]}")
            i += 2
        else:
            labels.add(parts[i])
            i += 1
    return labels


def main(argv: list[str] | None = None) -> int:
    import fxopt
    from fxopt import models
    from fxopt.tools.bench import WORKLOADS, machine_header, positive_int

    parser = argparse.ArgumentParser(prog="fxopt tradeoff", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(BOUNDS), help="a bundled model (its accuracy metric needs its text)")
    parser.add_argument("--reps", type=positive_int, default=10, help="timed rounds per point (default 10)")
    parser.add_argument("--points", default=None, help="comma-separated labels to run (default: all)")
    parser.add_argument("--plot", default=None, metavar="PNG", help="draw speed vs accuracy, Pareto front marked")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the points as JSON")
    args = parser.parse_args(argv)
    from fxopt.machine import writable_output
    for flag, path in (("--plot", args.plot), ("--json", args.json)):
        if path and writable_output(path):
            parser.error(f"{flag}: {writable_output(path)}")
    chosen = POINTS if not args.points else [p for p in POINTS if p[0] in _labels(args.points)]
    if not chosen:
        parser.error(f"--points names none of: {', '.join(label for label, _ in POINTS)}")

    print(f"[tradeoff] {machine_header()}", file=sys.stderr, flush=True)
    real = models.load(args.model)
    batch, seq = WORKLOADS[args.model]
    inputs = real.inputs(batch, seq)
    calib = calibration(real)
    accuracy = Accuracy(real)
    higher = args.model == "minilm"
    points: list[Point] = []
    for i, (label, options) in enumerate(chosen, 1):
        print(f"[tradeoff] {i}/{len(chosen)} {label}: compiling …", file=sys.stderr, flush=True)
        kwargs = dict(options)
        if "compress" in kwargs or "quantize" in kwargs:
            kwargs["calibration"] = calib
        if "quantize" in kwargs:
            kwargs["accuracy_budget"] = LOOSE_BUDGET[args.model]
        start = time.perf_counter()
        try:
            compiled = fxopt.compile(real.model, inputs, **kwargs)
        except fxopt.FxoptError as e:
            print(f"[tradeoff] {label}: {e}", file=sys.stderr, flush=True)
            continue
        compile_s = time.perf_counter() - start
        report = compiled.report
        note = "; ".join(f"{r.name}: " + ", ".join(f"{k}={v}" for k, v in r.stats.items())
                         for r in report.pipeline.records if r.name in ("prune-attention-heads", "prune-mlp-channels", "factorize-low-rank"))
        point = Point(label, speedup(real.model, compiled, inputs, args.reps),
                      report._at(report.flops_optimized) / 1e9, accuracy(compiled), compile_s, note)
        points.append(point)
        print(f"[tradeoff] {label}: {point.speedup:.2f}× eager, {accuracy.describe(point.accuracy)}",
              file=sys.stderr, flush=True)
        del compiled
        gc.collect()

    front = pareto(points, higher)
    metric, bound = BOUNDS[args.model]
    within = [p for p in points if (p.accuracy >= bound if higher else p.accuracy <= bound)]
    best = max(within, key=lambda p: p.speedup) if within else None
    print(f"\n{args.model} {batch} × {seq}; accuracy: {metric} vs eager fp32 on held-out text\n")
    print(tabulate([[p.label, f"{p.speedup:.2f}×", f"{p.gflops:.1f}", accuracy.describe(p.accuracy),
                     "●" if p in front else "", f"{p.compile_s:.0f}", p.note] for p in points],
                   headers=["point", "speed vs eager", "GFLOP (cost model)", metric, "Pareto", "compile s",
                            "what the passes did"], tablefmt="github"))
    bound_text = f"{metric} ≥ {bound}" if higher else f"{metric} ≤ +{bound:.0%}"
    print(f"\nfastest within {bound_text}: "
          + (f"{best.label} ({best.speedup:.2f}×, {accuracy.describe(best.accuracy)})" if best else "none"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "metric": metric, "points": [asdict(p) for p in points]}, f, indent=1)
    if args.plot:
        plot(points, front, args.model, metric, bound, higher, args.plot)
        print(f"[tradeoff] plot written to {args.plot}", file=sys.stderr)
    return 0


def plot(points: list[Point], front: list[Point], model: str, metric: str, bound: float, higher: bool,
         path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fxopt.machine import cpu_model

    fig, ax = plt.subplots(figsize=(8, 5))
    for p in points:
        on_front = p in front
        ax.scatter(p.accuracy * (1 if higher else 100), p.speedup, s=60 if on_front else 30,
                   color="tab:red" if on_front else "tab:gray", zorder=3)
        ax.annotate(p.label, (p.accuracy * (1 if higher else 100), p.speedup), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ordered = sorted(front, key=lambda p: p.accuracy)
    ax.plot([p.accuracy * (1 if higher else 100) for p in ordered], [p.speedup for p in ordered], color="tab:red",
            linewidth=1, label="Pareto front")
    ax.axvline(bound * (1 if higher else 100), color="tab:blue", linestyle="--", linewidth=1,
               label=f"bound: {metric} {'≥' if higher else '≤ +'}{bound if higher else f'{bound:.0%}'}")
    ax.set_xlabel(f"{metric} vs eager fp32" + (" (higher is better)" if higher else ", % increase (lower is better)"))
    ax.set_ylabel("speed vs eager fp32 (×)")
    ax.set_title(f"fxopt compression trade-off: {model} ({cpu_model()})", fontsize=9)
    if not higher:
        ax.set_xscale("symlog", linthresh=1.0)  # +1% and +80,000% on one axis
        values = [p.accuracy * 100 for p in points]
        ax.set_xlim(max(max(values) * 2, 10), min(min(values), 0) - 0.5)  # better (lower) to the right
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
