"""The ``fxopt`` command.

    fxopt optimize minilm          compile a bundled model, print a before/after table
    fxopt optimize ./my-checkpoint --batch 4 --seq 64   ... any local Hugging Face checkpoint, or module:factory
    fxopt optimize minilm --quantize auto   ... with int8/bf16 linears planned to hold an accuracy budget
    fxopt optimize minilm --save minilm.fxopt   ... and save it: fxopt.load() runs it without recompiling
    fxopt embed minilm.fxopt docs.txt --out docs.npy [--ray]   sentence embeddings of a file, here or on Ray
    fxopt tradeoff minilm --plot t.png   speed vs accuracy: pruning, low rank, int8; Pareto front
    fxopt bench                    eager vs torch.compile vs fxopt on the real models
    fxopt bench --generate         generation: time to first token, decode tokens/s (SmolLM2)
    fxopt bench --warm-start       a second compile in a new process with warm caches, against the first
    fxopt bench --artifact         save, then load in a new process, against compiling (fxopt.save / fxopt.load)
    fxopt bench --embed            fxopt embed in one process and on a local Ray (1 × all threads, n × 1 thread)
    fxopt generate smollm2 "What is the capital of France?"   stream an answer, then tokens/s
    fxopt generate smollm2.fxopt "What is the capital of France?"   ... from a saved artifact, without compiling
    fxopt chat smollm2             talk to it (one compilation, then a prompt per line)
    fxopt dump minilm --format table   the graph, per node, after the pipeline (see fxopt dump -h)
    fxopt passes                   list the passes fxopt knows (its own and installed plugins)
    fxopt cache [clear]            list (or delete) the cached machine peaks, GEMM timings, check and verification verdicts and precision plans
"""
from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from fxopt.decode_graphs import DECODE_PRECISIONS
from fxopt.quant_planner import MODES, STATIC_MODES
from fxopt.tools.bench import positive_int


def _optimize(args) -> int:
    from fxopt.tools.bench import format_accuracy, measure, workload
    import fxopt

    if args.passes:
        from fxopt.model_source import import_factory_module, is_factory_spec
        if is_factory_spec(args.model):
            import_factory_module(args.model)  # it may register the passes the spec names
        fxopt.build_pipeline(args.passes)  # a bad spec is one line before any model loads
    holder = {}

    def build(model, inputs, calibration=None):
        compiled = fxopt.compile(model, inputs, passes=args.passes, verbose=args.verbose, quantize=args.quantize,
                                 accuracy_budget=args.accuracy_budget, calibration=calibration)
        holder["compiled"] = compiled
        return compiled, ""

    # a static mode calibrates on the bench's calibration batches (the example and calibration text)
    build.calibrated = args.quantize in STATIC_MODES

    print(f"[fxopt] loading {args.model}, compiling, then timing {args.reps} interleaved rounds…", file=sys.stderr)
    batch, seq = workload(args.model, args.batch, args.seq)
    m = measure(args.model, "fxopt", reps=args.reps, build=build, batch=batch, seq=seq)
    report = holder["compiled"].report
    print(f"\n{args.model}: batch {batch} × {seq} tokens\n")
    print(tabulate([
        ["graph nodes", report.nodes_captured, report.nodes_optimized],
        ["median latency (ms)", f"{m.eager_ms:.1f}", f"{m.candidate_ms:.1f}"],
        ["speed vs eager", "1.00×", f"{m.speedup:.2f}×"],
        ["accuracy vs eager", "reference", format_accuracy(m.accuracy)],
        ["compile time (s)", "-", f"{m.compile_s:.1f}"],
    ], headers=["", "before (eager)", "after (fxopt)"], tablefmt="github"))
    print(f"\n{report.pipeline.table()}")
    if report.precision is not None:
        print(f"\n{report.precision}")
    if args.save:
        _save(holder["compiled"], args)
    return 0


def _save(compiled, args) -> None:
    import time

    import fxopt
    from fxopt.model_source import is_factory_spec, load_source

    # bundled models come from a per-process cache; a checkpoint's tokenizer files are read again
    tokenizer = None if is_factory_spec(args.model) else load_source(args.model).tokenizer
    start = time.perf_counter()
    path = fxopt.save(compiled, args.save, tokenizer=tokenizer)
    print(f"\nsaved {path} in {time.perf_counter() - start:.0f} s (compile: {compiled.report.lowering_seconds:.0f} s "
          f"lowering); load it with fxopt.load({str(path)!r})")


#: Cache slots of ``fxopt generate``/``chat``: the prompt plus the answer must fit.
CHAT_CACHE_LEN = 1024


