"""quantize-weights-int8: linear weights to int8 with one scale per output channel (or per group of inputs, below);
activations stay fp32.

Decode reads every weight once per token, so its speed is bound by the bytes of the weights: int8 weights are a
quarter of fp32's. Each linear's weight ``W`` (out × in) becomes ``q = round(W / s)`` clamped to [-127, 127] with
``s = max |W_row| / 127`` (symmetric, per output channel), computed once at compile time and held once per model
(the constant pool). The linear becomes ``aten._weight_int8pack_mm``, ATen's CPU kernel that multiplies
activations by int8 weights and scales each output column — no int8 activation, no calibration. The kernel is
fast with bf16 activations only: streaming a decode step's weights of SmolLM2 (AMD EPYC, 2 threads) took 9.5 ms
with bf16 activations, 56 ms with fp32 ones, against 24.8 ms for fp32 weights on oneDNN and 13.3 ms for bf16 ones.
So the activations are cast to bf16 for the kernel (``activations="bfloat16"``, the default; the result comes
back in fp32, bias added in fp32) and the scales are stored in bf16.

A linear of a few rows (a decode step) can instead run as :mod:`fxopt.gemv` on the int8 weight: Inductor's loop
converts each int8 weight to fp32 in registers, multiplies fp32 activations and scales the sum (``kernel="gemv"``,
or ``"measure"``, the default, which times both per shape here and keeps the faster). On SmolLM2's decode linears
(AMD EPYC, 2 threads) it took half the time of ``_weight_int8pack_mm`` with its casts, and its activations are
exact fp32.

``group_size=g`` gives each group of ``g`` inputs of a row its own scale instead (few rows only: these run as
:func:`fxopt.gemv.gemv_grouped` in Inductor's loop or as fxopt's native kernel ``fxopt::gemv_int8_grouped``,
:mod:`fxopt.native_kernels`; ``kernel="measure"`` times both per shape on this machine and keeps the faster: on an
Intel Xeon the native kernel won every SmolLM2 layer's linear and lost the LM head), on a symmetric grid
(``q * s``), an asymmetric one (``q * s + z``, from the group's min and max), or per group whichever reconstructs
the group better (``scheme="auto"``). A weight that
already lies on such a grid comes back exactly: SmolLM2's GGUF stores its linears as Q4_1 (blocks of 32 on an
asymmetric 4-bit grid: with group 32, asymmetric int8 reproduces them to 4e-8 relative) and its embedding, the LM
head, as Q8_0 (blocks of 32, symmetric int8: reproduced exactly), where one scale per row leaves an error of 0.8%
(bf16 weights: 0.13%). The decode graph's ``decode_precision="int8-weight-only"`` uses group 32, ``auto``.

It is lossy (``tolerance="budget"``): the numeric check only requires finite outputs, and the accuracy is
measured end to end (``fxopt bench --generate`` compares greedy tokens with fp32). ``skip`` keeps weights whose
name or module path contains one of its strings in fp32 (``skip=[lm_head]``).

Before::

    %proj.weight = const : f32[32, 64]
    %linear = aten.linear(%x, %proj.weight, %proj.bias) : f32[batch, 10, 32]

After::

    %_fxopt_linear_int8 = const : i8[32, 64]
    %_fxopt_linear_scales = const : bf16[32]
    %view_default = aten.view(%x, [-1, 64]) : f32[10*batch, 64]
    %_to_copy_default = aten._to_copy(%view_default, dtype=bfloat16) : bf16[10*batch, 64]
    %_weight_int8pack_mm_default = aten._weight_int8pack_mm(%_to_copy_default, %_fxopt_linear_int8, %_fxopt_linear_scales) : bf16[10*batch, 32]
    %_to_copy_default_1 = aten._to_copy(%_weight_int8pack_mm_default, dtype=float32) : f32[10*batch, 32]
    %add_tensor = aten.add.Tensor(%_to_copy_default_1, %proj.bias) : f32[10*batch, 32]
    %sym_size_int = aten.sym_size.int(%x, 0) : sym batch
    %view_default_1 = aten.view(%add_tensor, [%sym_size_int, 10, 32]) : f32[batch, 10, 32]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from fxopt import gemm_backends, native_kernels
from fxopt.gemv import contiguous_strides, write_gemv, write_gemv_grouped
from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.ir.meta import rows_at_example
from fxopt.rewriter import Rewriter

aten = torch.ops.aten
#: how much faster the int8 GEMV must be measured than _weight_int8pack_mm to be chosen
GEMV_MARGIN = 0.03
#: where the precision planner (fxopt.quant_planner) labels a linear, and where the rewritten kernel says its precision
PRECISION_KEY = "fxopt.precision"


@dataclass
class WeightInt8Options:
    skip: tuple[str, ...] = ()  # keep these weights (by name or module path substring) in fp32
    activations: Literal["bfloat16", "float32"] = "bfloat16"  # what _weight_int8pack_mm multiplies (see above)
    # few-row linears: the faster one here; grouped scales: "gemv" (Inductor's loop) or "native" (fxopt's kernel)
    kernel: Literal["measure", "int8pack_mm", "gemv", "native"] = "measure"
    group_size: int = 0  # inputs per scale; 0: one scale per output channel
    scheme: Literal["symmetric", "asymmetric", "auto"] = "symmetric"  # the grid of each group (group_size > 0)


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: ``(q, scales)`` with ``weight ≈ q * scales[:, None]``."""
    scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scales.to(weight.dtype).contiguous()


