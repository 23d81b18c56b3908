"""quantize-static-int8: linears to int8 × int8 GEMMs, activations quantized with scales fixed at calibration.

Each chosen linear's weight is quantized once, at compile time, as in ``quantize-dynamic-int8`` (int8, one
symmetric scale per output channel). Its input is quantized with **one scale and zero point for the whole
tensor, fixed at compile time** from the range the precision planner observed on the calibration batches
(:mod:`fxopt.calibration`: min/max or a percentile, whichever gives that linear the smaller error):
``s = (hi - lo) / 255``, ``z = round(-lo / s)``, ``q = clamp(round(x · (1/s)) + z, 0, 255)`` as uint8. No
reduction runs over the activations at run time, the quantization is one pointwise op that Inductor fuses into
the kernel producing ``x`` (a norm, an activation), and oneDNN's ``qlinear_pointwise`` takes the scale, the zero
point and the bias itself and returns fp32, so nothing follows the GEMM. Values outside the calibrated range are
clipped: that is the accuracy static quantization trades for speed, and why the planner measures it end to end
and moves the linears it hurts most to dynamic int8 (per-token scales) or higher precision.

The range is read from ``node.meta["fxopt.activation_range"]``, which the planner (``plan-precision`` with
``quantize="int8-static"``) writes; a linear without one is an error that names the fix. In a pass spec without
the planner, ``observer=minmax`` (or ``percentile``) observes the example inputs instead. Lossy
(``tolerance="budget"``). ``tests/test_quantize_static_int8.py`` reads Inductor's generated code to prove the
int8 kernel runs.

Before::

    %proj.weight = const : f32[32, 64]
    %linear = aten.linear(%x, %proj.weight, %proj.bias) : f32[batch, 10, 32]

After (``...``: 1/s, then z, then s and z as numbers)::

    %_fxopt_linear_int8 = const : i8[32, 64]
    %_fxopt_linear_scales = const : f32[32]
    %view_default = aten.view(%x, [-1, 64]) : f32[10*batch, 64]
    %mul_tensor = aten.mul.Tensor(%view_default, ...) : f32[10*batch, 64]
    %round_default = aten.round(%mul_tensor) : f32[10*batch, 64]
    %add_tensor = aten.add.Tensor(%round_default, ...) : f32[10*batch, 64]
    %clamp_default = aten.clamp(%add_tensor, 0.0, 255.0) : f32[10*batch, 64]
    %_to_copy_default = aten._to_copy(%clamp_default, dtype=uint8) : u8[10*batch, 64]
    %qlinear_prepack_default = onednn.qlinear_prepack(%_fxopt_linear_int8, None) : i8[64, 32]
    %qlinear_pointwise_default = onednn.qlinear_pointwise(%_to_copy_default, ..., %qlinear_prepack_default, %_fxopt_linear_scales, None, %proj.bias, 1.0, 0, float32, 'none', [], '') : f32[10*batch, 32]
    %sym_size_int = aten.sym_size.int(%x, 0) : sym batch
    %view_default_1 = aten.view(%qlinear_pointwise_default, [%sym_size_int, 10, 32]) : f32[batch, 10, 32]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fxopt.calibration import RANGE_KEY, observe, static_qparams
from fxopt.errors import PassError
from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.onednn_int8 import emit_qlinear
from fxopt.passes.quantize_weights_int8 import linear_location, linear_selected, quantize_per_channel, rewrite_linears

aten = torch.ops.aten


#: marks a uint8 node made by a fused epilogue with the (scale, zero point) it is quantized in
QUANTIZED_KEY = "fxopt.uint8_quantized"


@dataclass
class StaticInt8Options:
    only: tuple[str, ...] = ()  # quantize only linears whose weight name or module path contains one of these
    skip: tuple[str, ...] = ()  # keep these linears as they are (by weight name or module path substring)
    fuse_gelu: bool = True  # linear → GELU → static linear: GELU and the requantization in oneDNN's epilogue
    # "planned": the ranges the planner calibrated (quantize="int8-static"); "minmax" / "percentile": observe the
    # example inputs here, for a pass spec without the planner
    observer: Literal["planned", "minmax", "percentile"] = "planned"


def _calibrated_range(node):
    observed = node.meta.get(RANGE_KEY)
    if observed is None:
        raise PassError(f"quantize-static-int8: {linear_location(node)} has no calibrated activation range. "
                        "Calibrate with fxopt.compile(model, inputs, quantize='int8-static', calibration=[batches]), "
                        "or observe the example inputs: quantize-static-int8{observer=minmax}")
    return observed


class _LinearInputs(torch.fx.Interpreter):
    """Runs the graph and keeps each constant-weight linear's input."""

    def __init__(self, gm):
        super().__init__(gm)
        self.inputs: dict[torch.fx.Node, torch.Tensor] = {}

    def run_node(self, n):
        if n.op == "call_function" and n.target is aten.linear.default:
            self.inputs[n] = self.env[n.args[0]].detach()
        return super().run_node(n)


