"""factorize-low-rank: a linear's weight ``W`` (out × in) becomes two linears of rank ``r`` from a truncated SVD,
where that is measured to be faster here; the second factor is refit on calibration data.

``W = U Σ Vᵀ`` keeps its ``r`` largest singular values, ``r`` the smallest holding ``energy`` of ``Σσ²`` (rounded
up to a multiple of ``multiple``): ``x Wᵀ ≈ (x Bᵀ) Aᵀ`` with ``B = Σ_r^½ V_rᵀ`` (r × in) and ``A = U_r Σ_r^½``
(out × r). The pair costs ``r·(in + out)`` multiply-adds per row against ``in·out``, so the cost model predicts a
speed-up of ``in·out / (r·(in + out))``; a linear is factorized only where that prediction reaches
``min_speedup`` AND timing both forms at the example's rows on this machine confirms it (GEMM libraries run
thin GEMMs well below their peak, so a FLOP saving is not a time saving; decisions are cached per shape for the
process). With ``recover``, ``A`` is refit by ridge regression (with an intercept added to the bias) so that ``(x Bᵀ) Aᵀ``
reproduces ``x Wᵀ`` on the calibration rows, where held-out rows say it helps (:func:`fxopt.layer_recovery.refit`).

Before::

    %fc.weight = const : f32[256, 256]
    %linear = aten.linear(%x, %fc.weight, %fc.bias) : f32[batch, 128, 256]

After::

    %_fxopt_linear_lowrank_b = const : f32[32, 256]
    %linear_default = aten.linear(%x, %_fxopt_linear_lowrank_b) : f32[batch, 128, 32]
    %_fxopt_linear_lowrank_a = const : f32[256, 32]
    %linear = aten.linear(%linear_default, %_fxopt_linear_lowrank_a, %fc.bias) : f32[batch, 128, 256]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F

from fxopt.gemm_backends import interleaved_ms
from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.ir.meta import dim_symbol, shape_exprs, symbol_map
from fxopt.layer_recovery import calibration_batches, record, refit, relative_error, with_refit_stats
from fxopt.passes.quantize_weights_int8 import linear_location
from fxopt.rewriter import Rewriter

aten = torch.ops.aten
#: (rows, in, out, rank, bias) → measured speed-up of the factorized pair, for this process.
_MEASURED: dict[tuple, float] = {}


@dataclass
class LowRankOptions:
    energy: float = 0.9  # fraction of Σσ² the kept singular values hold
    min_speedup: float = 1.1  # predicted and measured speed-up a linear needs to be factorized
    multiple: int = 16  # the rank is rounded up to a multiple of this
    measure: bool = True  # confirm the predicted speed-up by timing both forms here
    recover: bool = True  # refit the second factor on calibration data (ridge)
    skip: list[str] = field(default_factory=lambda: ["lm_head"])  # linears to leave alone (location substring)


@graph_pass("factorize-low-rank", options=LowRankOptions, level=3, tolerance="budget",
            before=("fuse-sibling-linears",))
def factorize_low_rank(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Replace linears by rank-r pairs (truncated SVD) where the cost model and a timing here say it pays."""
    o = ctx.options
    if not 0 < o.energy <= 1:
        raise ValueError(f"factorize-low-rank: energy must be in (0, 1], got {o.energy}")
    rw = Rewriter(gm)
    chosen: dict[torch.fx.Node, tuple[torch.Tensor, torch.Tensor]] = {}
    slower, unpredicted = 0, 0
    for node in list(gm.graph.find_nodes(op="call_function", target=aten.linear.default)):
        w = rw.constant(node.args[1])
        if w is None or w.dim() != 2 or w.dtype != torch.float32 or node.kwargs or \
                any(s in linear_location(node) for s in o.skip):
            continue
        out_f, in_f = w.shape
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
        energy = (s ** 2).cumsum(0) / (s ** 2).sum()
        rank = int((energy < o.energy).sum().item()) + 1
        rank = min(-(-rank // o.multiple) * o.multiple, min(out_f, in_f))
        predicted = in_f * out_f / (rank * (in_f + out_f))
        if predicted < o.min_speedup:
            unpredicted += 1
            continue
        if o.measure and _measured_speedup(_example_rows(gm, node), in_f, out_f, rank) < o.min_speedup:
            slower += 1
            continue
        root = s[:rank].sqrt()
        chosen[node] = ((root[:, None] * vh[:rank]).float(), (u[:, :rank] * root[None, :]).float())
    if unpredicted:
        ctx.note(f"{unpredicted} linear(s) left alone: at energy {o.energy} their rank saves too few FLOPs "
                 f"(predicted speed-up < {o.min_speedup})")
    if slower:
        ctx.note(f"{slower} linear(s) left alone: the rank-r pair measured slower than {o.min_speedup}× here")
    if not chosen:
        return rw.result()
    inputs = record(gm, {n.args[0] for n in chosen}, calibration_batches(gm, ctx.example_inputs)) \
        if o.recover else {}
    before, after = [], []
    shifts: dict[torch.fx.Node, torch.Tensor] = {}
    for node, (b, a) in chosen.items():
        w = rw.constant(node.args[1])
        if o.recover:
            x = inputs[node.args[0]]
            z, y = x @ b.T, x @ w.T
            before.append(relative_error(z @ a.T, y))
            a, shift, how = refit(z, y, a)
            after.append(relative_error(z @ a.T + (shift if shift is not None else 0), y))
            rw.count(f"refit {how}")
            if shift is not None:
                bias = rw.constant(node.args[2]) if len(node.args) > 2 and node.args[2] is not None else None
                shifts[node] = shift if bias is None else bias + shift
        first = rw.call(aten.linear.default, (node.args[0], rw.add_constant(f"{node.name}_lowrank_b", b, before=node)),
                        before=node)
        second = rw.add_constant(f"{node.name}_lowrank_a", a, before=node)
        bias = rw.add_constant(f"{node.name}_lowrank_bias", shifts[node], before=node) if node in shifts else \
            (node.args[2] if len(node.args) > 2 else None)
        rw.update(node, args=(first, second, bias) if bias is not None else (first, second))
        rw.count("factorized")
        rw.count("rank", b.shape[0])
    rw.remove_unused()
    return with_refit_stats(rw.result(), before, after)


def _example_rows(gm: torch.fx.GraphModule, node: torch.fx.Node) -> int:
    """The rows ``node`` multiplies at the example's sizes (batch × seq for a transformer's linears)."""
    exprs = shape_exprs(node.args[0], symbol_map(gm)) or ()
    sizes = {dim_symbol(k): v for k, v in gm.meta.get("fxopt.example_dims", {}).items()}
    rows = 1
    for e in exprs[:-1]:
        try:
            rows *= int(e.subs(sizes))
        except TypeError:  # a dim without an example size
            rows *= 1
    return max(rows, 1)


def _measured_speedup(rows: int, in_f: int, out_f: int, rank: int) -> float:
    key = (rows, in_f, out_f, rank)
    if key not in _MEASURED:
        x = torch.randn(rows, in_f)
        w, b = torch.randn(out_f, in_f), torch.randn(out_f)
        first, second = torch.randn(rank, in_f), torch.randn(out_f, rank)
        with torch.no_grad():
            ms = interleaved_ms({"dense": lambda: F.linear(x, w, b),
                                 "pair": lambda: F.linear(F.linear(x, first), second, b)}, reps=9)
        _MEASURED[key] = ms["dense"] / ms["pair"]
    return _MEASURED[key]
