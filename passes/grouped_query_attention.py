"""grouped-query-attention: attention reads each key/value head in place for its group of query heads, instead of a
copy per query head.

Grouped-query models (Llama, SmolLM2: 9 query heads on 3 key/value heads) repeat each K/V head for its group before
attention whenever they pass a mask (Hugging Face's ``repeat_kv``: unsqueeze, expand, reshape). The reshape of the
expanded view is a copy: on SmolLM2's prefill at 256 tokens, each of 30 layers wrote its keys and values three
times over, in kernels Inductor ran on one thread (their outer loop is the batch, traced as 2 and 1 at run time).
``scaled_dot_product_attention(..., enable_gqa=True)`` takes the K/V heads as they are, and ATen's CPU flash
attention maps query head ``h`` to K/V head ``h // group``, which is the head ``repeat_kv`` put there. The result
is bit-identical (checked by this pass's test on SmolLM2's shapes).

Decode steps (one query) are ``single-query-attention``'s; this pass runs after it and takes the rest. It also runs
after ``prune-attention-heads``, which prunes query heads with their K/V heads through ``repeat_kv``.

Before::

    %unsqueeze = aten.unsqueeze(%keys, 2) : f32[batch, 2, 1, 6, 8]
    %expand = aten.expand(%unsqueeze, [%sym_size_int, 2, 2, 6, 8]) : f32[batch, 2, 2, 6, 8]
    %reshape = aten.reshape(%expand, [%sym_size_int, 4, 6, 8]) : f32[batch, 4, 6, 8]
    %unsqueeze_1 = aten.unsqueeze(%values, 2) : f32[batch, 2, 1, 6, 8]
    %expand_1 = aten.expand(%unsqueeze_1, [%sym_size_int, 2, 2, 6, 8]) : f32[batch, 2, 2, 6, 8]
    %reshape_1 = aten.reshape(%expand_1, [%sym_size_int, 4, 6, 8]) : f32[batch, 4, 6, 8]
    %scaled_dot_product_attention = aten.scaled_dot_product_attention(%q, %reshape, %reshape_1, %mask) : f32[batch, 4, 6, 8]

After::

    %scaled_dot_product_attention_default = aten.scaled_dot_product_attention(%q, %keys, %values, %mask, enable_gqa=True) : f32[batch, 4, 6, 8]
"""
from __future__ import annotations

import torch

from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.passes.single_query_attention import unrepeated_heads
from fxopt.rewriter import Rewriter

aten = torch.ops.aten


@graph_pass("grouped-query-attention",
            after=("fuse-attention", "single-query-attention", "prune-attention-heads", "fuse-sibling-linears"),
            before=("cast-attention-bf16",))
def grouped_query_attention(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """SDPA on ``repeat_kv(k)``, ``repeat_kv(v)`` → SDPA on ``k``, ``v`` with ``enable_gqa=True``."""
    rw = Rewriter(gm)
    for node in list(gm.graph.find_nodes(op="call_function", target=aten.scaled_dot_product_attention.default)):
        q, k, v = node.args[:3]
        keys, values = unrepeated_heads(k), unrepeated_heads(v)
        if keys is None or values is None or node.kwargs.get("enable_gqa"):
            continue
        (k_heads, group), (v_heads, v_group) = keys, values
        heads = q.meta["val"].shape[1]
        if group != v_group or k_heads.meta["val"].shape[1] != v_heads.meta["val"].shape[1] \
                or k_heads.meta["val"].shape[1] * group != heads:
            rw.count("left alone (groups differ)")
            continue
        attention = rw.call(aten.scaled_dot_product_attention.default, (q, k_heads, v_heads, *node.args[3:]),
                            {**node.kwargs, "enable_gqa": True}, before=node)
        rw.replace(node, attention)
        rw.count("attentions")
    rw.remove_unused()
    return rw.result()
