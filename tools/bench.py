"""``fxopt bench``: eager, torch.compile and fxopt side by side on the real models, with accuracy.

``--models`` takes the bundled models and any other MODEL (a local Hugging Face checkpoint, a ``config.json``
or ``module:factory``, see :mod:`fxopt.model_source`), at ``--batch``/``--seq`` (default: the bundled models'
workloads, 4 × 64 for others). ``--passes SPEC`` adds a row for fxopt with that pipeline, so a pass can be
A/B'd against the default one; ``--json PATH`` writes the rows (speed-up included) and ``--plot PATH`` draws them.

Each configuration runs in its own process (Dynamo caches compiled code per code object, so two
compiled copies of one model class in one process can share a graph compiled under the other's
settings). Inside that process the candidate is timed *interleaved* with eager on the same inputs:
warm-up first, then ``reps`` rounds of (eager, candidate), medians of each. Only ratios from one
process are compared; absolute times across processes are not. After each round the process times one fp32 and
one bf16 GEMM against the host's cached peaks (:mod:`fxopt.cost.host_rates`, the "host GEMM rate vs peak" column):
on a shared host the AMX unit slows down in spells, and a row's speed-up with it.

Adding a mode = adding a function to :data:`CONFIGS` that returns a callable with eager's signature.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tabulate import tabulate

from fxopt import metrics
from fxopt.cost import host_rates
from fxopt.pipeline import DEFAULT_PIPELINE
from fxopt.tools import bench_onnx

#: The shapes the benchmark runs: MiniLM batch 8 × 128 tokens, SmolLM2 prefill 1 × 256 tokens.
WORKLOADS = {"minilm": (8, 128), "smollm2": (1, 256)}
#: The shape for any other model, unless --batch/--seq say otherwise.
DEFAULT_SHAPE = (4, 64)
#: The row ``--passes SPEC`` adds: fxopt with that pipeline.
CUSTOM_PASSES = "fxopt --passes"


def workload(model: str, batch: int | None = None, seq: int | None = None) -> tuple[int, int]:
    """The (batch, seq) a model is benchmarked at."""
    default = WORKLOADS.get(model, DEFAULT_SHAPE)
    return batch or default[0], seq or default[1]


def call(fn, inputs):
    """Call a model on example inputs: a dict of keyword arguments or a tuple of positional ones."""
    return fn(**inputs) if isinstance(inputs, dict) else fn(*inputs)


def torch_compile_config(dynamic: bool):
    def build(model, inputs):
        compiled = torch.compile(model, dynamic=dynamic, options={"freezing": True})
        return lambda **kw: compiled(**kw), ""
    return build


def fxopt_config(**compile_kwargs):
    def build(model, inputs):
        import fxopt
        compiled = fxopt.compile(model, inputs, **compile_kwargs)
        plan = compiled.report.precision
        extra = compiled.report.pipeline.table() + (f"\n\n{plan.summary()}" if plan is not None else "")
        return compiled, extra
    build.predicts = True
    return build


def _float_outputs(fn):
    """A bf16 model's outputs as fp32, so that accuracy is computed like every other row's."""
    def call(**kw):
        out = fn(**kw)
        for key, value in out.items():
            if torch.is_tensor(value) and value.is_floating_point():
                out[key] = value.float()
        return out
    return call


def bf16_compile_config(model, inputs):
    """The bf16 peer: the whole model in bf16 (weights and activations), torch.compile with freezing."""
    import copy
    compiled = torch.compile(copy.deepcopy(model).to(torch.bfloat16), options={"freezing": True})
    return _float_outputs(compiled), ""


def torchao_int8_config(model, inputs):
    """torchao's int8 dynamic activation + int8 weight on every linear, torch.compile with freezing."""
    import copy
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    quantized = copy.deepcopy(model)
    quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
    compiled = torch.compile(quantized, options={"freezing": True})
    return lambda **kw: compiled(**kw), ""


