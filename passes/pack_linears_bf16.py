"""pack-linears-bf16: each bf16 linear on oneDNN's packed weight, its fp32 bias and a following GELU in the epilogue.

``cast-linears-bf16`` leaves each bf16 linear as ``aten.linear`` on a bf16 constant, its result cast to fp32 and
the fp32 bias added after. Two things are then left on the table:

- **the compile cache.** Inductor packs a constant weight for oneDNN only under freezing, and AOTAutograd's cache
  refuses a frozen graph, so every bf16 compile traced and froze the whole graph again: SmolLM2's second compile
  with warm caches took 83.8 s against fp32's 20.7 s (4.05×, Intel Xeon with AMX, BENCHMARKS.md). This pass
  writes the packing itself, ``mkldnn._reorder_linear_weight`` on the constant, which
  :func:`fxopt.unfrozen_lowering.lift_weights` runs once and passes to the compiled code as an input: the graph
  lowers unfrozen and the caches serve the next compile (:mod:`fxopt.onednn_bf16`).
- **the epilogue.** oneDNN adds an fp32 bias and applies GELU to the fp32 accumulator before its one rounding to
  bf16; Inductor's own GELU fusion does not see through the bias add in fp32, so MiniLM's six GELUs ran as
  separate kernels (5.9 ms of a 44.9 ms call, profiled on the AMX host). The GELU is folded in only where its
  result feeds nothing but bf16 casts (the next bf16 linear's input): rounding it to bf16 then loses nothing
  that the cast did not already lose.

The bias is rounded once with the result instead of the product being rounded before the bias is added.

Measured on an Intel Xeon with AMX (2 threads; ``quantize="bf16"`` with and without this pass, same process,
interleaved): MiniLM 8 × 128 41.2 → 33.4 ms (2.86× → 3.53× eager, min pooled cosine 0.999982 → 0.999984);
SmolLM2 prefill 1 × 256 121.3 → 121.7 ms, a tie (no bias, and SiLU-times-up is not a oneDNN post-op). SmolLM2's
bf16 compile with warm caches fell from 4.05× fp32's to 1.76× (``fxopt bench --warm-start``). BENCHMARKS.md,
"bf16 linears packed by fxopt".

Lossy (``tolerance="budget"``): the rounding moves (bf16 level); the mode's budget is checked on the compiled model.

Before::

    %linear = aten.linear(%to, %fc1) : bf16[batch, 64]
    %to_1 = aten.to.dtype(%linear, float32) : f32[batch, 64]
    %add = aten.add.Tensor(%to_1, %fc1_bias) : f32[batch, 64]
    %gelu = aten.gelu(%add) : f32[batch, 64]
    %to_2 = aten.to.dtype(%gelu, bfloat16) : bf16[batch, 64]
    %linear_1 = aten.linear(%to_2, %fc2) : bf16[batch, 32]
    %to_3 = aten.to.dtype(%linear_1, float32) : f32[batch, 32]

After::

    %_reorder_linear_weight_default = mkldnn._reorder_linear_weight(%fc1, 8) : bf16[64, 32]
    %_linear_pointwise_default = mkldnn._linear_pointwise(%to, %_reorder_linear_weight_default, %fc1_bias, 'gelu', [], 'none') : bf16[batch, 64]
    %_reorder_linear_weight_default_1 = mkldnn._reorder_linear_weight(%fc2, 8) : bf16[32, 64]
    %_linear_pointwise_default_1 = mkldnn._linear_pointwise(%_linear_pointwise_default, %_reorder_linear_weight_default_1, None, 'none', [], '') : bf16[batch, 32]
    %to_3 = aten.to.dtype(%_linear_pointwise_default_1, float32) : f32[batch, 32]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fxopt import onednn_bf16
from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.ir.meta import rows_at_example, same_type
from fxopt.passes.quantize_weights_int8 import PRECISION_KEY
from fxopt.rewriter import Rewriter

aten = torch.ops.aten
mkldnn = torch.ops.mkldnn


@dataclass
class PackBf16Options:
    fuse_bias: bool = True  # an fp32 bias added to the linear's result: added by oneDNN before rounding
    fuse_gelu: bool = True  # a GELU whose result only feeds bf16 casts: applied by oneDNN before rounding


@graph_pass("pack-linears-bf16", options=PackBf16Options, stage="target", tolerance="budget",
            after=("cast-linears-bf16", "cast-attention-bf16", "select-gemm-backend"))
def pack_linears_bf16(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """bf16 linears → oneDNN on a packed weight (lifted at lowering), fp32 bias and GELU in its epilogue."""
    opts: PackBf16Options = ctx.options
    rw = Rewriter(gm)
    linears = [n for n in gm.graph.find_nodes(op="call_function", target=aten.linear.default) if _is_bf16_linear(rw, n)]
    if not linears:
        return rw.result()
    if not onednn_bf16.available():
        ctx.note("oneDNN is not available in this torch build: bf16 linears left to Inductor")
        return rw.result()
    onednn_bf16.register_fake_reorder()
    for node in linears:
        x, weight = node.args[0], node.args[1]
        bias = node.args[2] if len(node.args) > 2 else None
        bias_add = _fp32_bias_add(rw, node) if opts.fuse_bias and bias is None else None
        if bias_add is not None:
            bias = bias_add.args[1]
        gelu = _gelu_feeding_bf16(bias_add) if opts.fuse_gelu and bias_add is not None else None
        packed = rw.call(mkldnn._reorder_linear_weight.default, (weight, rows_at_example(node, gm)), before=node)
        attr, algorithm = ("gelu", gelu.kwargs.get("approximate", "none")) if gelu is not None else ("none", "")
        fused = rw.call(mkldnn._linear_pointwise.default, (x, packed, bias, attr, [], algorithm), before=node)
        if PRECISION_KEY in node.meta:
            fused.meta[PRECISION_KEY] = node.meta[PRECISION_KEY]
        rw.count("linears")
        if bias_add is None:
            rw.replace(node, fused)
            continue
        rw.count("fp32 biases")
        rw.replace(bias_add, rw.call(aten._to_copy.default, (fused,), {"dtype": torch.float32}, before=bias_add))
        if gelu is not None:
            _read_gelu_from(rw, gelu, fused)
            rw.count("GELUs")
    rw.remove_unused()
    return rw.result()


def _is_bf16_linear(rw: Rewriter, node: torch.fx.Node) -> bool:
    weight = rw.constant(node.args[1])
    bias = node.args[2] if len(node.args) > 2 else None
    return (weight is not None and weight.dtype == torch.bfloat16 and weight.dim() == 2 and not node.kwargs
            and node.args[0].meta["val"].dtype == torch.bfloat16
            and (bias is None or rw.constant(bias) is not None))


def _fp32_bias_add(rw: Rewriter, node: torch.fx.Node) -> torch.fx.Node | None:
    """``add(_to_copy(node, float32), bias)`` when that is the linear's only use and ``bias`` a constant fp32
    vector of its output width (the form ``cast-linears-bf16`` writes), else None."""
    cast = _only_user(node)
    if cast is None or not _is_cast(cast, torch.float32):
        return None
    add = _only_user(cast)
    if add is None or add.target is not aten.add.Tensor or add.kwargs or add.args[0] is not cast:
        return None
    bias = rw.constant(add.args[1])
    width = node.meta["val"].shape[-1]
    if bias is None or bias.dtype != torch.float32 or tuple(bias.shape) != (width,):
        return None
    return add


def _gelu_feeding_bf16(bias_add: torch.fx.Node) -> torch.fx.Node | None:
    """The GELU of ``bias_add`` (through one view) when every value it feeds is cast to bf16 (through views),
    so that rounding the GELU itself to bf16 changes nothing downstream; else None."""
    source = _only_user(bias_add)
    if source is not None and source.target is aten.view.default:
        source = _only_user(source)
    if source is None or source.target is not aten.gelu.default or len(source.args) != 1 \
            or set(source.kwargs) - {"approximate"}:
        return None
    for user in source.users:
        if user.target is aten.sym_size.int:
            continue
        casts = user.users if user.target is aten.view.default else [user]
        if not casts or not all(_is_cast(c, torch.bfloat16) for c in casts):
            return None
    return source


def _read_gelu_from(rw: Rewriter, gelu: torch.fx.Node, fused: torch.fx.Node) -> None:
    """Point each bf16 cast of ``gelu`` at ``fused`` (the linear that now applies it, already in bf16), viewed to
    the cast's shape; sizes read from ``gelu`` are read from its input instead. ``gelu`` is then unused."""
    for user in list(gelu.users):
        if user.target is aten.sym_size.int:
            rw.update(user, args=(gelu.args[0], *user.args[1:]))
            continue
        for cast in list(user.users) if user.target is aten.view.default else [user]:
            if same_type(cast.meta["val"], fused.meta["val"]):
                rw.replace(cast, fused)
                continue
            sizes = user.args[1] if user is not cast else rw.sizes(gelu.meta["val"].shape, gelu.args[0], before=cast)
            rw.replace(cast, rw.call(aten.view.default, (fused, sizes), before=cast))


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_cast(node: torch.fx.Node, dtype: torch.dtype) -> bool:
    """``node`` only converts its input to ``dtype`` (``_to_copy``, as passes write it, or ``to``, as models do)."""
    if node.target is aten._to_copy.default:
        return len(node.args) == 1 and node.kwargs == {"dtype": dtype}
    return node.target is aten.to.dtype and tuple(node.args[1:]) == (dtype,) and not node.kwargs
