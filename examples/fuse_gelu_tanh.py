"""A third-party-style declarative pass: GPT-2's hand-written tanh GELU → ``aten.gelu(approximate="tanh")``.

Before (GPT-2's ``NewGELUActivation``, eight nodes)::

    %mul = aten.mul.Tensor(%x, 0.5) : f32[batch, 8]
    %pow_1 = aten.pow.Tensor_Scalar(%x, 3.0) : f32[batch, 8]
    %mul_1 = aten.mul.Tensor(%pow_1, 0.044715) : f32[batch, 8]
    %add = aten.add.Tensor(%x, %mul_1) : f32[batch, 8]
    %mul_2 = aten.mul.Tensor(%add, 0.7978845608028654) : f32[batch, 8]
    %tanh = aten.tanh(%mul_2) : f32[batch, 8]
    %add_1 = aten.add.Tensor(%tanh, 1.0) : f32[batch, 8]
    %mul_3 = aten.mul.Tensor(%mul, %add_1) : f32[batch, 8]

After::

    %gelu_default = aten.gelu(%x, approximate='tanh') : f32[batch, 8]
"""
import math

import torch

import fxopt

aten = torch.ops.aten


def gelu_tanh_pattern(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_tanh(x):
    return aten.gelu.default(x, approximate="tanh")


fuse_gelu_tanh = fxopt.pattern_pass("fuse-gelu-tanh", gelu_tanh_pattern, gelu_tanh,
                                    example_inputs=(torch.randn(4, 8),))