def pt2e_static_int8_config(model, inputs, calibration):
    """PT2E static int8: export, X86InductorQuantizer's default config, calibrated on the bench's calibration
    batches (:func:`calibration_batches`, as fxopt's static mode), torch.compile with freezing (Inductor lowers the
    Q/DQ form to oneDNN int8 kernels)."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    extra = {"use_cache": False} if getattr(model.config, "use_cache", False) else {}  # no cache object out
    exported = torch.export.export(model, (), {**inputs, **extra}, strict=False).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    for batch in calibration:
        prepared(**batch, **extra)
    converted = convert_pt2e(prepared)
    # Inductor's global freezing flag, not options={"freezing": True}: with the option alone (torch 2.13, torchao
    # 0.18) the int8 weights reach Inductor as graph inputs, the weight prepack is not folded, and lowering fails
    # on onednn.qlinear_prepack. This is how torchao's PT2E tutorial compiles (its own process: see the docstring).
    torch._inductor.config.freezing = True
    compiled = torch.compile(converted)
    out_type = type(model(**inputs))
    return lambda **kw: out_type(**compiled(**kw, **extra)), ""


pt2e_static_int8_config.calibrated = True


def fxopt_static_config(model, inputs, calibration):
    """fxopt's static int8 (``quantize="int8-static"``), calibrated on the bench's calibration batches."""
    return fxopt_config(quantize="int8-static", calibration=calibration)(model, inputs)


fxopt_static_config.calibrated = fxopt_static_config.predicts = True


def calibration_batches(source, inputs, batch: int, seq: int) -> list:
    """What the static int8 rows calibrate on: the benchmark input, and for a model with a tokenizer one more
    batch of :func:`fxopt.metrics.calibration_sentences` (never the held-out text) — one padded sentence per row
    for an encoder, as it will embed them, and rows of running text for a causal LM."""
    if source.tokenizer is None or not isinstance(inputs, dict):
        return [inputs]
    sentences = metrics.calibration_sentences()
    if source.is_causal_lm:
        ids = source.tokenizer(" ".join(sentences), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        rows = ids.repeat(batch * seq // ids.numel() + 1)[: batch * seq].reshape(batch, seq)  # ~7,300 tokens
        extra = {"input_ids": rows, "attention_mask": torch.ones_like(rows)}
    else:
        extra = dict(source.tokenizer(sentences[:batch], padding="max_length", truncation=True, max_length=seq,
                                      return_tensors="pt"))
    return [inputs, {k: v for k, v in extra.items() if k in inputs}]


def predicted_speedup(compiled, batch: int, seq: int) -> float:
    """The cost model's prediction: the captured graph run op by op (eager) vs the optimized graph with Inductor's
    pointwise fusion modeled; GEMMs and attention at their measured times on this machine
    (:mod:`fxopt.cost.kernel_times`), every other node at its roofline time."""
    from fxopt.cost import estimate, predict_seconds
    from fxopt.cost.kernel_times import MeasuredKernels

    report = compiled.report
    kernels = MeasuredKernels()
    eager = predict_seconds(report.cost_captured, kernels=kernels, batch=batch, seq=seq)
    optimized = predict_seconds(estimate(compiled.graph_module, fused=True), kernels=kernels, batch=batch, seq=seq)
    kernels.save()
    return eager / optimized


#: configuration name → builder(model, example inputs) -> (callable, extra text)
CONFIGS: dict[str, Callable] = {
    "torch.compile static+freezing": torch_compile_config(dynamic=False),
    "torch.compile dynamic+freezing": torch_compile_config(dynamic=True),
    "bf16 + torch.compile + freezing": bf16_compile_config,
    "torchao int8 dynamic + compile": torchao_int8_config,
    "PT2E static int8 (X86InductorQuantizer)": pt2e_static_int8_config,
    **bench_onnx.CONFIGS,  # ONNX Runtime fp32 and int8, OpenVINO
    "fxopt": fxopt_config(),
    # the A/B that keeps select-gemm-backend honest: every linear left on oneDNN, as Inductor chooses
    "fxopt without select-gemm-backend": fxopt_config(disable=("select-gemm-backend",)),
    # the A/B of the unfrozen lowering (fxopt.unfrozen_lowering): the same graph with its weights frozen into the code
    "fxopt (weights frozen)": fxopt_config(freezing=True),
    "fxopt bf16": fxopt_config(quantize="bf16"),
    "fxopt int8": fxopt_config(quantize="int8"),
    "fxopt int8-static": fxopt_static_config,
    "fxopt auto": fxopt_config(quantize="auto"),
    # the recipe that keeps SmolLM2's answers (docs/quantization.md): int8 but down_proj and lm_head in bf16
    # (the default pipeline's target passes run after the portable ones appended here)
    "fxopt int8 + bf16 down_proj & lm_head": fxopt_config(passes=",".join(
        [*DEFAULT_PIPELINE, "smooth-activations", "quantize-dynamic-int8{skip=[lm_head,down_proj]}",
         "cast-linears-bf16"])),
}
#: the configurations a plain ``fxopt bench`` runs (the A/B above only on request, the ONNX peers where installed)
DEFAULT_CONFIGS = [c for c in CONFIGS if c not in ("fxopt without select-gemm-backend", "fxopt (weights frozen)")
                   and (c not in bench_onnx.CONFIGS or bench_onnx.installed(c))]


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
    host_rates: dict = field(default_factory=dict)  # fp32/bf16 GEMM rate vs the cached peaks while it ran

    @property
    def speedup(self) -> float:
        return statistics.median(self.runs) if self.runs else self.eager_ms / self.candidate_ms

    @property
    def spread(self) -> str:
        return f"{min(self.runs):.2f}–{max(self.runs):.2f}×" if len(self.runs) > 1 else "-"

    def to_json(self) -> dict:
        """The row as JSON, with the speed vs eager as a field (``speedup``; ``null`` for a failed row)."""
        row = {k: None if isinstance(v, float) and v != v else v for k, v in self.__dict__.items()}  # NaN → null
        speedup = self.speedup
        return {**row, "speedup": None if speedup != speedup else speedup,
                "failed": not self.accuracy and self.extra.startswith("failed")}


def combine(runs: list[Measurement]) -> Measurement:
    """One row from the same configuration measured in several processes: medians, the largest peak memory,
    and each process's speed-up kept for the spread (a process can run a few % fast or slow as a whole)."""
    first = runs[0]
    return Measurement(
        first.model, first.config, first.shape,
        statistics.median(m.eager_ms for m in runs), statistics.median(m.candidate_ms for m in runs),
        statistics.median(m.compile_s for m in runs), first.accuracy, first.extra, first.predicted,
        max(m.peak_rss_mb for m in runs), [m.speedup for m in runs],
        {k: statistics.median(m.host_rates[k] for m in runs) for k in first.host_rates
         if all(k in m.host_rates for m in runs)})


