"""A third-party-style declarative pass: GPT-2's hand-written tanh GELU → ``aten.gelu(approximate="tanh")``.

Before (GPT-2's ``NewGELUActivation``, eight nodes)::

    %pow_1 = aten.pow.Tensor_Scalar(%linear, 3.0)
    %mul = aten.mul.Tensor(%pow_1, 0.044715)
    %add = aten.add.Tensor(%linear, %mul)
    %mul_1 = aten.mul.Tensor(%add, 0.7978845608028654)
    %tanh = aten.tanh(%mul_1)
    %add_1 = aten.add.Tensor(%tanh, 1.0)
    %mul_2 = aten.mul.Tensor(%linear, 0.5)
    %mul_3 = aten.mul.Tensor(%mul_2, %add_1)

After::

    %gelu = aten.gelu(%linear, approximate='tanh')
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
