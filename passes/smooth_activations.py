"""smooth-activations: move activation outliers into the weights before int8 quantization (SmoothQuant).

A few input channels of some linears carry values 10–100× larger than the rest (SmolLM2's SwiGLU output feeding
``down_proj``, the RMSNorm outputs feeding q/k/v). Quantized per token, such a channel sets the token's scale
and crushes every other channel to a few levels. Smoothing divides input channel ``j`` by
``s_j = max|x_j|^α / max|W_:,j|^(1-α)`` and multiplies weight column ``j`` by ``s_j`` (Xiao et al., 2023): the
product is unchanged, and the activations are flatter. The division is folded into the op that produces the
input, so nothing is added at run time:

- ``rms_norm`` / ``layer_norm`` whose every user is one of the linears: its weight (and bias) divided by ``s``;
- ``act(a) * b`` (SwiGLU) whose every user is one of the linears: the rows of the linear producing ``b``
  (a chunk of a fused gate/up linear included) divided by ``s``.

Other producers (a LayerNorm whose output also feeds a residual add, as in BERT) are left alone and named in
the diagnostics. ``max|x_j|`` comes from running the graph on the example inputs (the calibration). In exact
arithmetic the pass changes nothing (``tolerance="exact"``); it matters only to a quantization pass after it.

Before::

    %norm.weight = const : f32[16]
    %up.weight = const : f32[32, 16]
    %rms_norm = aten.rms_norm(%x, [16], %norm.weight, 1e-05) : f32[batch, 7, 16]
    %linear = aten.linear(%rms_norm, %up.weight) : f32[batch, 7, 32]

After::

    %_fxopt_rms_norm_smoothed = const : f32[16]
    %rms_norm = aten.rms_norm(%x, [16], %_fxopt_rms_norm_smoothed, 1e-05) : f32[batch, 7, 16]
    %_fxopt_linear_smoothed = const : f32[32, 16]
    %linear = aten.linear(%rms_norm, %_fxopt_linear_smoothed) : f32[batch, 7, 32]
"""
from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.fx

from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.rewriter import Rewriter

aten = torch.ops.aten
ACTIVATIONS = (aten.silu.default, aten.gelu.default, aten.relu.default)


@dataclass
class SmoothOptions:
    alpha: float = 0.5  # how much of the outliers moves into the weights (0: none, 1: all)


class _ChannelMax(torch.fx.Interpreter):
    """Runs the graph and keeps, for each node in ``watch``, the max |value| per last-axis channel."""

    def __init__(self, gm, watch):
        super().__init__(gm)
        self.watch = watch
        self.amax: dict[torch.fx.Node, torch.Tensor] = {}

    def run_node(self, n):
        out = super().run_node(n)
        if n in self.watch and isinstance(out, torch.Tensor):
            m = out.detach().abs().reshape(-1, out.shape[-1]).amax(0)
            self.amax[n] = torch.maximum(self.amax[n], m) if n in self.amax else m
        return out


@graph_pass("smooth-activations", options=SmoothOptions, level=2, tolerance="exact",
            after=("fuse-sibling-linears",), before=("plan-precision", "quantize-dynamic-int8"))
