"""How fast this machine multiplies right now, as a fraction of its cached peaks (:func:`fxopt.cost.machine_peaks`).

A shared host does not keep one speed. On the Intel Xeon host (AMX, 2 threads of a VM) a 1024³ bf16 GEMM ran at
393–873 GFLOP/s within seconds, against a quiet 1,165, while the same fp32 GEMM stayed at 199–241 of its 256.
What slows down is the AMX unit, so a compiled bf16 or int8 model loses far more than fp32 eager does, and its
measured speed-up over eager falls with it (MiniLM ``"bf16"``: 3.0× in such a spell, 3.6–4.2× in quieter ones).
``fxopt bench`` samples both rates once per timed round of each row (:class:`RateSampler`) and prints their medians,
so that a row that ran in a slow spell says so, and the cost model's prediction (which assumes the quiet rates) can
be read against it.
"""
from __future__ import annotations

import statistics
import time

import torch

#: the probe's GEMM size (as :func:`fxopt.cost.roofline.measure_peaks`) and its calls per precision
SIZE, CALLS = 1024, 8


class RateSampler:
    """One 1024³ GEMM per precision per :meth:`sample`, in turns; :meth:`rates` gives each precision's median rate
    over this machine's cached peak for it. ``fxopt bench`` samples once per timed round, so the rates cover the
    same seconds as the row's timings (a spell can start and end within a row)."""

    def __init__(self):
        a = torch.randn(SIZE, SIZE)
        self.operands = {"fp32": (a, a.t().contiguous()), "bf16": (a.bfloat16(), a.t().contiguous().bfloat16())}
        self.times: dict[str, list[float]] = {name: [] for name in self.operands}
        with torch.no_grad():
            for x, y in self.operands.values():
                torch.mm(x, y)  # warm: the first call may pick a kernel

    def sample(self) -> None:
        with torch.no_grad():
            for name, (x, y) in self.operands.items():
                start = time.perf_counter()
                torch.mm(x, y)
                self.times[name].append(time.perf_counter() - start)

    def rates(self, last: int | None = None) -> dict[str, float]:
        """``{"fp32": fraction, "bf16": fraction}`` of the cached peaks, over every sample or the ``last`` ones;
        empty before any sample."""
        from fxopt.cost import machine_peaks

        peaks = machine_peaks()
        peak = {"fp32": peaks.fp32_flops, "bf16": peaks.bf16_flops}
        return {name: 2 * SIZE ** 3 / statistics.median(ts[-last if last else 0:]) / peak[name]
                for name, ts in self.times.items() if ts}


def probe() -> dict[str, float]:
    """The rates of :data:`CALLS` samples taken now (about 0.1 s on the Intel Xeon host): see :class:`RateSampler`."""
    sampler = RateSampler()
    for _ in range(CALLS):
        sampler.sample()
    return sampler.rates()


def describe(rates: dict[str, float] | None) -> str:
    """``"fp32 94%, bf16 61%"``, or "-" when nothing was probed."""
    if not rates:
        return "-"
    return ", ".join(f"{name} {rate * 100:.0f}%" for name, rate in rates.items())


#: below this fraction of its quiet peak a precision's rate counts as a slow spell
SLOW = 0.8


def slow_spell_note(rates: list[dict[str, float]]) -> str:
    """A line for under a benchmark table when some row ran while a GEMM rate was below :data:`SLOW` of its peak
    ("" when none did): the speed-ups of bf16 and int8 configurations read low then."""
    slow = {name: [r[name] for r in rates if name in r] for name in ("fp32", "bf16")}
    ranges = [f"{name} {min(v) * 100:.0f}–{max(v) * 100:.0f}%" for name, v in slow.items() if v and min(v) < SLOW]
    if not ranges:
        return ""
    return (f"Note: rows ran while this host's GEMM rates were below {SLOW:.0%} of their quiet peaks ("
            f"{', '.join(ranges)}; the \"host GEMM rate vs peak\" column): on a shared host the AMX unit slows down "
            "in spells, and the speed-ups of bf16 and int8 configurations read low with it.")
