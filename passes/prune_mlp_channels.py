"""prune-mlp-channels: remove the least important hidden channels of every MLP block, then refit its down
projection on calibration data (structured pruning with layer-wise recovery).

An MLP block is a down-projection linear whose input is computed channel by channel (``gelu``, ``silu``,
``relu``, ``mul``) from up-projection linears of constant weights: BERT's ``intermediate``/``output``,
Llama's ``gate``/``up``/``down``. Channel ``j`` of the hidden layer can be removed by deleting row ``j`` of every
up weight (and bias) and column ``j`` of the down weight; every shape in between follows. A channel's
importance is ``mean(h_j²) · ‖W_down[:, j]‖²`` with ``h`` the hidden activations on the calibration batches
(:mod:`fxopt.layer_recovery`): the energy it adds to the block's output (removing the lowest-energy channels
minimizes the expected squared error when channels are uncorrelated; it measured better than
``mean|h_j| · ‖W_down[:, j]‖`` on SmolLM2, +4.2% against +4.5% perplexity at 2% and +30% against +40% at 10%). ``ratio`` of the channels go, rounded so
that the kept count is a multiple of ``multiple`` (GEMM-friendly). With ``recover``, the kept columns of the down
weight are refit by ridge regression, with an intercept added to its bias, so the block reproduces its original
output on the calibration rows (the strength, or no refit at all, chosen on held-out calibration rows:
:func:`fxopt.layer_recovery.refit`; all
blocks from one recording of the unpruned graph: refitting block by block on the graph with the blocks before it
already pruned measured worse on MiniLM, min pooled cosine 0.75 against 0.81 at ratio 0.25). The stats report the
mean relative output error of the blocks before and after the refit.

Run it before ``fuse-sibling-linears`` (which would fuse gate and up into one linear).

Before::

    %up.weight = const : f32[64, 16]
    %up.bias = const : f32[64]
    %down.weight = const : f32[16, 64]
    %linear = aten.linear(%x, %up.weight, %up.bias) : f32[batch, 64]
    %gelu = aten.gelu(%linear) : f32[batch, 64]
    %linear_1 = aten.linear(%gelu, %down.weight) : f32[batch, 16]

After::

    %_fxopt_linear_pruned_weight = const : f32[32, 16]
    %_fxopt_linear_pruned_bias = const : f32[32]
    %linear = aten.linear(%x, %_fxopt_linear_pruned_weight, %_fxopt_linear_pruned_bias) : f32[batch, 32]
    %gelu = aten.gelu(%linear) : f32[batch, 32]
    %_fxopt_linear_1_pruned_weight = const : f32[16, 32]
    %_fxopt_linear_1_pruned_bias = const : f32[16]
    %linear_1 = aten.linear(%gelu, %_fxopt_linear_1_pruned_weight, %_fxopt_linear_1_pruned_bias) : f32[batch, 16]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx

from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.layer_recovery import calibration_batches, record, refit_kept_columns, with_refit_stats
from fxopt.passes.quantize_weights_int8 import linear_location
from fxopt.rewriter import Rewriter

aten = torch.ops.aten
#: Ops that act on each hidden channel alone, so pruning a channel commutes with them.
CHANNELWISE_UNARY = (aten.gelu.default, aten.silu.default, aten.relu.default, aten.tanh.default,
                     aten.sigmoid.default)
CHANNELWISE_BINARY = (aten.mul.Tensor,)


@dataclass
class PruneOptions:
    ratio: float = 0.25  # fraction of each block's hidden channels to remove
    multiple: int = 16  # the kept count is rounded up to a multiple of this
    recover: bool = True  # refit the down projection on calibration data (ridge)
    skip: list[str] = field(default_factory=list)  # down projections to leave alone (substring of the location)


@dataclass
class _Block:
    down: torch.fx.Node
    ups: list[torch.fx.Node]
    region: list[torch.fx.Node]  # the channel-wise ops between the ups and the down, in graph order


@graph_pass("prune-mlp-channels", options=PruneOptions, level=3, tolerance="budget",
            before=("fuse-sibling-linears",))
def prune_mlp_channels(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Remove the least important hidden channels of each MLP block; refit its down projection (ridge)."""
    o = ctx.options
    if not 0 <= o.ratio < 1:
        raise ValueError(f"prune-mlp-channels: ratio must be in [0, 1), got {o.ratio}")
    rw = Rewriter(gm)
    blocks = [b for b in (_block(rw, n) for n in gm.graph.find_nodes(op="call_function", target=aten.linear.default))
              if b is not None and not any(s in linear_location(b.down) for s in o.skip)]
    if not blocks or o.ratio == 0:
        return rw.result()
    hidden = record(gm, [b.down.args[0] for b in blocks], calibration_batches(gm, ctx.example_inputs))
    before, after = [], []
    for b in blocks:
        h, w_down = hidden.pop(b.down.args[0]), rw.constant(b.down.args[1])
        channels = w_down.shape[1]
        keep = min(channels, -(-round(channels * (1 - o.ratio)) // o.multiple) * o.multiple)
        if keep >= channels:
            continue
        kept = (h.square().mean(0) * w_down.square().sum(0)).topk(keep).indices.sort().values
        w_kept, bias = w_down[:, kept].contiguous(), linear_bias(rw, b.down)
        if o.recover:
            w_kept, bias, how = refit_kept_columns(h, w_down, bias, kept, (before, after))
            rw.count(f"refit {how}")
        del h
        for up in b.ups:
            up_bias = linear_bias(rw, up)
            replace_linear_weights(rw, up, rw.constant(up.args[1])[kept], up_bias[kept] if up_bias is not None else None)
        for node in b.region:
            rw.update(node, args=node.args)  # shapes follow the narrower inputs
        replace_linear_weights(rw, b.down, w_kept, bias)
        rw.count("blocks")
        rw.count("channels removed", channels - keep)
    rw.remove_unused()
    return with_refit_stats(rw.result(), before, after)


def _block(rw: Rewriter, down: torch.fx.Node) -> _Block | None:
    """The MLP block that ends in ``down``, or None when its input is not channel-wise from constant linears."""
    if rw.constant(down.args[1]) is None or down.kwargs:
        return None
    ups, region, seen = [], [], set()
    frontier = [down.args[0]]
    while frontier:
        node = frontier.pop()
        if node in seen:
            continue
        seen.add(node)
        if not isinstance(node, torch.fx.Node) or node.op != "call_function":
            return None
        if node.target is aten.linear.default and rw.constant(node.args[1]) is not None and not node.kwargs:
            ups.append(node)
        elif node.target in CHANNELWISE_UNARY:
            region.append(node)
            frontier.append(node.args[0])
        elif node.target in CHANNELWISE_BINARY and len(node.args) == 2 and \
                all(isinstance(a, torch.fx.Node) for a in node.args):
            region.append(node)
            frontier.extend(node.args)
        else:
            return None
    if not ups or not region or len({rw.constant(u.args[1]).shape[0] for u in ups}) != 1:
        return None
    members = set(ups) | set(region) | {down}
    if any(u not in members for n in ups + region for u in n.users):
        return None  # a hidden value used outside the block cannot lose channels
    order = {n: i for i, n in enumerate(down.graph.nodes)}
    return _Block(down, ups, sorted(region, key=order.__getitem__))


def linear_bias(rw: Rewriter, linear: torch.fx.Node) -> torch.Tensor | None:
    """The constant bias of an ``aten.linear``, or None."""
    return rw.constant(linear.args[2]) if len(linear.args) > 2 and linear.args[2] is not None else None


def replace_linear_weights(rw: Rewriter, linear: torch.fx.Node, weight: torch.Tensor, bias: torch.Tensor | None,
                           tag: str = "pruned") -> None:
    """Point ``linear`` at new constants ``_fxopt_<name>_<tag>_weight`` (and ``_bias``)."""
    name = f"{linear.name}_{tag}"
    w = rw.add_constant(f"{name}_weight", weight.contiguous(), before=linear)
    b = rw.add_constant(f"{name}_bias", bias.contiguous(), before=linear) if bias is not None else None
    rw.update(linear, args=(linear.args[0], w, b) if b is not None else (linear.args[0], w))