def smooth_activations(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Divide outlier input channels of linears by s and multiply the weights' columns by s (SmoothQuant)."""
    alpha = ctx.options.alpha
    rw = Rewriter(gm)
    groups: dict[torch.fx.Node, list[torch.fx.Node]] = defaultdict(list)
    for node in gm.graph.find_nodes(op="call_function", target=aten.linear.default):
        w = rw.constant(node.args[1])
        if w is not None and w.dtype == torch.float32 and w.dim() == 2 and not node.kwargs:
            groups[node.args[0]].append(node)
    foldable: dict[torch.fx.Node, object] = {}
    left: dict[str, list[str]] = defaultdict(list)
    for source, linears in groups.items():
        fold = _fold_site(rw, source, set(linears))
        if isinstance(fold, str):
            left[fold].append(f"%{source.name}")
            rw.count("inputs left alone")
        else:
            foldable[source] = fold
    for reason, names in left.items():
        more = f", … ({len(names)} in all)" if len(names) > 3 else ""
        ctx.note(f"linear inputs not smoothed: {reason}: {', '.join(names[:3])}{more}")
    if not foldable:
        return rw.result()
    with torch.no_grad():
        probe = _ChannelMax(gm, set(foldable))
        probe.run(*ctx.example_inputs)
    for source, fold in foldable.items():
        linears = groups[source]
        weights = [rw.constant(n.args[1]) for n in linears]
        w_max = torch.stack([w.abs().amax(0) for w in weights]).amax(0)
        s = (probe.amax[source].clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        fold(s)
        for node, w in zip(linears, weights):
            new = rw.add_constant(f"{node.name}_smoothed", lambda w=w: w * s[None, :], before=node)
            rw.update(node, args=(node.args[0], new, *node.args[2:]))
        rw.count("inputs smoothed")
        rw.count("linears", len(linears))
    rw.remove_unused()
    return rw.result()


def _fold_site(rw: Rewriter, source: torch.fx.Node, linears: set):
    """A function ``fold(s)`` that divides ``source``'s channels by ``s`` inside the op producing it, or why not."""
    if set(source.users) - linears:
        return "its value has users besides the linears (a residual add?)"
    if source.op != "call_function":
        return "it is a graph input"
    if source.target in (aten.rms_norm.default, aten.layer_norm.default):
        params = [i for i in ((2,) if source.target is aten.rms_norm.default else (2, 3)) if len(source.args) > i]
        consts = [rw.constant(source.args[i]) if source.args[i] is not None else None for i in params]
        if not consts or consts[0] is None:
            return "the norm has no constant weight"

        def fold(s):
            args = list(source.args)
            for i, c in zip(params, consts):
                if c is not None:  # a norm feeds one group of linears: nothing changed it since
                    args[i] = rw.add_constant(f"{source.name}_smoothed", lambda c=c: c / s, before=source)
            rw.update(source, args=tuple(args))
        return fold
    if source.target is aten.mul.Tensor:
        a, b = source.args
        if isinstance(a, torch.fx.Node) and a.target in ACTIVATIONS:
            a, b = b, a
        if not (isinstance(b, torch.fx.Node) and b.target in ACTIVATIONS):
            return "a product that is not act(x) * y"
        return _fold_into_producing_rows(rw, a)
    return f"its producer {source.target} has nothing to fold a scale into"


def _fold_into_producing_rows(rw: Rewriter, value: torch.fx.Node):
    """``value`` is a linear's output, or a chunk of one (``split_with_sizes`` + ``getitem`` on the last axis)."""
    offset, linear = 0, value
    if value.target is operator.getitem and value.args[0].target is aten.split_with_sizes.default:
        split = value.args[0]
        sizes, dim = split.args[1], split.args[2] if len(split.args) > 2 else 0
        if dim not in (-1, split.args[0].meta["val"].dim() - 1):
            return "the chunk is not split on the channel axis"
        offset, linear = sum(sizes[: value.args[1]]), split.args[0]
    if linear.target is not aten.linear.default or len(value.users) != 1:
        return "y is not (a chunk of) a linear's output used once"
    has_bias = len(linear.args) > 2 and linear.args[2] is not None
    if rw.constant(linear.args[1]) is None or (has_bias and rw.constant(linear.args[2]) is None):
        return "y's linear has no constant weight"

    def fold(s):  # reads the weights when it runs: the same linear may have been smoothed on its input side
        weight = rw.constant(linear.args[1])
        bias = rw.constant(linear.args[2]) if has_bias else None
        rows = torch.ones(weight.shape[0], dtype=weight.dtype)
        rows[offset: offset + s.numel()] = 1 / s
        args = list(linear.args)
        args[1] = rw.add_constant(f"{linear.name}_smoothed", lambda: weight * rows[:, None], before=linear)
        if bias is not None:
            args[2] = rw.add_constant(f"{linear.name}_smoothed_bias", lambda: bias * rows, before=linear)
        rw.update(linear, args=tuple(args))
    return fold