def accuracy(model_name: str, reference, output, inputs) -> dict:
    """On the benchmark input: max |Δ| / max |reference| of the main output (the first floating-point tensor:
    ``last_hidden_state``, ``logits``…), and next-token agreement where the output has logits."""
    ref, out = _main_output(reference), _main_output(output)
    if ref is None or out is None:
        return {}
    acc = {"max_rel_err": _rel(out.float(), ref.float())}
    if getattr(reference, "logits", None) is not None and ref.dim() == 3:
        acc["top1_agreement"] = metrics.next_token_agreement(ref, out)
    return acc


def _main_output(out):
    for leaf in torch.utils._pytree.tree_leaves(out if not hasattr(out, "to_tuple") else out.to_tuple()):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            return leaf
    return None


def held_out_accuracy(model_name: str, real, candidate) -> dict:
    """Accuracy on text no configuration was calibrated on (:mod:`fxopt.metrics`): MiniLM's min pooled cosine over
    64 sentences of :func:`fxopt.metrics.evaluation_text` (padded to the benchmark's 128 tokens, so static
    peers run them too); SmolLM2's perplexity on 2,048 of its tokens, relative to fp32's. Other models: none
    (their rows show the error on the benchmark input)."""
    if model_name not in WORKLOADS:
        return {}
    with torch.no_grad():
        if model_name == "minilm":
            batch, seq = WORKLOADS[model_name]
            enc = dict(real.tokenizer(metrics.evaluation_sentences(64), padding="max_length", truncation=True,
                                      max_length=seq, return_tensors="pt"))
            worst = 1.0
            for i in range(0, 64, batch):
                part = {k: v[i:i + batch] for k, v in enc.items()}
                worst = min(worst, metrics.min_cosine(real.model(**part).last_hidden_state,
                                                      candidate(**part).last_hidden_state, part["attention_mask"]))
            return {"min_cosine": worst}
        seq = WORKLOADS[model_name][1]

        def logits(fn):
            return lambda ids: fn(input_ids=ids, attention_mask=torch.ones_like(ids)).logits

        fp32 = metrics.perplexity(logits(real.model), real.tokenizer, window=seq)
        ppl = metrics.perplexity(logits(candidate), real.tokenizer, window=seq)
        return {"perplexity": ppl, "perplexity_fp32": fp32}