def quantize_groups(weight: torch.Tensor, group: int, scheme: str
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Int8 in groups of ``group`` inputs: ``(q, scales, zeros)`` with ``weight ≈ q * s + z`` per group, ``q``
    int8 ``[out, in]``, scales and zeros fp32 ``[out, in / group]``; zeros is None where every group is symmetric.
    ``scheme="auto"`` keeps, per group, the grid with the smaller squared error."""
    n, k = weight.shape
    w = weight.reshape(n, k // group, group)
    sym_scales = (w.abs().amax(-1) / 127).clamp(min=1e-12)
    sym_q = torch.round(w / sym_scales[..., None]).clamp(-127, 127)
    if scheme == "symmetric":
        return sym_q.to(torch.int8).reshape(n, k), sym_scales, None
    lo = w.amin(-1)
    asym_scales = ((w.amax(-1) - lo) / 255).clamp(min=1e-12)
    asym_q = torch.round((w - lo[..., None]) / asym_scales[..., None]).clamp(0, 255) - 128
    asym_zeros = lo + 128 * asym_scales
    if scheme == "auto":
        sym_err = (sym_q * sym_scales[..., None] - w).square().sum(-1)
        asym_err = (asym_q * asym_scales[..., None] + asym_zeros[..., None] - w).square().sum(-1)
        pick = asym_err < sym_err
        if not pick.any():
            return sym_q.to(torch.int8).reshape(n, k), sym_scales, None
        asym_q = torch.where(pick[..., None], asym_q, sym_q)
        asym_scales = torch.where(pick, asym_scales, sym_scales)
        asym_zeros = torch.where(pick, asym_zeros, torch.zeros_like(asym_zeros))
    return asym_q.to(torch.int8).reshape(n, k), asym_scales.contiguous(), asym_zeros.contiguous()


def linear_location(node) -> str:
    """A linear's weight name and module path, for ``only``/``skip`` matching and reports."""
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return f"{node.args[1].target} {path}".strip()


def linear_selected(rw: Rewriter, node, skip: Sequence[str], only: Sequence[str] = (),
                    precision: str | None = None) -> bool | str:
    """Whether :func:`rewrite_linears` rewrites this linear: True; ``"skip"`` when ``skip`` names it; False when
    it is not an fp32 constant-weight linear, ``only`` leaves it out, or the planner labelled it another precision."""
    weight = rw.constant(node.args[1])
    if weight is None or weight.dtype != torch.float32 or weight.dim() != 2 or node.kwargs:
        return False
    planned = node.meta.get(PRECISION_KEY)
    if planned is not None and planned != precision:
        return False
    where = linear_location(node)
    if only and not any(s in where for s in only):
        return False
    return "skip" if any(s in where for s in skip) else True


def rewrite_linears(gm: torch.fx.GraphModule, skip: Sequence[str], act: torch.dtype, kernel, constants, *,
                    only: Sequence[str] = (), precision: str | None = None, direct=None) -> Rewriter:
    """Replace every fp32 constant-weight linear (not skipped; with ``only``, just those it names; where the
    precision planner labelled linears, just those labelled ``precision``) by
    ``kernel(rows in act dtype, *constants(weight))``, cast back to fp32, bias added in fp32: the shape every
    linear-rewriting precision pass shares. ``constants``
    returns ``[(name suffix, recipe key, build), ...]`` for a weight (None: leave it), built once per model
    through the pool; the first is the quantized weight itself. ``direct(rw, node, weight, bias)``, where given,
    may write a linear its own way instead: it returns ``(replacement node, quantized weight)`` or None."""
    rw = Rewriter(gm)
    saved = 0
    for node in list(gm.graph.find_nodes(op="call_function", target=aten.linear.default)):
        selected = linear_selected(rw, node, skip, only, precision)
        if selected == "skip":
            rw.count("kept fp32 (skip)")
        if selected is not True:
            continue
        weight = rw.constant(node.args[1])
        bias = node.args[2] if len(node.args) > 2 else None
        if direct is not None:
            written = direct(rw, node, weight, bias)
            if written is not None:
                new, quantized = written
                new.meta[PRECISION_KEY] = precision or str(act).replace("torch.", "")
                rw.replace(node, new)
                rw.count("linears")
                saved += weight.numel() * weight.element_size() - quantized.numel() * quantized.element_size()
                continue
        consts = constants(weight)
        if consts is None:
            rw.count("kept fp32 (shape)")
            continue
        x = node.args[0]
        out_features, in_features = weight.shape
        nodes = [rw.add_constant(f"{node.name}_{suffix}", build, before=node, key=key) for suffix, key, build in consts]
        rows = rw.call(aten.view.default, (x, [-1, in_features]), before=node)
        if act != torch.float32:
            rows = rw.call(aten._to_copy.default, (rows,), {"dtype": act}, before=node)
        mm = kernel(rw, rows, nodes, node)
        mm.meta[PRECISION_KEY] = precision or str(act).replace("torch.", "")
        if act != torch.float32:
            mm = rw.call(aten._to_copy.default, (mm,), {"dtype": torch.float32}, before=node)
        if bias is not None:
            mm = rw.call(aten.add.Tensor, (mm, bias), before=node)
        sizes = rw.sizes([*node.meta["val"].shape[:-1], out_features], x, before=node)
        rw.replace(node, rw.call(aten.view.default, (mm, sizes), before=node))
        rw.count("linears")
        quantized = rw.constant(nodes[0])
        saved += weight.numel() * weight.element_size() - quantized.numel() * quantized.element_size()
    if saved:
        rw.count("MB fewer weight bytes", round(saved / 2**20))
    rw.remove_unused()
    return rw


@graph_pass("quantize-weights-int8", options=WeightInt8Options, level=2, tolerance="budget",
            after=("fuse-sibling-linears",), before=("select-gemm-backend",))
def quantize_weights_int8(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Linear weights → int8 per output channel or per group (weight-only), run by _weight_int8pack_mm or, for few
    rows, gemv."""
    opts: WeightInt8Options = ctx.options
    if opts.group_size < 0:
        raise ValueError(f"group_size must be 0 (one scale per output channel) or positive, not {opts.group_size}")
    act = getattr(torch, opts.activations)
    quantized: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def quantize(w):  # (int8 weight, fp32 scales), computed once per weight
        if id(w) not in quantized:
            quantized[id(w)] = quantize_per_channel(w)
        return quantized[id(w)]

    def constants(w):
        if opts.group_size:  # grouped scales run only as gemv (direct_grouped), which declined this linear
            return None
        return [("int8", ("int8-per-channel", w), lambda: quantize(w)[0]),
                ("scales", ("int8-scales", str(act), w), lambda: quantize(w)[1].to(act))]

    def kernel(rw, rows, consts, before):
        return rw.call(aten._weight_int8pack_mm.default, (rows, *consts), before=before)

    if opts.kernel == "native" and (not opts.group_size or opts.group_size % 16):
        raise ValueError(f'kernel="native" runs groups of a multiple of 16 inputs, not group_size={opts.group_size}; '
                         'give group_size=32 or another kernel')
    if opts.kernel == "native" and not native_kernels.available("gemv_int8_grouped"):
        why = native_kernels.why_unavailable("gemv_int8_grouped")
        raise ValueError(f'kernel="native" is not available here ({why}); use kernel="gemv" or "measure"')
    timings = gemm_backends.GemmTimings() if opts.kernel == "measure" else None

    grouped: dict[int, tuple] = {}

    def groups_of(w):  # (int8 weight, fp32 scales, fp32 zeros or None), computed once per weight
        if id(w) not in grouped:
            grouped[id(w)] = quantize_groups(w, opts.group_size, opts.scheme)
        return grouped[id(w)]

    def direct_grouped(rw, node, w, bias):
        rows_ok = opts.kernel in ("gemv", "native") or rows_at_example(node, gm) <= gemm_backends.GEMV_MAX_ROWS
        if w.shape[1] % opts.group_size or contiguous_strides(node.args[0].meta["val"]) is None or not rows_ok:
            return None
        key = ("int8-grouped", opts.group_size, opts.scheme, w)
        q = rw.add_constant(f"{node.name}_int8", lambda: groups_of(w)[0], before=node, key=(*key, "q"))
        scales = rw.add_constant(f"{node.name}_scales", lambda: groups_of(w)[1], before=node, key=(*key, "scales"))
        zeros = None
        if groups_of(w)[2] is not None:
            zeros = rw.add_constant(f"{node.name}_zeros", lambda: groups_of(w)[2], before=node, key=(*key, "zeros"))
            rw.count("linears with asymmetric groups")
        if _use_native(w, opts, zeros is not None, rows_at_example(node, gm), timings):
            rw.count("native gemv")
            return native_kernels.write_gemv_native(rw, node, node.args[0], q, scales, zeros, bias), rw.constant(q)
        rw.count("gemv")
        return write_gemv_grouped(rw, node, node.args[0], q, scales, zeros, bias), rw.constant(q)

    def direct(rw, node, w, bias):
        if opts.group_size:
            return direct_grouped(rw, node, w, bias)
        if not _use_gemv(node, gm, w, act, opts.kernel, timings):
            return None
        q = rw.add_constant(f"{node.name}_int8", lambda: quantize(w)[0], before=node, key=("int8-per-channel", w))
        scales = rw.add_constant(f"{node.name}_scales_f32", lambda: quantize(w)[1], before=node,
                                 key=("int8-scales", "float32", w))
        rw.count("gemv")
        return write_gemv(rw, node, node.args[0], q, bias, scales), rw.constant(q)

    rw = rewrite_linears(gm, opts.skip, act, kernel, constants, precision="int8-weight-only", direct=direct)
    if timings is not None:
        timings.save()
    return rw.result()


def _use_native(weight, opts: WeightInt8Options, zeros: bool, rows: int, timings) -> bool:
    """Whether a grouped int8 linear runs on fxopt's native kernel (:mod:`fxopt.native_kernels`): forced by
    ``kernel="native"``, or measured faster than Inductor's gemv loop for its shape on this machine."""
    if opts.kernel != "measure":
        return opts.kernel == "native"
    if not native_kernels.available("gemv_int8_grouped") or opts.group_size % 16:
        return False
    n, k = weight.shape
    times = timings.get_grouped_int8(max(rows, 1), k, n, opts.group_size, zeros)
    return "native" in times and times["native"] < times["gemv"] * (1 - GEMV_MARGIN)


def _use_gemv(node, gm, weight, act, kernel: str, timings) -> bool:
    """Whether this linear runs as :mod:`fxopt.gemv` on its int8 weight: forced by ``kernel``, or measured faster
    than ``_weight_int8pack_mm`` at its rows (few rows only: a decode step)."""
    if kernel == "int8pack_mm" or contiguous_strides(node.args[0].meta["val"]) is None:
        return False
    if kernel == "gemv":
        return True
    rows = rows_at_example(node, gm)
    if rows > gemm_backends.GEMV_MAX_ROWS:
        return False
    n, k = weight.shape
    times = timings.get_weight_int8(rows, k, n, act)
    return times["gemv"] < times["int8pack_mm"] * (1 - GEMV_MARGIN)
