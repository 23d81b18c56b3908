"""The pass-manager instrument that records what every pass saved: FLOPs and bytes before and after,
as formulas and at the example shape (the compile report's "Δ GFLOP" and "Δ MB" columns)."""
from __future__ import annotations

import sympy

from fxopt.cost.estimate import CostReport, estimate
from fxopt.ir.meta import dim_symbol
from fxopt.pass_manager import Instrument


class CostDelta(Instrument):
    def __init__(self, example_dims: dict[str, int]):
        self.subs = {dim_symbol(k): v for k, v in example_dims.items()}
        self.before = None
        self.first: CostReport | None = None  # the captured graph's costs
        self.last: CostReport | None = None  # the optimized graph's costs

    def _totals(self, gm):
        report = estimate(gm)
        self.last = report
        return report.flops, report.bytes

    def before_pipeline(self, gm, ctx):
        self.before = self._totals(gm)
        self.first = self.last

    def after_pass(self, p, gm, ctx, record):
        if not record.changed:
            return None
        after = self._totals(gm)
        flops_delta = sympy.expand(after[0] - self.before[0])
        bytes_delta = sympy.expand(after[1] - self.before[1])
        record.extra["flops_delta"] = flops_delta
        record.extra["bytes_delta"] = bytes_delta
        record.extra["gflop_delta"] = float(flops_delta.subs(self.subs)) / 1e9
        record.extra["mb_delta"] = float(bytes_delta.subs(self.subs)) / 1e6
        self.before = after
        return None
