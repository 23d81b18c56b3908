"""``fxopt bench --artifact``: compile once and save, then load in a new process, against compiling.

For each model, a first fresh process times ``fxopt.compile`` plus the first call (for SmolLM2 also the prefill
and decode graphs behind ``generate()``), records the compiled module's outputs on fixed real inputs and saves the
artifact; a second fresh process times ``fxopt.load`` plus the first call and compares its outputs with the first
process's. Model loading is not counted in the compile; the load process never loads the model (its inputs come
from the first process), and its whole run (Python start, imports, load, first call, checks) is reported too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from tabulate import tabulate

#: (model, save the generation graphs?) rows; SmolLM2 twice: the forward graph alone, and with generate()'s graphs.
ROWS = {"minilm": [("minilm", False)], "smollm2": [("smollm2", False), ("smollm2", True)]}


def _compile_worker(model_name: str, generation: bool, folder: str) -> None:
    import numpy as np

    import fxopt
    from fxopt import models
    from fxopt.tools.bench import WORKLOADS

    real = models.load(model_name)
    inputs = real.inputs(*WORKLOADS[model_name])
    start = time.perf_counter()
    compiled = fxopt.compile(real.model, inputs)
    first = compiled(**inputs)
    if generation:
        compiled.prepare_generation()
    compile_seconds = time.perf_counter() - start
    np.save(os.path.join(folder, "reference.npy"), first[0].numpy())
    ids = _prompt(real)
    np.savez(os.path.join(folder, "inputs.npz"), **{k: v.numpy() for k, v in inputs.items()},
             **({"prompt": ids.numpy()} if ids is not None else {}))
    tokens = compiled.generate(ids, max_new_tokens=16).numpy() if generation else None
    start = time.perf_counter()
    fxopt.save(compiled, os.path.join(folder, "model.fxopt"), generation=generation, tokenizer=real.tokenizer,
               verbose=False)
    save_seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in os.scandir(os.path.join(folder, "model.fxopt")) if f.is_file())
    if tokens is not None:
        np.save(os.path.join(folder, "tokens.npy"), tokens)
    print(json.dumps({"compile": compile_seconds, "save": save_seconds, "bytes": size}))


def _load_worker(model_name: str, generation: bool, folder: str) -> None:
    import numpy as np
    import torch

    import fxopt

    arrays = dict(np.load(os.path.join(folder, "inputs.npz")))  # the same inputs; no model is loaded here
    ids = torch.from_numpy(arrays.pop("prompt")) if "prompt" in arrays else None
    inputs = {k: torch.from_numpy(v) for k, v in arrays.items()}
    start = time.perf_counter()
    loaded = fxopt.load(os.path.join(folder, "model.fxopt"))
    out = loaded(**inputs)
    load_seconds = time.perf_counter() - start
    reference = torch.from_numpy(np.load(os.path.join(folder, "reference.npy")))
    result = {"load": load_seconds, "mapping": loaded.load_seconds,
              "max_diff": (out[0] - reference).abs().max().item(), "identical": bool(torch.equal(out[0], reference))}
    if generation:
        tokens = loaded.generate(ids, max_new_tokens=16).numpy()
        result["same_tokens"] = bool((tokens == np.load(os.path.join(folder, "tokens.npy"))).all())
    print(json.dumps(result))


def _prompt(real):
    return real.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                              add_generation_prompt=True, return_tensors="pt",
                                              return_dict=True)["input_ids"] if real.name == "smollm2" else None


def main(argv: list[str] | None = None) -> int:
    from fxopt.tools.bench import machine_header, run_worker

    parser = argparse.ArgumentParser(prog="fxopt bench --artifact", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,smollm2", help="comma-separated: minilm, smollm2")
    parser.add_argument("--worker", nargs=4, metavar=("STEP", "MODEL", "GENERATION", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        step, model, generation, folder = args.worker
        (_compile_worker if step == "compile" else _load_worker)(model, generation == "1", folder)
        return 0
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in ROWS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}: the artifact bench runs the bundled {', '.join(ROWS)}")
    print(f"[bench] {machine_header()}", file=sys.stderr, flush=True)
    rows = []
    for name, generation in [row for n in names for row in ROWS[n]]:
        what = f"{name} {'forward + generate()' if generation else 'forward'}"
        with tempfile.TemporaryDirectory() as folder:
            print(f"[bench] {what}: compile and save in one process …", file=sys.stderr, flush=True)
            built = run_worker("fxopt.tools.bench_artifact", ["compile", name, str(int(generation)), folder], what)
            print(f"[bench] {what}: load in a new process …", file=sys.stderr, flush=True)
            started = time.perf_counter()
            loaded = run_worker("fxopt.tools.bench_artifact", ["load", name, str(int(generation)), folder], what)
            process = time.perf_counter() - started
        same = "identical" if loaded["identical"] else f"max |diff| {loaded['max_diff']:.1e}"
        if generation:
            same += ", same 16 greedy tokens" if loaded["same_tokens"] else ", DIFFERENT greedy tokens"
        rows.append([what, f"{built['compile']:.1f}", f"{built['save']:.1f}", f"{built['bytes'] / 2**20:.0f}",
                     f"{loaded['load']:.2f}", f"{loaded['load'] / built['compile']:.1%}", f"{process:.1f}",
                     same])
    print(tabulate(rows, headers=["model", "compile + 1st call s", "save s", "MiB", "load + 1st call s",
                                  "load / compile", "new process, all in s", "vs the compiled module"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