def _rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def format_accuracy(acc: dict) -> str:
    parts = []
    if "min_cosine" in acc:
        parts.append(f"min cos {acc['min_cosine']:.5f}")
    if "perplexity" in acc:
        parts.append(f"ppl {(acc['perplexity'] / acc['perplexity_fp32'] - 1) * 100:+.2f}%")
    if "top1_agreement" in acc:
        parts.append(f"top-1 {acc['top1_agreement'] * 100:.1f}%")
    if "max_rel_err" in acc:
        parts.append(f"rel err {acc['max_rel_err']:.1e}")
    return ", ".join(parts) or "-"


def measure(model_name: str, config: str, reps: int = 20, warmup: int = 3, build: Callable | None = None, *,
            batch: int | None = None, seq: int | None = None, passes: str | None = None) -> Measurement:
    """Build one configuration and time it interleaved with eager, in this process. ``model_name`` is any
    MODEL (:mod:`fxopt.model_source`); ``passes`` is the spec of the :data:`CUSTOM_PASSES` row. Every row, peers
    and eager included, runs under the heap policy ``fxopt.compile`` sets (:func:`fxopt.memory.retain_freed_memory`),
    so that the ratios compare compiled code, not allocators."""
    from fxopt.memory import retain_freed_memory
    from fxopt.model_source import load_source

    retain_freed_memory()

    source = load_source(model_name)
    batch, seq = workload(model_name, batch, seq)
    inputs = source.inputs(batch, seq)
    model = source.model
    build = build or (fxopt_config(passes=passes) if config == CUSTOM_PASSES else CONFIGS[config])
    with torch.no_grad():
        start = time.perf_counter()
        if getattr(build, "calibrated", False):
            candidate, extra = build(model, inputs, calibration_batches(source, inputs, batch, seq))
        else:
            candidate, extra = build(model, inputs)
        output = call(candidate, inputs)  # first call: compilation happens here for torch.compile
        compile_s = time.perf_counter() - start
        reference = call(model, inputs)
        for _ in range(warmup):
            call(model, inputs)
            call(candidate, inputs)
        eager_t, cand_t = [], []
        # the peak before the GEMM probe's operands: the model's, its compilation's and its first calls' memory
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        sampler = host_rates.RateSampler()
        for _ in range(reps):
            t0 = time.perf_counter()
            call(model, inputs)
            t1 = time.perf_counter()
            call(candidate, inputs)
            t2 = time.perf_counter()
            eager_t.append(t1 - t0)
            cand_t.append(t2 - t1)
            sampler.sample()  # after the round's timings, never inside them
    predicted = _predicted(candidate, batch, seq) if getattr(build, "predicts", False) else None
    acc = {**accuracy(model_name, reference, output, inputs)}
    if source.kind == "bundled":
        from fxopt import models
        acc.update(held_out_accuracy(model_name, models.load(model_name), candidate))
    return Measurement(model_name, config, f"{batch}×{seq}", statistics.median(eager_t) * 1e3,
                       statistics.median(cand_t) * 1e3, compile_s, acc, extra, predicted, peak_mb,
                       host_rates=sampler.rates())


def _predicted(candidate, batch: int, seq: int) -> float | None:
    try:
        return predicted_speedup(candidate, batch, seq)
    except ValueError:  # a model whose dynamic dims are not batch and seq
        return None