def _observe_example(gm, example_inputs, observer: str) -> None:
    """Write each linear's range, observed on the example inputs, where the planner would."""
    with torch.no_grad():
        probe = _LinearInputs(gm)
        probe.run(*example_inputs)
    for node, x in probe.inputs.items():
        node.meta[RANGE_KEY] = observe([x], observer)


def _gelu_epilogue(node, will_rewrite):
    """``(gelu, consumer)`` when the linear's only use is an exact GELU (else ``(None, None)``); ``consumer`` is
    the GELU's only use when that is the input of a linear this pass rewrites (``will_rewrite``), else None."""
    if len(node.users) != 1:
        return None, None
    gelu = next(iter(node.users))
    if gelu.target is not aten.gelu.default or gelu.kwargs.get("approximate", "none") != "none" \
            or len(gelu.args) > 1:
        return None, None
    consumer = next(iter(gelu.users)) if len(gelu.users) == 1 else None
    if consumer is None or consumer.target is not aten.linear.default or consumer.args[0] is not gelu \
            or not will_rewrite(consumer):
        return gelu, None
    return gelu, consumer


def _sizes(rw, node, x, w):
    """The linear's output shape, symbolic sizes read from ``x``."""
    return rw.sizes([*node.meta["val"].shape[:-1], w.shape[0]], x, before=node)


def quantize_tensor(rw, rows, scale: float, zero_point: int, before):
    """Emit ``clamp(round(rows · (1/scale)) + zero_point, 0, 255)`` as uint8: one fused pointwise op."""
    def call(op, *args):
        return rw.call(op, args, before=before)

    shifted = call(aten.add.Tensor, call(aten.round.default, call(aten.mul.Tensor, rows, 1.0 / scale)),
                   float(zero_point))
    return rw.call(aten._to_copy.default, (call(aten.clamp.default, shifted, 0.0, 255.0),), {"dtype": torch.uint8},
                   before=before)


@graph_pass("quantize-static-int8", options=StaticInt8Options, level=2, tolerance="budget",
            after=("fuse-sibling-linears", "plan-precision"), before=("select-gemm-backend",))
def quantize_static_int8(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Linears → oneDNN int8 GEMMs with calibrated per-tensor activation scales (no run-time reduction)."""
    opts: StaticInt8Options = ctx.options
    if opts.observer != "planned":
        _observe_example(gm, ctx.example_inputs, opts.observer)
    quantized: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def quantize(w):
        if id(w) not in quantized:
            q, scales = quantize_per_channel(w)
            quantized[id(w)] = q, scales.float()
        return quantized[id(w)]

    def direct(rw, node, w, bias):
        scale, zero_point = static_qparams(*_calibrated_range(node))
        weight = rw.add_constant(f"{node.name}_int8", lambda: quantize(w)[0], before=node,
                                 key=("int8-per-channel", w))
        scales = rw.add_constant(f"{node.name}_scales", lambda: quantize(w)[1], before=node,
                                 key=("int8-scales", "float32", w))
        x = node.args[0]
        rows = rw.call(aten.view.default, (x, [-1, w.shape[1]]), before=node)
        if x.meta.get(QUANTIZED_KEY) != (scale, zero_point):  # else: a fused epilogue already made it uint8
            rows = quantize_tensor(rw, rows, scale, zero_point, node)
        gelu, consumer = _gelu_epilogue(node, lambda n: RANGE_KEY in n.meta and linear_selected(
            rw, n, opts.skip, opts.only, "int8-static") is True)
        if gelu is not None and opts.fuse_gelu:
            # oneDNN applies the GELU to the accumulators, so no Inductor kernel computes it; where the next linear
            # is static int8 too, it also writes uint8 in that linear's scale, and the fp32 activation (4× the
            # bytes) is never written
            output = static_qparams(*_calibrated_range(consumer)) if consumer is not None else None
            out = emit_qlinear(rw, rows, weight, scales, node, x_scale=scale, x_zero_point=zero_point, bias=bias,
                               post_op="gelu", output=output)
            view = rw.call(aten.view.default, (out, _sizes(rw, node, x, w)), before=node)
            if output is not None:
                view.meta[QUANTIZED_KEY] = output
            rw.replace(gelu, view)
            rw.count("GELU fused, uint8 out" if output is not None else "GELU fused")
            return view, rw.constant(weight)
        out = emit_qlinear(rw, rows, weight, scales, node, x_scale=scale, x_zero_point=zero_point, bias=bias)
        return rw.call(aten.view.default, (out, _sizes(rw, node, x, w)), before=node), rw.constant(weight)

    rw = rewrite_linears(gm, opts.skip, torch.float32, None, None, only=opts.only, precision="int8-static",
                         direct=direct)
    return rw.result()
