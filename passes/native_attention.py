"""native-attention: bf16 attention of a prefill or an encoder → fxopt's kernel on the CPU's AMX tiles.

ATen's CPU flash attention multiplies each block of queries with a GEMM call, and at short sequences and narrow
heads that call's overhead is most of its time (MiniLM: 32-wide heads, 128 tokens, 96 heads per layer).
``fxopt::prefill_attention`` (:mod:`fxopt.native_kernels`, ``csrc/prefill_attention.cpp``) packs each K/V head
once into the pair layout AMX multiplies, runs Q Kᵀ and P V as tile instructions, keeps a whole row of scores (one
softmax pass, no rescaling), skips the keys a causal block never sees, reads Q/K/V with their strides (the heads of
a fused q/k/v linear in place) and each K/V head in place for its query heads (grouped-query attention), and writes
``[batch, seq, heads, dim]`` as ATen's flash kernel does, so the transpose and reshape after it stay views. Its
softmax is ATen's for bf16 (fp32 scores, the mask added after the scale, ``e^(s - max)`` rounded to bf16 for the
second product, fp32 row sums); only ``e^x`` is its own polynomial, within 3e-6 of it.

Measured on an Intel Xeon with AMX (2 threads), one call alone, against ATen's bf16 flash kernel: MiniLM's
attention (8 × 12 heads × 128 × 32) 0.74–1.17 ms against 1.08–1.80 ms; SmolLM2's causal prefill (9 heads on 3 K/V
heads × 256 × 64) 0.25 ms against 0.45 ms.

Target stage: only where :func:`fxopt.native_kernels.amx_bf16` finds AMX bf16 tiles the kernel may use and its
library builds; elsewhere (AMD hosts, older Intel) ATen's kernel stays. Only bf16 calls without dropout whose head
size is a multiple of 32 match, with more than one query (decode steps are ``single-query-attention``'s) and a mask
that is boolean or additive. Lossy against fp32 as bf16 attention is, with ATen's bf16 rounding
(``tolerance="budget"``); ``tests/test_native_attention.py`` checks it against fp32 and ATen's bf16 kernel.

Before::

    %scaled_dot_product_attention = aten.scaled_dot_product_attention(%q, %k, %v, %mask, scale=0.18) : bf16[batch, 2, 48, 32]

After::

    %prefill_attention_default = fxopt.prefill_attention(%q, %k, %v, %mask, 0.18, False) : bf16[batch, 2, 48, 32]
"""
from __future__ import annotations

import math

import torch

from fxopt import native_kernels
from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.rewriter import Rewriter

aten = torch.ops.aten


def _why_not(q, k, v, mask, dropout, enable_gqa) -> str | None:
    """Why the kernel cannot take this call (None when it can)."""
    q_val, k_val, v_val = (t.meta["val"] for t in (q, k, v))
    if any(t.dtype != torch.bfloat16 or t.dim() != 4 for t in (q_val, k_val, v_val)):
        return "not bf16"
    if dropout:
        return "dropout"
    if not isinstance(q_val.shape[-1], int) or q_val.shape[-1] % 32:
        return "head size not a multiple of 32"
    # a decode step (single-query-attention's); a dynamic length that is 1 at run time is correct here, only slower
    if isinstance(q_val.shape[2], int) and q_val.shape[2] == 1:
        return "one query"
    if q_val.shape[1] != k_val.shape[1] and not enable_gqa:
        return "heads differ without enable_gqa"
    if mask is not None and (mask.meta["val"].dim() > 4 or mask.meta["val"].dtype not in
                             (torch.bool, torch.float32, torch.bfloat16)):
        return "mask"
    return None


_AND = (aten.__and__.Tensor, aten.bitwise_and.Tensor, aten.logical_and.default)


def _all_true(gm: torch.fx.GraphModule, node) -> bool:
    """Whether ``node`` is a boolean constant (or a slice of one) whose every element is true."""
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target == aten.slice.Tensor:
        node = node.args[0]
    if not (isinstance(node, torch.fx.Node) and node.op == "get_attr"):
        return False
    value = getattr(gm, node.target, None)
    return isinstance(value, torch.Tensor) and value.dtype == torch.bool and bool(value.all())


def smallest_mask(gm: torch.fx.GraphModule, mask):
    """``mask`` without the all-true constants it is and-ed with. Hugging Face's bidirectional mask is
    ``table[:, :, :seq, :] & padding[batch, 1, 1, seq]`` with an all-true table (folded from ``arange >= 0``):
    Inductor writes that ``[batch, 1, seq, seq]`` product once per attention, while the kernel broadcasts the
    ``[batch, 1, 1, seq]`` padding mask itself."""
    while isinstance(mask, torch.fx.Node) and mask.target in _AND and len(mask.args) == 2:
        a, b = mask.args
        if _all_true(gm, a) and isinstance(b, torch.fx.Node):
            mask = b
        elif _all_true(gm, b) and isinstance(a, torch.fx.Node):
            mask = a
        else:
            break
    return mask


@graph_pass("native-attention", stage="target", tolerance="budget",
            after=("cast-attention-bf16", "grouped-query-attention", "single-query-attention", "select-gemm-backend"))
def native_attention(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """bf16 SDPA (no dropout) → ``fxopt.prefill_attention`` where this machine has AMX bf16 tiles."""
    rw = Rewriter(gm)
    candidates = []
    for node in list(gm.graph.find_nodes(op="call_function", target=aten.scaled_dot_product_attention.default)):
        q, k, v, *rest = node.args
        mask = rest[0] if rest else node.kwargs.get("attn_mask")
        dropout = rest[1] if len(rest) > 1 else node.kwargs.get("dropout_p", 0.0)
        causal = rest[2] if len(rest) > 2 else node.kwargs.get("is_causal", False)
        scale = rest[3] if len(rest) > 3 else node.kwargs.get("scale")
        enable_gqa = rest[4] if len(rest) > 4 else node.kwargs.get("enable_gqa", False)
        why = _why_not(q, k, v, mask, dropout, enable_gqa)
        if why is not None:
            rw.count(f"left alone ({why})")
            continue
        candidates.append((node, q, k, v, mask, bool(causal), scale))
    if not candidates:
        return rw.result()
    why = native_kernels.amx_bf16()  # builds the kernel on first use: only a graph with a bf16 attention pays
    if why is not None:
        ctx.note(f"attention left to ATen: {why}")
        return rw.result()
    for node, q, k, v, mask, causal, scale in candidates:
        scale = scale if scale is not None else 1 / math.sqrt(q.meta["val"].shape[-1])
        mask = smallest_mask(gm, mask)
        rw.replace(node, rw.call(torch.ops.fxopt.prefill_attention.default, (q, k, v, mask, float(scale), causal),
                                 before=node))
        rw.count("attentions")
    rw.remove_unused()
    return rw.result()