def run_worker(module: str, args: list[str], what: str) -> dict:
    """Run ``python -m module --worker *args`` in a fresh process and return the JSON object it prints last."""
    cmd = [sys.executable, "-m", module, "--worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    line = next((l for l in reversed(proc.stdout.splitlines()) if l.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        raise WorkerFailed(what, proc.stderr)
    return json.loads(line)


class WorkerFailed(RuntimeError):
    """A benchmark configuration that could not run; its row says why instead of ending the benchmark."""

    def __init__(self, what: str, stderr: str):
        errors = [l.strip() for l in stderr.splitlines() if re.match(r"^[\w.]*(Error|Exception)\b", l.strip())]
        self.reason = (errors[-1] if errors else stderr.strip().splitlines()[-1] if stderr.strip() else "no output")
        super().__init__(f"benchmark worker for {what} failed:\n{stderr[-3000:]}")


def run_isolated(model_name: str, config: str, reps: int, *, batch: int | None = None, seq: int | None = None,
                 passes: str | None = None) -> Measurement:
    """Run :func:`measure` in a fresh Python process and read its JSON result (a failed configuration becomes a
    row that says why)."""
    args = ["--models", model_name, "--configs", config, "--reps", str(reps)]
    args += [f"--batch={batch}"] if batch else []
    args += [f"--seq={seq}"] if seq else []
    args += [f"--passes={passes}"] if passes else []
    try:
        return Measurement(**run_worker("fxopt.tools.bench", args, f"{model_name} / {config}"))
    except WorkerFailed as e:
        print(f"[bench] {model_name} / {config} failed: {e.reason}", file=sys.stderr, flush=True)
        batch, seq = workload(model_name, batch, seq)
        return Measurement(model_name, config, f"{batch}×{seq}", float("nan"), float("nan"), float("nan"), {},
                           f"failed: {e.reason[:300]}")


def table(results: list[Measurement]) -> str:
    rows = [[m.model, m.shape, m.config, f"{m.eager_ms:.1f}", f"{m.candidate_ms:.1f}", f"{m.speedup:.2f}×",
             m.spread, _prediction(m), host_rates.describe(m.host_rates), f"{m.compile_s:.1f}",
             f"{m.peak_rss_mb:.0f}", format_accuracy(m.accuracy)]
            if m.accuracy else [m.model, m.shape, m.config, *["-"] * 8, m.extra] for m in results]
    return tabulate(rows, headers=["model", "batch×seq", "configuration", "eager ms", "ms", "speed vs eager",
                                   "spread over processes", "predicted (error)", "host GEMM rate vs peak",
                                   "compile s", "peak RSS MB", "accuracy vs fp32 (held-out text)"],
                    tablefmt="github")


def noted_table(results: list[Measurement]) -> str:
    """:func:`table`, and under it the note of :func:`fxopt.cost.host_rates.slow_spell_note` where rows ran slow."""
    note = host_rates.slow_spell_note([m.host_rates for m in results if m.host_rates])
    return table(results) + (f"\n\n{note}" if note else "")


def _prediction(m: Measurement) -> str:
    if m.predicted is None:
        return "-"
    return f"{m.predicted:.2f}× ({(m.predicted - m.speedup) / m.speedup * 100:+.0f}%)"


def machine_header() -> str:
    """The CPU model, its ISA features (AVX-512, VNNI, AMX, BF16), cores, torch, and the measured peaks."""
    from fxopt.cost.roofline import machine_peaks
    from fxopt.machine import machine_key

    return (f"{machine_key().describe()}, {os.cpu_count()} cores; peaks measured by fxopt.cost.machine_peaks(): "
            f"{machine_peaks().describe()}")


def write_markdown(path: str, results: list[Measurement], command: str) -> None:
    machine = machine_header()
    passes = "\n\n".join(f"Per-pass table, {m.config} on {m.model}:\n\n```\n{m.extra}\n```"
                           for m in results if m.extra and m.accuracy)
    text = (f"# Benchmarks\n\nMeasured {datetime.date.today().isoformat()} on this project's CPU machine "
            f"({machine}). Medians of interleaved runs; each configuration in its own process, with eager "
            f"timed in that same process, so compare the *speed vs eager* ratios, not absolute times "
            f"across rows. With several processes per configuration (`--processes`), the speed is the "
            f"median of the processes' ratios and the spread their range.\n\n"
            f"Command:\n\n```\n{command}\n```\n\n{noted_table(results)}\n\n{passes}\n")
    with open(path, "w") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fxopt bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,smollm2",
                        help="comma-separated MODELs: minilm, smollm2, a Hugging Face checkpoint directory, a "
                             "config.json or module:factory (default minilm,smollm2)")
    parser.add_argument("--configs", default=None,
                        help=f"comma-separated from: {', '.join(CONFIGS)} (default: all but the A/B rows; "
                             "with --passes: fxopt)")
    parser.add_argument("--passes", metavar="SPEC", help=f"add a row '{CUSTOM_PASSES}': fxopt with this pipeline spec")
    parser.add_argument("--batch", type=positive_int, help="batch size (default: 8 for minilm, 1 for smollm2, 4)")
    parser.add_argument("--seq", type=positive_int, help="sequence length (default: 128, 256, 64)")
    parser.add_argument("--reps", type=positive_int, default=20, help="timed rounds (after warm-up); default 20")
    parser.add_argument("--processes", type=positive_int, default=1,
                        help="measure each configuration in this many fresh processes, taking turns (default 1)")
    parser.add_argument("--write", metavar="PATH", help="also write the table as markdown (e.g. BENCHMARKS.md)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON (speed-up included)")
    parser.add_argument("--plot", metavar="PATH", help="also draw speed vs eager per configuration, with accuracy "
                                                       "(PNG; needs matplotlib: pip install 'fxopt[plot]')")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models_ = [m.strip() for m in args.models.split(",") if m.strip()]
    default_configs = ["fxopt"] if args.passes else DEFAULT_CONFIGS
    configs = [c.strip() for c in args.configs.split(",") if c.strip()] if args.configs else list(default_configs)
    if args.passes and CUSTOM_PASSES not in configs:
        configs.append(CUSTOM_PASSES)
    problem = _check_arguments(models_, configs, args)
    if problem:
        parser.error(problem)
    shape = {"batch": args.batch, "seq": args.seq}
    if args.worker:
        m = measure(models_[0], configs[0], reps=args.reps, passes=args.passes, **shape)
        print(json.dumps(m.__dict__))
        return 0
    print(f"[bench] {machine_header()}", file=sys.stderr, flush=True)
    results = []
    per_model = len(configs) * args.processes
    total = len(models_) * per_model
    done = 0
    seconds: dict[str, list[float]] = {}  # each finished run's duration, per model
    for m_index, model_name in enumerate(models_):
        runs: dict[str, list[Measurement]] = {c: [] for c in configs}
        for round_ in range(args.processes):  # configurations take turns, so slow spells hit them alike
            for config in configs:
                of = f" (process {round_ + 1}/{args.processes})" if args.processes > 1 else ""
                left_here = per_model - len(seconds.get(model_name, []))
                eta = _eta(seconds, model_name, left_here, per_model * (len(models_) - m_index - 1))
                done += 1
                print(f"[bench {done}/{total}{eta}] {model_name} / {config}{of} …", file=sys.stderr, flush=True)
                start = time.perf_counter()
                runs[config].append(run_isolated(model_name, config, args.reps, passes=args.passes, **shape))
                seconds.setdefault(model_name, []).append(time.perf_counter() - start)
        results.extend(combine(runs[c]) if args.processes > 1 else runs[c][0] for c in configs)
    print(f"{machine_header()}\n\n{noted_table(results)}")
    command = "fxopt bench " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    if args.write:
        write_markdown(args.write, results, command.strip())
        print(f"wrote {args.write}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command.strip(), "machine": machine_header(), "date": datetime.date.today().isoformat(),
                       "results": [m.to_json() for m in results]}, f, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        from fxopt.tools.bench_plot import plot_speedups
        plot_speedups(results, args.plot, title=machine_header())
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _eta(seconds: dict[str, list[float]], model: str, left_here: int, left_after: int) -> str:
    """", about N min left": this model's remaining runs at its own average so far (models differ by 5× here),
    later models' runs at the average of every run; empty before the first run ends."""
    every = [t for ts in seconds.values() for t in ts]
    if not every:
        return ""
    here = seconds.get(model) or every
    minutes = (left_here * sum(here) / len(here) + left_after * sum(every) / len(every)) / 60
    return f", about {minutes:.0f} min left"


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _check_arguments(models_: list[str], configs: list[str], args) -> str | None:
    """What is wrong with the arguments, checked before any model loads (None when nothing is)."""
    from fxopt.machine import writable_output
    from fxopt.model_source import spec_problem

    for m in models_:
        if spec_problem(m):
            return spec_problem(m)
    bad = [c for c in configs if c not in CONFIGS and c != CUSTOM_PASSES]
    if bad:
        return f"unknown configuration(s) {bad}; choose from: {', '.join(CONFIGS)}"
    if CUSTOM_PASSES in configs and not args.passes:
        return f"the configuration {CUSTOM_PASSES!r} needs --passes SPEC"
    for flag in ("write", "json", "plot"):
        problem = writable_output(getattr(args, flag)) if getattr(args, flag) else None
        if problem:
            return f"--{flag}: {problem}"
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return "--plot needs matplotlib: pip install 'fxopt[plot]'"
    if args.passes:
        from fxopt.errors import FxoptError
        from fxopt.model_source import import_factory_module, is_factory_spec
        from fxopt.pipeline import build_pipeline
        try:
            for m in filter(is_factory_spec, models_):  # a factory's module may register the passes the spec names
                import_factory_module(m)
            build_pipeline(args.passes)
        except FxoptError as e:
            return f"--passes: {e}"
    return None


if __name__ == "__main__":
    sys.exit(main())
