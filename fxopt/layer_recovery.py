"""Layer-wise recovery for the compression passes: record a layer's inputs on calibration data, then refit the
compressed layer's weights by ridge regression so that it reproduces the original layer's outputs.

A compressed linear keeps a fixed part (the channels pruning kept, the first factor of a low-rank pair) whose
outputs ``Z`` on the calibration rows are known; the refit solves for the weight ``W'`` that maps them to the
original outputs ``Y`` (before the bias):

    W'ᵀ, c = argmin ‖Z W'ᵀ + c − Y‖² + λ‖W'‖²   (centered: W'ᵀ = (Z̃ᵀZ̃ + λI)⁻¹ Z̃ᵀỸ, λ = alpha · trace(Z̃ᵀZ̃) / k)

with an intercept ``c`` added to the layer's bias: what the removed part contributed on average.

— distillation one layer at a time, in closed form, without a training loop. The calibration batches are
``gm.meta["fxopt.calibration"]`` (flat input tensors per batch; ``fxopt.compile(..., calibration=...)`` sets it),
else the example inputs. Every layer is recorded on the uncompressed graph, in one run per batch.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.fx

CALIBRATION_KEY = "fxopt.calibration"
#: Calibration rows kept per recorded value (a random subset beyond it), to bound memory.
MAX_ROWS = 8192


def calibration_batches(gm: torch.fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    return list(gm.meta.get(CALIBRATION_KEY) or [list(example_inputs)])


class _Seen(Exception):
    """Every watched value of this run is recorded: the rest of the graph need not run."""


class _Recorder(torch.fx.Interpreter):
    """Runs the graph and keeps the values of ``watch`` as rows ``[tokens, last dim]``; stops a run once it has
    them all (the graph after them may be half-rewritten)."""

    def __init__(self, gm, watch: set[torch.fx.Node]):
        super().__init__(gm)
        self.watch = watch
        self.rows: dict[torch.fx.Node, list[torch.Tensor]] = {n: [] for n in watch}
        self.pending: set[torch.fx.Node] = set()

    def run_node(self, n):
        out = super().run_node(n)
        if n in self.watch:
            self.rows[n].append(out.detach().reshape(-1, out.shape[-1]).float().clone())
            self.pending.discard(n)
            if not self.pending:
                raise _Seen
        return out

    def record(self, batch) -> None:
        self.pending = set(self.watch)
        try:
            self.run(*batch)
        except _Seen:
            pass


@torch.no_grad()
def record(gm: torch.fx.GraphModule, nodes: Iterable[torch.fx.Node], batches: Sequence[Sequence[torch.Tensor]]
           ) -> dict[torch.fx.Node, torch.Tensor]:
    """The values of ``nodes`` on every calibration batch, as ``[rows, channels]`` (at most :data:`MAX_ROWS`).
    Each run stops at the last of them: only the graph before them needs to be runnable."""
    recorder = _Recorder(gm, set(nodes))
    for batch in batches:
        recorder.record(batch)
    out = {}
    for node, parts in recorder.rows.items():
        rows = torch.cat(parts)
        if rows.shape[0] > MAX_ROWS:  # the same rows for every node and every call: their values line up
            rows = rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))[:MAX_ROWS]]
        out[node] = rows
    return out


def ridge(z: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', c)`` minimizing ``‖z W'ᵀ + c − y‖² + λ‖W'‖²``: the refit weight (``y.shape[1]`` × ``z.shape[1]``) and
    an intercept ``c`` to add to the layer's bias (what the removed part contributed on average)."""
    z_mean, y_mean = z.double().mean(0), y.double().mean(0)
    z64, y64 = z.double() - z_mean, y.double() - y_mean
    gram = z64.T @ z64
    lam = alpha * gram.diagonal().mean().clamp_min(1e-12)
    w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=torch.float64), z64.T @ y64).T
    return w.float().contiguous(), (y_mean - w @ z_mean).float()


#: Ridge strengths tried by :func:`refit`, relative to the mean diagonal of ZᵀZ.
ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)
#: Fraction of the calibration rows :func:`refit` holds out to choose the strength (and whether to refit at all).
HELD_OUT = 0.25


def refit(z: torch.Tensor, y: torch.Tensor, unfit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """The weight (and intercept) that maps ``z`` to ``y`` best on calibration rows it was not fit on.

    Ridge fits on 75% of the rows at each strength of :data:`ALPHAS` are compared on the other 25% with the
    compressed layer as it is (``unfit``: no refit, no intercept); the winner is fit again on all rows. With few
    rows per feature a refit can overfit and lose to no refit at all: then ``unfit`` is kept. Returns the weight,
    the intercept (None when not refit) and what was chosen, for the pass's stats."""
    split = int(z.shape[0] * (1 - HELD_OUT))
    held_z, held_y = z[split:], y[split:]
    best = (relative_error(held_z @ unfit.T, held_y), None)
    for alpha in ALPHAS:
        w, c = ridge(z[:split], y[:split], alpha)
        error = relative_error(held_z @ w.T + c, held_y)
        if error < best[0]:
            best = (error, alpha)
    if best[1] is None:
        return unfit, None, "none"
    w, c = ridge(z, y, best[1])
    return w, c, f"alpha={best[1]:g}"


def refit_kept_columns(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, columns: torch.Tensor,
                       errors: tuple[list[float], list[float]]) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """A linear that loses input ``columns``' complement (pruned channels or heads): its weight on the kept columns,
    refit by :func:`refit` on the recorded inputs ``x`` (rows) to reproduce the full layer's outputs, and its bias
    with the intercept added. Appends the relative output error before and after the refit to ``errors``; returns
    ``(weight, bias, what refit chose)``."""
    w_kept = weight[:, columns].contiguous()
    z, y = x[:, columns], x @ weight.T
    errors[0].append(relative_error(z @ w_kept.T, y))
    w_kept, shift, how = refit(z, y, w_kept)
    errors[1].append(relative_error(z @ w_kept.T + (shift if shift is not None else 0), y))
    if shift is not None:
        bias = shift if bias is None else bias + shift
    return w_kept, bias, how


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return ((approx - exact).norm() / exact.norm().clamp_min(1e-12)).item()


def with_refit_stats(result, before: list[float], after: list[float]):
    """``result`` (a :class:`~fxopt.graph_pass.PassResult`) with the compressed layers' mean relative output
    error before and after their refit in its stats."""
    if before:
        result.stats["output err"] = f"{sum(before) / len(before):.3f}"
    if after:
        result.stats["after refit"] = f"{sum(after) / len(after):.3f}"
    return result
