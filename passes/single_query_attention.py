"""single-query-attention: attention of one query per sequence (a decode step) → fxopt's decode-attention kernel on
the un-repeated K/V heads (or, where the native kernels cannot be built, the same attention spelled out).

A decode step attends one new token to the whole cache. ``scaled_dot_product_attention`` spends most of its time
outside the arithmetic for one query, and grouped-query models (Llama, SmolLM2: 9 query heads on 3 K/V heads)
first repeat each K/V head into a copy per query head — for SmolLM2 at 384 cache slots 0.9 MB copied per layer
and step, twice. ``fxopt::decode_attention`` (:mod:`fxopt.native_kernels`) reads each K/V head in place for its
group of query heads, one parallel task per sequence and query head. Spelled out instead (a product and sum over
the head dim, a softmax and a product and sum over the slots, heads first), Inductor fuses it but, with a batch
dim it cannot tell is 1, leaves it to one thread. Measured on an Intel Xeon (2 threads) per SmolLM2 layer at 384
slots, eager calls: the repeat and SDPA 250 µs, the kernel 63 µs; inside the compiled decode step, the spelled
out form's fused kernel took 276 µs.

Only calls whose query length is the literal 1 match (a prefill or encoder graph is left alone), without dropout
or ``is_causal`` (with one query, causality is the mask's job), with a mask that is boolean or additive of shape
``[batch or 1, 1 or heads, 1, slots]``. ``native=false`` always spells it out.

Before::

    %sym_size_int_3 = aten.sym_size.int(%keys, 0) : sym batch
    %unsqueeze = aten.unsqueeze(%keys, 2) : f32[batch, 2, 1, 16, 8]
    %expand = aten.expand(%unsqueeze, [%sym_size_int_3, 2, 2, 16, 8]) : f32[batch, 2, 2, 16, 8]
    %reshape = aten.reshape(%expand, [%sym_size_int_3, 4, 16, 8]) : f32[batch, 4, 16, 8]
    %unsqueeze_1 = aten.unsqueeze(%values, 2) : f32[batch, 2, 1, 16, 8]
    %expand_1 = aten.expand(%unsqueeze_1, [%sym_size_int_3, 2, 2, 16, 8]) : f32[batch, 2, 2, 16, 8]
    %reshape_1 = aten.reshape(%expand_1, [%sym_size_int_3, 4, 16, 8]) : f32[batch, 4, 16, 8]
    %scaled_dot_product_attention = aten.scaled_dot_product_attention(%q, %reshape, %reshape_1, %mask, scale=0.35) : f32[batch, 4, 1, 8]

After::

    %decode_attention_default = fxopt.decode_attention(%q, %keys, %values, %mask, 0.35) : f32[batch, 4, 1, 8]
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx

from fxopt import native_kernels
from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.rewriter import Rewriter

aten = torch.ops.aten


def unrepeated_heads(node: torch.fx.Node) -> tuple[torch.fx.Node, int] | None:
    """``(kv, group)`` when ``node`` is Hugging Face's ``repeat_kv(kv, group)`` —
    ``reshape(expand(unsqueeze(kv, 2), [b, h, group, s, d]), [b, h * group, s, d])`` — else None."""
    if node.op != "call_function" or node.target not in (aten.reshape.default, aten.view.default):
        return None
    expand = node.args[0]
    if not (isinstance(expand, torch.fx.Node) and expand.target == aten.expand.default):
        return None
    unsqueeze = expand.args[0]
    if not (isinstance(unsqueeze, torch.fx.Node) and unsqueeze.target == aten.unsqueeze.default
            and unsqueeze.args[1] == 2):
        return None
    kv = unsqueeze.args[0]
    group = expand.meta["val"].shape[2]
    kv_val = kv.meta.get("val")
    if kv_val is None or kv_val.dim() != 4 or not isinstance(group, int):
        return None
    return kv, group


def _sizes(rw: Rewriter, ref: torch.fx.Node, before: torch.fx.Node, shape) -> list:
    """``shape`` with each symbolic size read from ``ref`` at the same dim (only the batch is symbolic)."""
    return rw.sizes(shape, ref, before=before)


def _mask_fits(mask, q_val, kv_heads: int, group: int) -> bool:
    m = mask.meta.get("val")
    return (m is not None and m.dim() == 4 and m.shape[2] == 1 and m.shape[1] in (1, kv_heads * group)
            and (m.dtype == torch.bool or m.dtype == q_val.dtype))


@dataclass
class SingleQueryOptions:
    native: bool = True  # fxopt's kernel where it builds; false: the attention spelled out in ATen ops


@graph_pass("single-query-attention", options=SingleQueryOptions, after=("fuse-attention",))
def single_query_attention(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """SDPA of one query per sequence → fxopt's decode-attention kernel (or the attention spelled out) over the
    un-repeated K/V heads."""
    rw = Rewriter(gm)
    for node in list(gm.graph.find_nodes(op="call_function", target=aten.scaled_dot_product_attention.default)):
        q, k, v, *rest = node.args
        mask = rest[0] if rest else node.kwargs.get("attn_mask")
        dropout = rest[1] if len(rest) > 1 else node.kwargs.get("dropout_p", 0.0)
        causal = rest[2] if len(rest) > 2 else node.kwargs.get("is_causal", False)
        q_val = q.meta["val"]
        if q_val.dim() != 4 or not isinstance(q_val.shape[2], int) or q_val.shape[2] != 1:
            continue
        if dropout or causal or node.kwargs.get("enable_gqa", False):
            rw.count("left alone (dropout, causal or enable_gqa)")
            continue
        k_src, v_src = unrepeated_heads(k) or (k, 1), unrepeated_heads(v) or (v, 1)
        if k_src[1] != v_src[1]:
            k_src, v_src = (k, 1), (v, 1)
        (keys, group), values = k_src, v_src[0]
        batch, heads, _, dim = q_val.shape
        kv_heads = heads // group
        if mask is not None and not _mask_fits(mask, q_val, kv_heads, group):
            rw.count("left alone (mask shape)")
            continue
        scale = node.kwargs.get("scale") or 1 / math.sqrt(dim)
        # available() builds the kernels on first use: only a graph with a matching attention pays for that
        if ctx.options.native and _native_fits(q_val, keys, values) and native_kernels.available("decode_attention"):
            rw.replace(node, rw.call(torch.ops.fxopt.decode_attention.default, (q, keys, values, mask, scale),
                                     before=node))
            rw.count("attentions (native kernel)")
            continue
        rw.replace(node, _spelled_out(rw, node, q, keys, values, mask, scale, group))
        rw.count("attentions")
    rw.remove_unused()
    return rw.result()


def _native_fits(q_val, keys: torch.fx.Node, values: torch.fx.Node) -> bool:
    """The kernel's contract: fp32 throughout, the cache's rows contiguous."""
    k, v = keys.meta["val"], values.meta["val"]
    return (q_val.dtype == k.dtype == v.dtype == torch.float32 and k.shape == v.shape
            and k.stride(-1) == 1 and v.stride(-1) == 1)


def _spelled_out(rw: Rewriter, node: torch.fx.Node, q, keys, values, mask, scale: float,
                 group: int) -> torch.fx.Node:
    """softmax(q·kᵀ·scale, masked)·v in ATen ops, the query heads of each K/V head grouped, heads first."""
    q_val = q.meta["val"]
    batch, heads, _, dim = q_val.shape
    kv_heads = heads // group
    call = lambda target, *args: rw.call(target, args, before=node)  # noqa: E731
    heads_first = [1, 2, 0, 3]  # [batch, kv_heads, group, x] → [kv_heads, group, batch, x]

    qg = call(aten.reshape.default, q, _sizes(rw, q, node, (batch, kv_heads, group, dim)))
    qg = call(aten.unsqueeze.default, call(aten.permute.default, qg, heads_first), 3)
    kh = call(aten.unsqueeze.default, call(aten.permute.default, keys, [1, 0, 2, 3]), 1)
    scores = call(aten.sum.dim_IntList, call(aten.mul.Tensor, qg, kh), [-1])
    scores = call(aten.mul.Tensor, scores, scale)  # [kv_heads, group, batch, slots]
    if mask is not None:
        m_val = mask.meta["val"]
        m = mask
        if m_val.shape[1] != 1:  # a mask per query head: grouped like the heads
            m = call(aten.reshape.default, mask,
                     _sizes(rw, mask, node, (m_val.shape[0], kv_heads, group, m_val.shape[-1])))
        m = call(aten.permute.default, m, heads_first)
        if m_val.dtype == torch.bool:
            scores = call(aten.where.self, m, scores, call(aten.scalar_tensor.default, float("-inf")))
        else:
            scores = call(aten.add.Tensor, scores, m)
    probs = call(aten._softmax.default, scores, -1, False)
    vh = call(aten.unsqueeze.default, call(aten.permute.default, values, [1, 0, 2, 3]), 1)
    out = call(aten.sum.dim_IntList, call(aten.mul.Tensor, call(aten.unsqueeze.default, probs, -1), vh), [3])
    out = call(aten.permute.default, out, [2, 0, 1, 3])  # [batch, kv_heads, group, dim]
    return call(aten.reshape.default, out, _sizes(rw, q, node, q_val.shape))
