"""``fxopt bench --warm-start``: how long a second compile takes in a new process, with the caches the first left.

For each model, two fresh processes share new, empty cache folders (``TORCHINDUCTOR_CACHE_DIR``,
``XDG_CACHE_HOME``): the first compiles cold, the second warm. Each prints the time of ``fxopt.compile`` plus the
first call (model loading not counted).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from tabulate import tabulate


def _worker(model_name: str) -> None:
    import fxopt
    from fxopt import models
    from fxopt.tools.bench import WORKLOADS

    real = models.load(model_name)
    inputs = real.inputs(*WORKLOADS[model_name])
    start = time.perf_counter()
    compiled = fxopt.compile(real.model, inputs)
    compiled(**inputs)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def main(argv: list[str] | None = None) -> int:
    from fxopt.tools.bench import machine_header, run_worker

    parser = argparse.ArgumentParser(prog="fxopt bench --warm-start", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,smollm2", help="comma-separated: minilm, smollm2")
    parser.add_argument("--worker", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return 0
    from fxopt.tools.bench import WORKLOADS
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in WORKLOADS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}: the warm-start bench runs the bundled {', '.join(WORKLOADS)}")
    rows = []
    print(f"[bench] {machine_header()}", file=sys.stderr, flush=True)
    for name in names:
        with tempfile.TemporaryDirectory() as caches:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(caches, "inductor")
            os.environ["XDG_CACHE_HOME"] = os.path.join(caches, "xdg")
            times = []
            for run in ("cold", "warm"):
                print(f"[bench] {name}: {run} compile …", file=sys.stderr, flush=True)
                times.append(run_worker("fxopt.tools.bench_warm_start", [name], f"{name} {run}")["seconds"])
        rows.append([name, f"{times[0]:.1f}", f"{times[1]:.1f}", f"{times[1] / times[0]:.0%}"])
    print(tabulate(rows, headers=["model", "first compile s", "second compile s (caches warm)", "second / first"],
                   tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