def _load_causal_lm(name: str, decode_precision: str = "fp32"):
    from pathlib import Path
    from types import SimpleNamespace

    from fxopt.models import load
    import fxopt

    if (Path(name) / "manifest.json").is_file():  # a saved artifact: no compilation
        if decode_precision != "fp32":
            print(f"fxopt: error: --decode-precision applies to a compile; the artifact {name} keeps the precision "
                  "it was saved with", file=sys.stderr)
            raise SystemExit(2)
        loaded = fxopt.load(name)
        if loaded.tokenizer is None or not loaded.manifest.get("generation"):
            print(f"fxopt: error: the artifact {name} needs its tokenizer and generation graphs; save it with "
                  "fxopt optimize smollm2 --save PATH", file=sys.stderr)
            raise SystemExit(2)
        generator = loaded.prepare_generation()
        print(f"[fxopt] loaded {name} in {loaded.load_seconds:.1f} s", file=sys.stderr, flush=True)
        return SimpleNamespace(tokenizer=loaded.tokenizer), generator
    if name != "smollm2":
        print(f"fxopt: error: {name!r} is not a bundled causal LM or a saved artifact; the bundled one is smollm2",
              file=sys.stderr)
        raise SystemExit(2)
    real = load(name)
    print(f"[fxopt] compiling {name}'s prefill and decode graphs (about a minute each)…", file=sys.stderr,
          flush=True)
    generator = fxopt.compile_generator(real.model, real.inputs(1, 32), max_cache_len=CHAT_CACHE_LEN,
                                        decode_precision=decode_precision)
    return real, generator


def _answer(real, generator, text: str, args) -> None:
    from transformers import TextStreamer

    if args.raw:
        inputs = real.tokenizer(text, return_tensors="pt")
    else:
        inputs = real.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                    return_tensors="pt", return_dict=True)
    sampling = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p} if args.sample else \
        {"do_sample": False}
    streamer = TextStreamer(real.tokenizer, skip_prompt=True, skip_special_tokens=True)
    generator.generate(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                       max_new_tokens=args.max_new_tokens, streamer=streamer, **sampling)
    stats = generator.last_stats
    print(f"[fxopt] {stats.new_tokens} tokens; {stats.describe()}", file=sys.stderr, flush=True)


def _generate(args) -> int:
    real, generator = _load_causal_lm(args.model, args.decode_precision)
    _answer(real, generator, args.prompt, args)
    return 0


