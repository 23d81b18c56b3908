"""fuse-sibling-linears: linears that read the same input become one linear and a split.

Fuses attention's q/k/v projections (BERT; Llama with grouped-query shapes, where k/v are narrower than q)
and the gate/up pair of SwiGLU MLPs: one larger GEMM instead of two or three, reading the input once.
The concatenated weight (and bias) is computed once at compile time, and the model's own q/k/v (gate/up)
tensors become views of its rows (:mod:`fxopt.weight_sharing`), so the weights are held once and a second
graph of the same model (a decode step) finds them already adjacent: a view, no copy. ``share=false`` keeps
the model's tensors as they were and holds the fused copy beside them (shared between graphs through the
model's constant pool).

Before::

    %q.weight = const : f32[8, 8]
    %q.bias = const : f32[8]
    %k.weight = const : f32[4, 8]
    %k.bias = const : f32[4]
    %v.weight = const : f32[4, 8]
    %v.bias = const : f32[4]
    %linear = aten.linear(%x, %q.weight, %q.bias) : f32[batch, 8]
    %linear_1 = aten.linear(%x, %k.weight, %k.bias) : f32[batch, 4]
    %repeat = aten.repeat(%linear_1, [1, 2]) : f32[batch, 8]
    %linear_2 = aten.linear(%x, %v.weight, %v.bias) : f32[batch, 4]
    %repeat_1 = aten.repeat(%linear_2, [1, 2]) : f32[batch, 8]
    %add = aten.add.Tensor(%linear, %mul) : f32[batch, 8]

After::

    %_fxopt_linear_fused_weight = const : f32[16, 8]
    %_fxopt_linear_fused_bias = const : f32[16]
    %linear_default = aten.linear(%x, %_fxopt_linear_fused_weight, %_fxopt_linear_fused_bias) : f32[batch, 16]
    %split_with_sizes_default = aten.split_with_sizes(%linear_default, [8, 4, 4], -1) : (f32[batch, 8], f32[batch, 4], f32[batch, 4])
    %getitem = getitem(%split_with_sizes_default, 0) : f32[batch, 8]
    %getitem_1 = getitem(%split_with_sizes_default, 1) : f32[batch, 4]
    %getitem_2 = getitem(%split_with_sizes_default, 2) : f32[batch, 4]
    %repeat = aten.repeat(%getitem_1, [1, 2]) : f32[batch, 8]
    %repeat_1 = aten.repeat(%getitem_2, [1, 2]) : f32[batch, 8]
    %add = aten.add.Tensor(%getitem, %mul) : f32[batch, 8]

Preconditions: weights are constants (not inputs), all siblings have a bias or none does, same dtype.
Siblings that break a precondition are left alone and the reason is in the pass's diagnostics.
"""
from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.fx

from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.rewriter import Rewriter
from fxopt.weight_sharing import concat_rows

aten = torch.ops.aten


@dataclass
class FuseOptions:
    share: bool = True  # the model's weights become views of the fused ones (held once; fxopt.weight_sharing)


@graph_pass("fuse-sibling-linears", options=FuseOptions, after=("eliminate-dead-nodes",))
def fuse_sibling_linears(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Merge linears that share an input (q/k/v, gate/up) into one linear followed by a split."""
    share = ctx.options.share
    rw = Rewriter(gm)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    groups: dict[torch.fx.Node, list[torch.fx.Node]] = defaultdict(list)
    for node in gm.graph.find_nodes(op="call_function", target=aten.linear.default):
        groups[node.args[0]].append(node)
    for source, linears in groups.items():
        if len(linears) < 2:
            continue
        weights = [rw.constant(n.args[1]) for n in linears]
        biases = [rw.constant(n.args[2]) if len(n.args) > 2 and n.args[2] is not None else None for n in linears]
        reason = _why_not(linears, weights, biases)
        if reason:
            ctx.note(f"{len(linears)} linears reading %{source.name} not fused: {reason}")
            rw.count("groups not fused")
            continue
        first = min(linears, key=order.__getitem__)
        # shared: no pool key, since the sources' identities change (a second graph finds them adjacent instead)
        weight = rw.add_constant(f"{first.name}_fused_weight", lambda: concat_rows(weights, share=share),
                                 before=first, key=None if share else ("cat", *weights))
        args = [source, weight]
        if biases[0] is not None:
            args.append(rw.add_constant(f"{first.name}_fused_bias", lambda: concat_rows(biases, share=share),
                                        before=first, key=None if share else ("cat", *biases)))
        fused = rw.call(aten.linear.default, tuple(args), before=first)
        sizes = [w.shape[0] for w in weights]
        split = rw.call(aten.split_with_sizes.default, (fused, sizes, -1), before=first)
        parts = [rw.call(operator.getitem, (split, i), before=first) for i in range(len(linears))]
        for linear, part in zip(linears, parts):
            rw.replace(linear, part)
        rw.count("groups fused")
        rw.count("linears fused", len(linears))
    rw.remove_unused()
    return rw.result()


def _why_not(linears, weights, biases) -> str | None:
    if any(w is None for w in weights):
        return "a weight is not a constant"
    if len({w.dtype for w in weights}) > 1 or len({w.shape[1] for w in weights}) > 1:
        return "weights differ in dtype or input width"
    if len({b is None for b in biases}) > 1:
        return "some have a bias and some do not"
    if any(len(n.args) > 3 or n.kwargs for n in linears):
        return "unexpected extra arguments"
    return None
