"""``fxopt.compile(..., compress={...})``: the compression passes, placed in the pipeline with their options.

    compress={"prune_heads": 0.25}    prune-attention-heads{ratio=0.25}: a quarter of each attention block's heads
    compress={"prune_mlp": 0.3}       prune-mlp-channels{ratio=0.3}: 30% of every MLP block's hidden channels
    compress={"low_rank": 0.9}        factorize-low-rank{energy=0.9}: rank-r pairs holding 90% of Σσ², where faster
    compress={"recover": False}       skip the layer-wise refit (every compression pass refits by default)

They run after the fusions that need the original shapes (attention) and before ``fuse-sibling-linears``, so
that they see separate gate/up/down linears; pruning runs first, so a factorized linear is already pruned. The
calibration batches (``calibration=``, else the example inputs) feed their importance and refit; with
``quantize=`` as well, the quantization passes run after them (prune, then quantize).
"""
from __future__ import annotations

from typing import Any, Mapping

from fxopt.graph_pass import GraphPass
from fxopt.registry import get_pass

Pipeline = list[tuple[GraphPass, Any]]
#: compress= key → (pass, its option)
KEYS = {"prune_heads": ("prune-attention-heads", "ratio"), "prune_mlp": ("prune-mlp-channels", "ratio"),
        "low_rank": ("factorize-low-rank", "energy")}


def check_request(compress: Mapping[str, Any] | None) -> None:
    """A ``compress=`` mapping that cannot run fails before capture."""
    if compress is None:
        return
    if not isinstance(compress, Mapping):
        raise TypeError(f"compress must be a mapping like {{'prune_mlp': 0.3, 'low_rank': 0.9}}, got {compress!r}")
    unknown = set(compress) - set(KEYS) - {"recover"}
    if unknown:
        raise ValueError(f"unknown compress option(s) {sorted(unknown)}; choose from {sorted(KEYS) + ['recover']}")
    for key, what in (("prune_heads", "heads"), ("prune_mlp", "channels")):
        if key in compress and not 0 <= float(compress[key]) < 1:
            raise ValueError(f"compress[{key!r}] is the fraction of {what} to remove, in [0, 1); got {compress[key]}")
    if "low_rank" in compress and not 0 < float(compress["low_rank"]) <= 1:
        raise ValueError(f"compress['low_rank'] is the energy the kept singular values hold, in (0, 1]; got "
                         f"{compress['low_rank']}")


def compression_pipeline(pipeline: Pipeline, compress: Mapping[str, Any]) -> Pipeline:
    """``pipeline`` with the requested compression passes inserted (see the module docstring)."""
    names = [p.name for p, _ in pipeline]
    added = []
    for key, (name, option) in KEYS.items():
        if key in compress and name not in names:
            p = get_pass(name)
            added.append((p, p.make_options(**{option: float(compress[key]),
                                               "recover": bool(compress.get("recover", True))})))
    at = names.index("fuse-sibling-linears") if "fuse-sibling-linears" in names else \
        next((i for i, (p, _) in enumerate(pipeline) if p.stage == "target"), len(pipeline))
    return [*pipeline[:at], *added, *pipeline[at:]]
