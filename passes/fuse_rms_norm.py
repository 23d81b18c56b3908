"""fuse-rms-norm: Llama's decomposed RMSNorm → one ``aten.rms_norm``.

Before (after eliminate-dead-nodes removed the no-op ``to(float32)`` casts around it)::

    %pow_1 = aten.pow.Tensor_Scalar(%x, 2) : f32[batch, 7, 16]
    %mean = aten.mean.dim(%pow_1, [-1], True) : f32[batch, 7, 1]
    %add = aten.add.Tensor(%mean, 1e-05) : f32[batch, 7, 1]
    %rsqrt = aten.rsqrt(%add) : f32[batch, 7, 1]
    %mul = aten.mul.Tensor(%x, %rsqrt) : f32[batch, 7, 16]
    %mul_1 = aten.mul.Tensor(%weight, %mul) : f32[batch, 7, 16]

After::

    %rms_norm_default = aten.rms_norm(%x, [16], %weight, 1e-05) : f32[batch, 7, 16]

Written with the declarative pattern API (``fxopt.pattern_pass``): the pattern is the modeling code.
Inductor decomposes ``rms_norm`` into one fused kernel either way; the value is a graph that says what it
computes, for the cost model, the dump tool and precision passes.
"""
import torch

from fxopt.pattern import pattern_pass

aten = torch.ops.aten


def rms_norm_pattern(x, weight, eps=1e-6):
    """Llama/Qwen/Mistral RMSNorm as Hugging Face writes it."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def rms_norm_replacement(x, weight, eps):
    return aten.rms_norm.default(x, [x.shape[-1]], weight, eps)


def _weight_matches_hidden(match):
    weight, x = match.val("weight"), match.val("x")
    if weight is None or weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        return "the scale is not a vector over the last dimension"
    return True


fuse_rms_norm = pattern_pass(
    "fuse-rms-norm", rms_norm_pattern, rms_norm_replacement,
    example_inputs=(torch.randn(2, 5, 8), torch.randn(8)),
    where=_weight_matches_hidden,
    description="Decomposed RMSNorm (pow / mean / rsqrt / mul, as Llama, Qwen, Mistral write it) → aten.rms_norm.",
)
