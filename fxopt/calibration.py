"""Calibration for static int8: the activation range of each linear, observed on the calibration batches.

A static scale is fixed at compile time, so it must cover the values the linear will see; what it cannot cover
is clipped. Two observers, both over every calibration batch:

* **min/max** — the extreme values seen: nothing seen is clipped, but one outlier stretches the scale and every
  other value loses resolution;
* **percentile** — the ``PERCENTILE`` and ``100 − PERCENTILE`` percentiles (nearest rank): the rare extremes are clipped, the
  rest keeps more resolution.

:func:`choose_range` measures both on the linear itself (its int8 output error on the calibration inputs, one
GEMM each) and keeps the better: the planner (:mod:`fxopt.quant_planner`) records the choice in
``node.meta[RANGE_KEY]`` and the plan's table, and ``quantize-static-int8`` reads it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

#: where the planner leaves a linear's calibrated input range for ``quantize-static-int8``
RANGE_KEY = "fxopt.activation_range"
#: the percentile observer's upper quantile (in percent); the lower one is ``100 - PERCENTILE``
PERCENTILE = 99.99
OBSERVERS = ("minmax", "percentile")


@dataclass(frozen=True)
class ActivationRange:
    low: float
    high: float
    observer: str

    def __iter__(self):
        return iter((self.low, self.high))


#: ``static_linear(x, r)``: a linear's output with its input ``x`` quantized in the range ``r``
StaticLinear = Callable[[torch.Tensor, "ActivationRange"], torch.Tensor]


def static_qparams(low: float, high: float) -> tuple[float, int]:
    """Scale and zero point of asymmetric uint8 for ``[low, high]`` (widened to hold 0, as oneDNN needs)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / 255.0, 1e-10)
    return scale, int(min(max(round(-low / scale), 0), 255))


def quantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``x`` as ``quantize-static-int8`` hands it to the int8 GEMM: ``clamp(round(x · (1/s)) + z, 0, 255)``,
    uint8."""
    return (torch.round(x * (1.0 / scale)) + zero_point).clamp(0, 255).to(torch.uint8)


def fake_quantize(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """What ``quantize-static-int8`` feeds the GEMM, back in fp32: ``(q - z) · s``."""
    scale, zero_point = static_qparams(low, high)
    return (quantize(x, scale, zero_point).float() - zero_point) * scale


def observe(inputs: list[torch.Tensor], observer: str) -> ActivationRange:
    """The range of ``inputs`` (one linear's inputs, one per calibration batch) by ``observer``."""
    if observer == "minmax":
        return ActivationRange(min(float(x.min()) for x in inputs), max(float(x.max()) for x in inputs), observer)
    if observer != "percentile":
        raise ValueError(f"unknown observer {observer!r}; choose one of {', '.join(OBSERVERS)}")
    flat = torch.cat([x.reshape(-1).float() for x in inputs])
    n = flat.numel()

    def nearest_rank(percent: float) -> float:  # a selection, not a sort: kthvalue is linear in n
        return float(flat.kthvalue(min(max(round(percent / 100 * (n - 1)) + 1, 1), n)).values)
    return ActivationRange(nearest_rank(100 - PERCENTILE), nearest_rank(PERCENTILE), observer)


def relative_error(exact: list[torch.Tensor], approximate: list[torch.Tensor]) -> float:
    """A linear's relative output error over its calibration inputs, ``‖approximate − exact‖ / ‖exact‖`` (one
    output per input)."""
    num = den = 0.0
    for a, y in zip(approximate, exact, strict=True):
        num += float((a - y).pow(2).sum())
        den += float(y.pow(2).sum())
    return math.sqrt(num / max(den, 1e-30))


def range_error(inputs: list[torch.Tensor], exact: list[torch.Tensor], static_linear: StaticLinear,
                r: ActivationRange) -> float:
    """The linear's relative output error on ``inputs`` (``exact``: its fp32 outputs) with its input quantized in
    ``r``; ``static_linear(x, r)`` computes the linear as the int8 kernel does."""
    return relative_error(exact, [static_linear(x, r) for x in inputs])


def choose_range(inputs: list[torch.Tensor], exact: list[torch.Tensor], static_linear: StaticLinear
                 ) -> tuple[ActivationRange, float]:
    """The observer whose range gives this linear the smaller :func:`range_error` on ``inputs``, with that error."""
    scored = [(r, range_error(inputs, exact, static_linear, r)) for r in (observe(inputs, o) for o in OBSERVERS)]
    return min(scored, key=lambda pair: pair[1])
