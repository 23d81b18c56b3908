"""``fxopt bench --warm-start``: how long a second compile takes in a new process, with the caches the first left.

For each model and precision (``--modes fp32,int8,int8-static``: fp32 or any ``quantize`` mode), two fresh
processes share new, empty cache folders (``TORCHINDUCTOR_CACHE_DIR``, ``XDG_CACHE_HOME``): the first compiles
cold, the second warm. Each prints the time of ``fxopt.compile`` plus the first call (model loading not counted;
a static mode's calibration, on the bench's calibration batches, counted). With more than one mode, the table
also gives each mode's compile time against fp32's, cold against cold and warm against warm, and for a quantized
mode whether each compile searched for its precision plan or took it from the plan cache (:mod:`fxopt.plan_cache`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from tabulate import tabulate


def _worker(model_name: str, mode: str) -> None:
    import fxopt
    from fxopt.model_source import load_source
    from fxopt.quant_planner import SEARCHED_MODES, STATIC_MODES
    from fxopt.tools.bench import WORKLOADS, calibration_batches

    source = load_source(model_name)
    shape = WORKLOADS[model_name]
    inputs = source.inputs(*shape)
    start = time.perf_counter()
    options = {} if mode == "fp32" else {"quantize": mode}
    if mode in STATIC_MODES:
        options["calibration"] = calibration_batches(source, inputs, *shape)
    compiled = fxopt.compile(source.model, inputs, **options)
    compiled(**inputs)
    plan = compiled.report.precision
    searched = plan is not None and plan.mode in SEARCHED_MODES
    print(json.dumps({"seconds": time.perf_counter() - start,
                      "plan": ("cached" if plan.cached else "searched") if searched else None}))


def main(argv: list[str] | None = None) -> int:
    from fxopt.quant_planner import MODES
    from fxopt.tools.bench import WORKLOADS, machine_header, run_worker

    parser = argparse.ArgumentParser(prog="fxopt bench --warm-start", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,smollm2", help="comma-separated: minilm, smollm2")
    parser.add_argument("--modes", default="fp32",
                        help=f"comma-separated precisions to compile: fp32, {', '.join(MODES)} (default fp32)")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return 0
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in WORKLOADS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}: the warm-start bench runs the bundled {', '.join(WORKLOADS)}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m != "fp32" and m not in MODES]
    if bad or not modes:
        parser.error(f"unknown mode(s) {bad}: choose from fp32, {', '.join(MODES)}")
    rows = []
    print(f"[bench] {machine_header()}", file=sys.stderr, flush=True)
    for name in names:
        fp32 = None
        for mode in modes:
            with tempfile.TemporaryDirectory() as caches:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(caches, "inductor")
                os.environ["XDG_CACHE_HOME"] = os.path.join(caches, "xdg")
                times, plans = [], []
                for run in ("cold", "warm"):
                    print(f"[bench] {name} {mode}: {run} compile …", file=sys.stderr, flush=True)
                    result = run_worker("fxopt.tools.bench_warm_start", [name, mode], f"{name} {mode} {run}")
                    times.append(result["seconds"])
                    plans.append(result.get("plan") or "–")
            fp32 = times if mode == "fp32" else fp32
            row = [name, mode, f"{times[0]:.1f}", f"{times[1]:.1f}", f"{times[1] / times[0]:.0%}", " / ".join(plans)]
            if len(modes) > 1:
                row += [f"{times[0] / fp32[0]:.2f}×", f"{times[1] / fp32[1]:.2f}×"] if fp32 else ["–", "–"]
            rows.append(row)
    headers = ["model", "mode", "first compile s", "second compile s (caches warm)", "second / first",
               "precision plan (first / second)"]
    if len(modes) > 1:
        headers += ["first vs fp32's first", "second vs fp32's second"]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
