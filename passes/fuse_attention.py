"""fuse-attention: explicit softmax(Q·Kᵀ·scale + mask)·V → ``aten.scaled_dot_product_attention``.

Models loaded with ``attn_implementation="eager"`` (BERT, GPT-2, …) spell attention out; SDPA computes
the same thing in one fused kernel, never materializing the (batch, heads, seq, seq) scores in memory.
The additive float mask is passed as SDPA's ``attn_mask`` (same semantics: added to the scaled scores
before the softmax), so padding and causal masks are preserved.

Before::

    %transpose = aten.transpose.int(%k, 2, 3) : f32[batch, 4, 8, 6]
    %matmul = aten.matmul(%q, %transpose) : f32[batch, 4, 6, 6]
    %mul = aten.mul.Tensor(%matmul, 0.5) : f32[batch, 4, 6, 6]
    %add = aten.add.Tensor(%mul, %mask) : f32[batch, 4, 6, 6]
    %softmax = aten.softmax.int(%add, 3) : f32[batch, 4, 6, 6]
    %matmul_1 = aten.matmul(%softmax, %v) : f32[batch, 4, 6, 8]

After::

    %scaled_dot_product_attention_default = aten.scaled_dot_product_attention(%q, %k, %v, %mask, 0.0, False, scale=0.5) : f32[batch, 4, 6, 8]
"""
import torch

from fxopt.pattern import PatternRule, pattern_pass

aten = torch.ops.aten


def masked_attention(q, k, v, mask, scale=0.125):
    scores = torch.matmul(q, k.transpose(2, 3)) * scale + mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def masked_sdpa(q, k, v, mask, scale):
    return aten.scaled_dot_product_attention.default(q, k, v, mask, 0.0, False, scale=scale)


def attention(q, k, v, scale=0.125):
    return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(2, 3)) * scale, dim=-1), v)


def sdpa(q, k, v, scale):
    return aten.scaled_dot_product_attention.default(q, k, v, None, 0.0, False, scale=scale)


def _sdpa_can_take(match):
    q, k, v = match.val("q"), match.val("k"), match.val("v")
    if any(t is None or t.dim() != 4 for t in (q, k, v)):
        return "q, k and v are not 4-D (batch, heads, seq, dim)"
    if not all(t.dtype.is_floating_point for t in (q, k, v)):
        return "q, k, v are not floating point"
    mask = match.values.get("mask")
    if mask is not None:
        m = match.val("mask")
        if m is None or not m.dtype.is_floating_point or m.dim() > 4:
            return "the mask is not an additive float mask of rank ≤ 4"
    if not isinstance(match.scalars.get("scale"), float):
        return "the scale is not a constant"
    return True


_example = tuple(torch.randn(2, 3, 5, 4) for _ in range(3))
fuse_attention = pattern_pass(
    "fuse-attention",
    description="Explicit softmax(Q·Kᵀ·scale + mask)·V → scaled_dot_product_attention, mask kept.",
    rules=[
        PatternRule("masked attention", masked_attention, masked_sdpa, (*_example, torch.randn(2, 1, 5, 5)),
                    where=_sdpa_can_take, priority=1),
        PatternRule("attention", attention, sdpa, _example, where=_sdpa_can_take, priority=0),
    ],
)
