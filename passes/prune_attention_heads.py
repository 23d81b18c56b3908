"""prune-attention-heads: remove the least important attention heads of every attention block, then refit its
output projection on calibration data (structured pruning with layer-wise recovery).

An attention block is a ``scaled_dot_product_attention`` whose query (and, without grouped-query attention, key
and value) comes from a linear of constant weight through per-head ops only (the split into heads, transposes,
rotary embeddings), and whose output goes through a transpose and a merge of the heads into an output linear.
Head ``h`` owns rows ``h·d … (h+1)·d`` of the query (key, value) weight and the same columns of the output weight;
removing it leaves every other head's attention unchanged (each head has its own softmax), so only the output
projection sees the difference. A head's importance is its energy in the block's output,
``Σ ‖A_h W_o,hᵀ‖²`` over the calibration rows (``A_h``: the head's slice of the output projection's input).

Grouped-query attention (``k``/``v`` heads shared by groups of ``g`` query heads, repeated by ``expand`` and
``reshape``: Llama, SmolLM2) keeps every key/value head and removes the same number of query heads from each
group — the lowest in it — so that the repetition stays valid (``g → g'``); with one query head per key/value head
(BERT) the query, key and value heads go together. ``ratio`` of each group's heads go (rounded; at least one
stays); with ``recover`` the output projection's kept columns are refit by ridge regression, with an intercept
added to its bias (:func:`fxopt.layer_recovery.refit`). An attention whose mask or any other input carries a head
axis (an ALiBi bias), or whose per-head values are used outside the block (a returned KV cache), is left alone.

Run it after ``fuse-attention`` (which writes the SDPA it looks for) and before ``fuse-sibling-linears``.

Before (4 heads of 8, one removed)::

    %q.weight = const : f32[32, 32]
    %k.weight = const : f32[32, 32]
    %v.weight = const : f32[32, 32]
    %o.weight = const : f32[32, 32]
    %linear = aten.linear(%x, %q.weight) : f32[batch, 16, 32]
    %view = aten.view(%linear, [%sym_size_int_1, 16, -1, 8]) : f32[batch, 16, 4, 8]
    %transpose = aten.transpose.int(%view, 1, 2) : f32[batch, 4, 16, 8]
    %linear_1 = aten.linear(%x, %k.weight) : f32[batch, 16, 32]
    %view_1 = aten.view(%linear_1, [%sym_size_int_1, 16, -1, 8]) : f32[batch, 16, 4, 8]
    %transpose_1 = aten.transpose.int(%view_1, 1, 2) : f32[batch, 4, 16, 8]
    %linear_2 = aten.linear(%x, %v.weight) : f32[batch, 16, 32]
    %view_2 = aten.view(%linear_2, [%sym_size_int_1, 16, -1, 8]) : f32[batch, 16, 4, 8]
    %transpose_2 = aten.transpose.int(%view_2, 1, 2) : f32[batch, 4, 16, 8]
    %scaled_dot_product_attention = aten.scaled_dot_product_attention(%transpose, %transpose_1, %transpose_2) : f32[batch, 4, 16, 8]
    %transpose_3 = aten.transpose.int(%scaled_dot_product_attention, 1, 2) : f32[batch, 16, 4, 8]
    %reshape = aten.reshape(%transpose_3, [%sym_size_int_1, 16, -1]) : f32[batch, 16, 32]
    %linear_3 = aten.linear(%reshape, %o.weight) : f32[batch, 16, 32]

After::

    %_fxopt_linear_heads_weight = const : f32[24, 32]
    %linear = aten.linear(%x, %_fxopt_linear_heads_weight) : f32[batch, 16, 24]
    %view = aten.view(%linear, [%sym_size_int_1, 16, -1, 8]) : f32[batch, 16, 3, 8]
    %transpose = aten.transpose.int(%view, 1, 2) : f32[batch, 3, 16, 8]
    %_fxopt_linear_1_heads_weight = const : f32[24, 32]
    %linear_1 = aten.linear(%x, %_fxopt_linear_1_heads_weight) : f32[batch, 16, 24]
    %view_1 = aten.view(%linear_1, [%sym_size_int_1, 16, -1, 8]) : f32[batch, 16, 3, 8]
    %transpose_1 = aten.transpose.int(%view_1, 1, 2) : f32[batch, 3, 16, 8]
    %_fxopt_linear_2_heads_weight = const : f32[24, 32]
    %linear_2 = aten.linear(%x, %_fxopt_linear_2_heads_weight) : f32[batch, 16, 24]
    %view_2 = aten.view(%linear_2, [%sym_size_int_1, 16, -1, 8]) : f32[batch, 16, 3, 8]
    %transpose_2 = aten.transpose.int(%view_2, 1, 2) : f32[batch, 3, 16, 8]
    %scaled_dot_product_attention = aten.scaled_dot_product_attention(%transpose, %transpose_1, %transpose_2) : f32[batch, 3, 16, 8]
    %transpose_3 = aten.transpose.int(%scaled_dot_product_attention, 1, 2) : f32[batch, 16, 3, 8]
    %reshape = aten.reshape(%transpose_3, [%sym_size_int_1, 16, -1]) : f32[batch, 16, 24]
    %_fxopt_linear_3_heads_weight = const : f32[32, 24]
    %linear_3 = aten.linear(%reshape, %_fxopt_linear_3_heads_weight) : f32[batch, 16, 32]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx

from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.ir.meta import tensor_val
from fxopt.layer_recovery import calibration_batches, record, refit_kept_columns, with_refit_stats
from fxopt.passes.prune_mlp_channels import linear_bias, replace_linear_weights
from fxopt.passes.quantize_weights_int8 import linear_location
from fxopt.rewriter import Rewriter

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
#: Ops a head's values may pass through between its projection and the attention (they act on each head alone,
#: as long as their other operands do not carry a head axis: checked on the shapes).
PER_HEAD = {aten.view.default, aten.reshape.default, aten.transpose.int, aten.permute.default,
            aten.unsqueeze.default, aten.clone.default, aten.contiguous.default, aten.mul.Tensor, aten.add.Tensor,
            aten.sub.Tensor, aten.div.Tensor, aten.neg.default, aten.slice.Tensor, aten.cat.default,
            aten.expand.default}
SHAPE_OPS = (aten.view.default, aten.reshape.default, aten.expand.default)


@dataclass
class HeadPruneOptions:
    ratio: float = 0.25  # fraction of the query heads to remove (at least one head per group stays)
    scope: str = "global"  # "global": the least important heads across all blocks; "layer": ratio of every block
    recover: bool = True  # refit the output projection on calibration data (ridge)
    skip: list[str] = field(default_factory=list)  # output projections to leave alone (substring of the location)


@dataclass
class _Attention:
    sdpa: torch.fx.Node
    out: torch.fx.Node  # the output projection
    merge: torch.fx.Node  # the reshape merging the heads before it
    projections: list[torch.fx.Node]  # the linears whose rows are heads: q (and k, v without grouped queries)
    region: list[torch.fx.Node]  # every node whose shape follows the head count, in graph order
    heads: int
    head_dim: int
    group: int  # query heads per key/value head


@graph_pass("prune-attention-heads", options=HeadPruneOptions, level=3, tolerance="budget",
            after=("fuse-attention",), before=("fuse-sibling-linears",))
def prune_attention_heads(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Remove the least important heads of each attention block; refit its output projection (ridge)."""
    o = ctx.options
    if not 0 <= o.ratio < 1:
        raise ValueError(f"prune-attention-heads: ratio must be in [0, 1), got {o.ratio}")
    if o.scope not in ("global", "layer"):
        raise ValueError(f"prune-attention-heads: scope must be 'global' or 'layer', got {o.scope!r}")
    rw = Rewriter(gm)
    blocks = []
    for sdpa in list(gm.graph.find_nodes(op="call_function", target=SDPA)):
        found = _attention(rw, sdpa)
        if isinstance(found, str):
            rw.count(f"left alone: {found}")
        elif not any(s in linear_location(found.out) for s in o.skip):
            blocks.append(found)
    if not blocks or o.ratio == 0:
        return rw.result()
    inputs = record(gm, [b.merge for b in blocks], calibration_batches(gm, ctx.example_inputs))
    energies = [_head_energy(inputs[b.merge], rw.constant(b.out.args[1]), b.head_dim, b.heads) for b in blocks]
    removals = _removals(blocks, energies, o.ratio, o.scope)
    before, after = [], []
    for b, energy, removed in zip(blocks, energies, removals):
        if removed == 0:
            rw.count("left alone: no head below the cut")
            continue
        pool = _pool(b)
        keep_per_pool = pool - removed
        a, w_out = inputs.pop(b.merge), rw.constant(b.out.args[1])
        d = b.head_dim
        kept = torch.cat([g * pool + energy[g * pool:(g + 1) * pool].topk(keep_per_pool).indices.sort().values
                          for g in range(b.heads // pool)])
        columns = (kept[:, None] * d + torch.arange(d)).reshape(-1)
        w_kept, bias = w_out[:, columns].contiguous(), linear_bias(rw, b.out)
        if o.recover:
            w_kept, bias, how = refit_kept_columns(a, w_out, bias, columns, (before, after))
            rw.count(f"refit {how}")
        del a
        for linear in b.projections:
            rows_bias = linear_bias(rw, linear)
            replace_linear_weights(rw, linear, rw.constant(linear.args[1])[columns],
                                   rows_bias[columns] if rows_bias is not None else None, tag="heads")
        _rewrite_shapes(rw, b, len(kept), keep_per_pool)
        replace_linear_weights(rw, b.out, w_kept, bias, tag="heads")
        rw.count("blocks")
        rw.count("heads removed", b.heads - len(kept))
    rw.remove_unused()
    return with_refit_stats(rw.result(), before, after)


def _pool(b: _Attention) -> int:
    """How many heads each choice is made among: a key/value head's group, else all heads of the block."""
    return b.group if b.group > 1 else b.heads


def _head_energy(a: torch.Tensor, w_out: torch.Tensor, d: int, heads: int) -> torch.Tensor:
    """Each head's energy in the block's output on the calibration rows: ``‖A_h W_o,hᵀ‖²``."""
    return torch.stack([(a[:, h * d:(h + 1) * d] @ w_out[:, h * d:(h + 1) * d].T).square().sum() for h in range(heads)])


def _removals(blocks: list[_Attention], energies: list[torch.Tensor], ratio: float, scope: str) -> list[int]:
    """Heads to remove from each pool of each block. ``scope="layer"``: ``ratio`` of every pool (rounded).
    ``"global"``: removal steps (one more head from every pool of a block: its next-lowest) taken across all
    blocks in order of the energy they remove relative to the block's (the sum of its heads' energies), until ``ratio`` of all
    heads are gone; at least one head per pool stays."""
    if scope == "layer":
        return [min(_pool(b) - 1, round(_pool(b) * ratio)) for b in blocks]
    steps = []
    for i, (b, energy) in enumerate(zip(blocks, energies)):
        pool = _pool(b)
        ranked = energy.reshape(-1, pool).sort(dim=1).values  # each pool's heads, lowest first
        total = energy.sum().clamp_min(1e-30)
        for step in range(pool - 1):
            steps.append(((ranked[:, :step + 1].sum() / total).item(), i, step + 1, b.heads // pool))
    target, removed, gone = round(ratio * sum(b.heads for b in blocks)), [0] * len(blocks), 0
    for _cost, i, step, heads in sorted(steps):
        if step == removed[i] + 1 and gone + heads <= target:
            removed[i], gone = step, gone + heads
    return removed


def _attention(rw: Rewriter, sdpa: torch.fx.Node) -> _Attention | str:
    """The attention block around ``sdpa``, or why it cannot lose heads."""
    q, k, v = sdpa.args[:3]
    if sdpa.kwargs.get("enable_gqa"):
        return "enable_gqa"
    qv, kv = tensor_val(q), tensor_val(k)
    if qv is None or qv.dim() != 4 or kv is None or kv.dim() != 4:
        return "not 4-D (batch, heads, seq, dim)"
    heads, head_dim = qv.shape[1], qv.shape[3]
    if not isinstance(heads, int) or not isinstance(head_dim, int):
        return "symbolic head count"
    mask = sdpa.args[3] if len(sdpa.args) > 3 else sdpa.kwargs.get("attn_mask")
    if isinstance(mask, torch.fx.Node) and (tensor_val(mask) is None or tensor_val(mask).dim() < 3
                                              or tensor_val(mask).shape[-3] != 1):
        return "the mask has a head axis"
    merge, out = _output_side(rw, sdpa, heads * head_dim)
    if out is None:
        return "the output is not merged into a linear"
    q_linear, q_region = _per_head_path(rw, q, heads, heads * head_dim)
    if q_linear is None:
        return "the query is not a linear's output split into heads"
    group, region, projections = 1, q_region, [q_linear]
    repeated = [_repetition(k), _repetition(v)]
    if all(repeated):
        group = repeated[0][2]
        if repeated[1][2] != group or heads % group:
            return "keys and values repeated differently"
        region += [n for r in repeated for n in r[:2]]
    else:
        for kv_in in (k, v):
            linear, path = _per_head_path(rw, kv_in, heads, heads * head_dim)
            if linear is None:
                return "the key or value is not a linear's output split into heads"
            projections.append(linear)
            region += path
    region += [sdpa, *_between(sdpa, merge), merge]
    order = {n: i for i, n in enumerate(sdpa.graph.nodes)}
    return _Attention(sdpa, out, merge, projections, sorted(set(region), key=order.__getitem__), heads, head_dim,
                      group)


def _output_side(rw: Rewriter, sdpa: torch.fx.Node, width: int):
    """``(merge, out)``: ``sdpa → transpose(1, 2) → reshape [..., heads·dim] → linear``, each the only user."""
    (t,) = sdpa.users if len(sdpa.users) == 1 else (None,)
    if t is None or not (t.target is aten.transpose.int and sorted(t.args[1:]) == [1, 2]
                         or t.target is aten.permute.default and list(t.args[1]) == [0, 2, 1, 3]):
        return None, None
    node = t
    while len(node.users) == 1 and next(iter(node.users)).target in (aten.clone.default, aten.contiguous.default):
        node = next(iter(node.users))
    (merge,) = node.users if len(node.users) == 1 else (None,)
    if merge is None or merge.target not in (aten.reshape.default, aten.view.default) or merge.args[1][-1] not in (-1, width):
        return None, None
    (out,) = merge.users if len(merge.users) == 1 else (None,)
    if out is None or out.target is not aten.linear.default or out.kwargs or rw.constant(out.args[1]) is None \
            or out.args[0] is not merge:
        return None, None
    return merge, out


def _between(start: torch.fx.Node, end: torch.fx.Node) -> list[torch.fx.Node]:
    """The single-user chain strictly between ``start`` and ``end``."""
    chain, node = [], next(iter(start.users))
    while node is not end:
        chain.append(node)
        node = next(iter(node.users))
    return chain


def _per_head_path(rw: Rewriter, value: torch.fx.Node, heads: int, width: int):
    """``(linear, region)``: the constant-weight linear of ``width`` outputs that ``value`` is computed from through
    per-head ops, and the nodes in between; ``(None, [])`` when there is none or the values leak elsewhere."""
    ancestors, frontier, linears = set(), [value], []
    while frontier:
        node = frontier.pop()
        if not isinstance(node, torch.fx.Node) or node in ancestors or node.op != "call_function":
            continue
        ancestors.add(node)
        if node.target is aten.linear.default and rw.constant(node.args[1]) is not None and not node.kwargs:
            if rw.constant(node.args[1]).shape[0] == width:
                linears.append(node)
            continue
        if node.target in PER_HEAD:
            frontier.extend(node.all_input_nodes)
    if len(linears) != 1:
        return None, []
    (linear,) = linears
    region, frontier = {linear}, [linear]
    while frontier:  # the nodes between the linear and the value: its descendants among the value's ancestors
        for user in frontier.pop().users:
            if user in ancestors and user not in region:
                region.add(user)
                frontier.append(user)
    if value not in region or any(n.target not in PER_HEAD for n in region - {linear}):
        return None, []
    if any(u not in region and not (n is value and u.target is SDPA) for n in region for u in n.users):
        return None, []  # a per-head value used outside the block
    if any(n.target in SHAPE_OPS and _split_axis(n) is None for n in region - {linear}):
        return None, []
    for n in region - {linear}:  # other operands must not carry heads (they broadcast over the head axis)
        for other in n.all_input_nodes:
            val = tensor_val(other)
            if other not in region and isinstance(val, torch.Tensor) and \
                    any(isinstance(s, int) and s in (heads, width) for s in val.shape):
                return None, []
    return linear, sorted(region - {linear}, key=list(value.graph.nodes).index)


def _split_axis(node: torch.fx.Node) -> int | None:
    """For a view/reshape splitting the last axis into ``[heads, dim]``: the position of the head count."""
    if node.target not in (aten.view.default, aten.reshape.default):
        return None
    src, dst = tensor_val(node.args[0]), tensor_val(node)
    if src is None or dst is None or dst.dim() != src.dim() + 1 or \
            [str(s) for s in dst.shape[:-2]] != [str(s) for s in src.shape[:-1]]:
        return None
    return dst.dim() - 2


def _repetition(value: torch.fx.Node):
    """``(expand, reshape, group)`` when ``value`` is grouped-query attention's repeat of key/value heads:
    ``unsqueeze(2) → expand [b, kv, g, s, d] → reshape [b, kv·g, s, d]``, each used once; else None."""
    if value.target is not aten.reshape.default or len(value.users) != 1:
        return None
    expand = value.args[0]
    if not isinstance(expand, torch.fx.Node) or expand.target is not aten.expand.default or len(expand.users) != 1:
        return None
    src, ex = tensor_val(expand.args[0]), tensor_val(expand)
    if src is None or ex is None or ex.dim() != 5 or src.shape[2] != 1 or not isinstance(ex.shape[2], int):
        return None
    return expand, value, ex.shape[2]


def _rewrite_shapes(rw: Rewriter, b: _Attention, kept: int, keep_per_pool: int) -> None:
    """Write the new head count into every explicit shape of the block, then let the other shapes follow."""
    for node in b.region:
        if node.target in SHAPE_OPS:
            shape = list(node.args[1])
            if node is b.merge:
                at, new = len(shape) - 1, kept * b.head_dim
            elif node.target is aten.expand.default:
                at, new = 2, keep_per_pool
            elif _split_axis(node) is not None:
                at, new = _split_axis(node), kept
            else:  # the reshape after a grouped-query expand: [b, kv·g, s, d]
                at, new = 1, kept
            if isinstance(shape[at], int) and shape[at] != -1:
                shape[at] = new
            rw.update(node, args=(node.args[0], shape, *node.args[2:]))
        else:
            rw.update(node, args=node.args)
    got = tensor_val(b.sdpa)
    if got is None or got.shape[1] != kept:
        raise RuntimeError(f"prune-attention-heads: {b.sdpa.name} has {got.shape[1] if got is not None else '?'} "
                           f"heads after the rewrite, expected {kept}")
