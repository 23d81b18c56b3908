"""fuse-layer-norm: a LayerNorm written out as mean / variance / normalize → one ``aten.layer_norm``.

Models that use ``nn.LayerNorm`` are captured as ``aten.layer_norm`` already (BERT, GPT-2, MiniLM). Some
write it out by hand, and those graphs carry five to eight ops per norm: DeBERTa
(``(x - mean) / sqrt(var + eps)``, then ``weight * x + bias``) and Cohere (``(x - mean) * rsqrt(var + eps)``,
scaled by a weight, no bias). Both spellings are rules of this pass.

Before (DeBERTa, after CSE merged the two ``x - mean``)::

    %mean = aten.mean.dim(%x, [-1], True) : f32[batch, 7, 1]
    %sub = aten.sub.Tensor(%x, %mean) : f32[batch, 7, 16]
    %pow_1 = aten.pow.Tensor_Scalar(%sub, 2) : f32[batch, 7, 16]
    %mean_1 = aten.mean.dim(%pow_1, [-1], True) : f32[batch, 7, 1]
    %add = aten.add.Tensor(%mean_1, 1e-07) : f32[batch, 7, 1]
    %sqrt = aten.sqrt(%add) : f32[batch, 7, 1]
    %div = aten.div.Tensor(%sub, %sqrt) : f32[batch, 7, 16]
    %mul = aten.mul.Tensor(%weight, %div) : f32[batch, 7, 16]
    %add_1 = aten.add.Tensor(%mul, %bias) : f32[batch, 7, 16]

After::

    %layer_norm_default = aten.layer_norm(%x, [16], %weight, %bias, 1e-07) : f32[batch, 7, 16]

It runs before fuse-rms-norm: the rsqrt spelling is an RMSNorm of ``x - mean``, and fusing that first
would leave a LayerNorm no one recognizes. Inductor fuses either form into one kernel; the fused op is what the cost model, the dump tool and a
precision pass (keep norms in fp32) can recognize.
"""
import torch

from fxopt.pattern import PatternRule, pattern_pass

aten = torch.ops.aten


def sqrt_layer_norm(x, weight, bias, eps=1e-7):
    """DeBERTa's LayerNorm: divide by sqrt, then scale and shift."""
    mean = x.mean(-1, keepdim=True)
    centered = x - mean
    variance = centered.pow(2).mean(-1, keepdim=True)
    return weight * (centered / torch.sqrt(variance + eps)) + bias


def rsqrt_layer_norm(x, weight, eps=1e-5):
    """Cohere's LayerNorm: multiply by rsqrt, then scale; no bias."""
    mean = x.mean(-1, keepdim=True)
    centered = x - mean
    variance = centered.pow(2).mean(-1, keepdim=True)
    return weight * (centered * torch.rsqrt(variance + eps))


def layer_norm(x, weight, bias, eps):
    return aten.layer_norm.default(x, [x.shape[-1]], weight, bias, eps)


def layer_norm_no_bias(x, weight, eps):
    return aten.layer_norm.default(x, [x.shape[-1]], weight, None, eps)


def _affine_over_last_dim(match):
    x = match.val("x")
    for name in ("weight", "bias"):
        if name not in match.values:
            continue
        t = match.val(name)
        if t is None or t.dim() != 1 or t.shape[0] != x.shape[-1]:
            return f"the {name} is not a vector over the last dimension"
        if t.dtype != x.dtype:
            return f"the {name} is {t.dtype}, the input {x.dtype} (layer_norm takes one dtype)"
    return True


_x, _w, _b = torch.randn(2, 5, 8), torch.rand(8) + 0.5, torch.randn(8)
fuse_layer_norm = pattern_pass(
    "fuse-layer-norm",
    description="Hand-written LayerNorms (DeBERTa's sqrt/div with bias, Cohere's rsqrt) → aten.layer_norm.",
    rules=[
        PatternRule("sqrt, with bias", sqrt_layer_norm, layer_norm, (_x, _w, _b), where=_affine_over_last_dim),
        PatternRule("rsqrt, no bias", rsqrt_layer_norm, layer_norm_no_bias, (_x, _w), where=_affine_over_last_dim),
    ],
    after=("eliminate-dead-nodes", "canonicalize", "eliminate-common-subexpressions"),
    before=("fuse-rms-norm",),  # x - mean, then an RMSNorm of it: fusing the RMSNorm first would hide the LayerNorm
)