def _chat(args) -> int:
    real, generator = _load_causal_lm(args.model, args.decode_precision)
    print("[fxopt] ready: type a prompt and press Enter (an empty line or Ctrl-D ends)", file=sys.stderr, flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        _answer(real, generator, line.strip(), args)
    return 0


def _add_generation_options(p) -> None:
    p.add_argument("model", help="smollm2, or an artifact saved from it (fxopt optimize smollm2 --save PATH)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="default 128")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7, help="with --sample (default 0.7)")
    p.add_argument("--top-p", type=float, default=0.9, help="with --sample (default 0.9)")
    p.add_argument("--raw", action="store_true", help="do not wrap the prompt in the model's chat template")
    p.add_argument("--decode-precision", choices=DECODE_PRECISIONS, default="fp32",
                   help="weights of the decode graph (default fp32; int8-weight-only decodes several times faster, "
                        "checked against fp32's tokens before the first answer)")


def _cache(args) -> int:
    from fxopt.machine import cache_dir, clear_cache

    if args.action == "clear":
        removed = clear_cache()
        print(f"removed {len(removed)} cached measurement file(s) from {cache_dir()}")
        return 0
    files = sorted(cache_dir().glob("*.json")) if cache_dir().is_dir() else []
    print(f"{cache_dir()}: {len(files)} file(s)" + "".join(f"\n  {f.name}" for f in files))
    return 0


def _passes(args) -> int:
    from fxopt.pipeline import default_pipeline
    from fxopt.registry import available_passes

    order = {name: i + 1 for i, name in enumerate(default_pipeline())}
    rows = [[p.name, p.level, order.get(p.name, ""), p.summary] for p in available_passes().values()]
    print(tabulate(rows, headers=["pass", "level", "# in default", "what it does"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fxopt", description="A torch.fx pass compiler for fast inference.")
    sub = parser.add_subparsers(dest="command", required=True)

    opt = sub.add_parser("optimize", help="compile a model and print a before/after table")
    opt.add_argument("model", help="minilm, smollm2, a Hugging Face checkpoint directory, a config.json, or "
                                   "module:factory (a function returning (model, example_inputs))")
    opt.add_argument("--batch", type=positive_int, help="example batch (default: 8 minilm, 1 smollm2, else 4)")
    opt.add_argument("--seq", type=positive_int, help="example sequence length (default: 128, 256, else 64)")
    opt.add_argument("--passes", default=None, help="pipeline spec, e.g. 'eliminate-dead-nodes' (default pipeline)")
    opt.add_argument("--reps", type=int, default=10, help="timed rounds (default 10)")
    opt.add_argument("--verbose", action="store_true", help="print progress per pass")
    opt.add_argument("--quantize", choices=MODES, default=None,
                     help="run linears in int8/bf16 under an accuracy budget ('auto' plans per linear)")
    opt.add_argument("--accuracy-budget", type=float, default=None, metavar="BOUND",
                     help="with --quantize: MiniLM's min pooled cosine (default 0.995) or SmolLM2's relative "
                          "perplexity increase (default 0.02)")
    opt.add_argument("--save", default=None, metavar="PATH",
                     help="save the compiled model as an artifact folder (fxopt.load(PATH) runs it without "
                          "recompiling; see README 'Saved artifacts')")
    opt.set_defaults(run=_optimize)

    bench = sub.add_parser("bench", help="eager vs torch.compile vs fxopt, side by side", add_help=False)
    bench.set_defaults(run=None)

    dump = sub.add_parser("dump", help="show a graph before/during/after the pipeline (fxopt dump -h)",
                          add_help=False)
    dump.set_defaults(run=None)

    tradeoff = sub.add_parser("tradeoff", help="speed vs accuracy over compression levels and precisions, with the "
                                               "Pareto front (fxopt tradeoff -h)", add_help=False)
    tradeoff.set_defaults(run=None)

    embed = sub.add_parser("embed", help="embeddings of a text file from a saved artifact, here or on Ray "
                                         "(fxopt embed -h)", add_help=False)
    embed.set_defaults(run=None)

    gen = sub.add_parser("generate", help="stream a causal LM's answer to a prompt, then tokens/s")
    _add_generation_options(gen)
    gen.add_argument("prompt", help="the prompt, e.g. 'What is the capital of France?'")
    gen.set_defaults(run=_generate)

    chat = sub.add_parser("chat", help="compile a causal LM once, then answer a prompt per line of input")
    _add_generation_options(chat)
    chat.set_defaults(run=_chat)

    cache = sub.add_parser("cache", help="list fxopt's caches (machine peaks, GEMM timings, numeric-check and verification verdicts, precision plans), or clear them")
    cache.add_argument("action", nargs="?", choices=["list", "clear"], default="list")
    cache.set_defaults(run=_cache)

    lst = sub.add_parser("passes", help="list the available passes")
    lst.set_defaults(run=_passes)

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and "--warm-start" in argv:
        from fxopt.tools.bench_warm_start import main as warm_start_main
        return warm_start_main([a for a in argv[1:] if a != "--warm-start"])
    if argv[:1] == ["bench"] and "--artifact" in argv:
        from fxopt.tools.bench_artifact import main as artifact_main
        return artifact_main([a for a in argv[1:] if a != "--artifact"])
    if argv[:1] == ["bench"] and "--embed" in argv:
        from fxopt.tools.bench_embed import main as embed_bench_main
        return embed_bench_main([a for a in argv[1:] if a != "--embed"])
    if argv[:1] == ["bench"] and "--generate" in argv:
        from fxopt.tools.bench_generate import main as bench_generate_main
        return bench_generate_main([a for a in argv[1:] if a != "--generate"])
    if argv[:1] == ["bench"]:
        from fxopt.tools.bench import main as bench_main
        return bench_main(argv[1:])
    if argv[:1] == ["dump"]:
        from fxopt.tools.dump_graph import main as dump_main
        return dump_main(argv[1:])
    if argv[:1] == ["tradeoff"]:
        from fxopt.tools.tradeoff import main as tradeoff_main
        return tradeoff_main(argv[1:])
    if argv[:1] == ["embed"]:
        from fxopt.tools.embed import main as embed_main
        return embed_main(argv[1:])
    args = parser.parse_args(argv)
    if getattr(args, "reps", 1) < 1:
        parser.error("--reps must be at least 1")
    if getattr(args, "max_new_tokens", 1) < 1:
        parser.error("--max-new-tokens must be at least 1")
    if getattr(args, "accuracy_budget", None) is not None and args.quantize is None:
        parser.error("--accuracy-budget needs --quantize")
    if args.command == "optimize":
        from fxopt.model_source import spec_problem
        if spec_problem(args.model):
            parser.error(spec_problem(args.model))
        if args.save:
            from fxopt.artifact import target_problem
            if target_problem(args.save):
                parser.error(f"--save: {target_problem(args.save)}")
    try:
        return args.run(args)
    except Exception as e:  # noqa: BLE001 - fxopt's own errors print as one line
        from fxopt.errors import FxoptError
        if isinstance(e, FxoptError):
            print(f"fxopt: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
