"""``python -m fxopt.tools.host_spells``: a model's speed-up over eager, round by round, against the host's AMX rate.

On a shared host the bf16/int8 matrix units slow down in spells while fp32 barely moves (:mod:`fxopt.cost.host_rates`),
so one bench row can land anywhere in a range. This tool shows the range: in one process it calls eager and each
``quantize`` mode in turns for ``--seconds``, and after every round samples the host's fp32 and bf16 GEMM rates. It
prints the median speed-up per band of the bf16 rate and, with ``--plot``, draws every round and the band medians.

    python -m fxopt.tools.host_spells --model minilm --modes bf16,int8,int8-static --seconds 150 \\
        --json docs/host-spells-minilm.json --plot docs/host-spells-minilm.png
"""
from __future__ import annotations

import argparse
import json
import statistics
import textwrap
import time

import torch

from fxopt.cost.host_rates import RateSampler

#: bands of the bf16 rate (% of its quiet peak) the summary and the plot's medians group rounds by
BANDS = (0, 40, 55, 70, 85, 1000)


def measure(model_name: str, modes: list[str], seconds: float) -> list[dict]:
    """Rounds of (eager, each mode) calls, each followed by two rate samples: seconds per call and rates."""
    import fxopt
    from fxopt.model_source import load_source
    from fxopt.tools.bench import calibration_batches, call, workload

    source = load_source(model_name)
    batch, seq = workload(model_name)
    inputs = source.inputs(batch, seq)
    fns = {"eager": source.model}
    for mode in modes:
        calibration = calibration_batches(source, inputs, batch, seq) if mode == "int8-static" else None
        fns[mode] = fxopt.compile(source.model, inputs, quantize=mode, calibration=calibration)
    rounds, sampler = [], RateSampler()
    with torch.no_grad():
        for fn in fns.values():
            call(fn, inputs)
        end = time.monotonic() + seconds
        while not rounds or time.monotonic() < end:
            row = {}
            for name, fn in fns.items():
                start = time.perf_counter()
                call(fn, inputs)
                row[name] = time.perf_counter() - start
            sampler.sample()
            sampler.sample()
            row.update({f"rate_{k}": v for k, v in sampler.rates(last=2).items()})
            rounds.append(row)
    return rounds


def bands(rounds: list[dict], modes: list[str]) -> list[dict]:
    """Per band of the bf16 rate with rounds in it: its range, the round count and each mode's median speed-up."""
    out = []
    for lo, hi in zip(BANDS, BANDS[1:]):
        rows = [r for r in rounds if lo <= r["rate_bf16"] * 100 < hi]
        if rows:
            out.append({"band": (lo, hi), "rounds": len(rows),
                        **{m: statistics.median(r["eager"] / r[m] for r in rows) for m in modes}})
    return out


def plot(rounds: list[dict], modes: list[str], title: str, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    x = [r["rate_bf16"] * 100 for r in rounds]
    dense = [b for b in bands(rounds, modes) if b["rounds"] >= 5]  # a band's median drawn where its rounds sit
    centres = [statistics.median(v for v in x if b["band"][0] <= v < b["band"][1]) for b in dense]
    for mode in modes:
        points = ax.scatter(x, [r["eager"] / r[mode] for r in rounds], s=6, alpha=0.25)
        ax.plot(centres, [b[mode] for b in dense], "-o", color=points.get_facecolor()[0][:3],
                label=f'fxopt "{mode}" (median per band)')
    speeds = sorted(r["eager"] / r[m] for r in rounds for m in modes)
    ax.set_ylim(0.9 * speeds[len(speeds) // 100], 1.1 * speeds[-1 - len(speeds) // 100])  # the 1st–99th percentile
    ax.set_xlabel("host bf16 GEMM rate in that round, % of its quiet peak (1024³, fxopt.cost.host_rates)")
    ax.set_ylabel("speed vs fp32 eager (same round)")
    ax.set_title("\n".join(textwrap.wrap(title, 100)), fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    from fxopt.quant_planner import MODES
    from fxopt.tools.bench import machine_header

    parser = argparse.ArgumentParser(prog="python -m fxopt.tools.host_spells", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="a MODEL, as for fxopt bench (default minilm)")
    parser.add_argument("--modes", default="bf16,int8,int8-static", help="comma-separated quantize modes")
    parser.add_argument("--seconds", type=float, default=150.0, help="how long to take rounds (default 150)")
    parser.add_argument("--json", metavar="PATH", help="write every round (seconds per call, rates)")
    parser.add_argument("--plot", metavar="PATH", help="draw the rounds and the band medians (PNG; needs matplotlib)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    if args.seconds < 0:
        parser.error(f"--seconds: must be at least 0, got {args.seconds:g}")
    machine = machine_header()
    rounds = measure(args.model, modes, args.seconds)
    print(f"{machine}\n{len(rounds)} rounds of {args.model}")
    for b in bands(rounds, modes):
        lo, hi = b["band"]
        speeds = ", ".join(f'{m} {b[m]:.2f}×' for m in modes)
        print(f"bf16 rate {lo}–{min(hi, 100)}%: {b['rounds']} rounds; {speeds}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "date": time.strftime("%Y-%m-%d"), "model": args.model, "modes": modes,
                       "rounds": rounds}, f)
    if args.plot:
        plot(rounds, modes, f"{args.model}: speed-up against the host's AMX rate, {len(rounds)} rounds in one "
                            f"process. {machine.split('; ')[0]}", args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
