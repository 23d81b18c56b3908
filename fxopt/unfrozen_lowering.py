"""Lowering without weight freezing, so that a second compile of the same model loads Inductor's cached code.

With ``freezing=True`` Inductor treats every weight as a constant of the graph, which lets it fold and repack
weights, but AOTAutograd's cache refuses such a graph ("Cannot cache a graph with freezing enabled",
``torch/_functorch/_aot_autograd/autograd_cache.py``): every compile, in every new process, traces the graph
again and runs the freezing passes again, even when Inductor's FX graph cache then hits (BENCHMARKS.md, warm
start). For most of fxopt's graphs freezing has nothing left to do: the passes already folded the constants,
put each linear on the library measured fastest reading the plain weight (``select-gemm-backend``) and wrote
decode GEMVs as loops over the weight. Such a graph is lowered with its weights *lifted into inputs*:

Before (the weights are attributes of the graph module)::

    %w = get_attr[target=model.layers.0.mlp.up_proj.weight]
    %up = mkldnn._linear_pointwise(%x, %w, None, "none", [], "")

After (what Inductor compiles; the compiled code is called with the same weight tensors first, no copy)::

    %w = placeholder[target=_fxopt_weight_0]
    %x = placeholder[target=x]
    %up = mkldnn._linear_pointwise(%x, %w, None, "none", [], "")

The graph then holds no tensor, so AOTAutograd's and Inductor's cache keys are its code and its input shapes,
and a new process compiling the same model finds the compiled code in both caches.

:func:`freezing_reason` names what still needs freezing, in which case :func:`fxopt.lowering.lower` freezes as
before: a tensor packed for oneDNN or MKL (opaque, and unpicklable for the caches), a computation on weights
alone (a bf16 cast: freezing runs it once), or a linear, matmul or convolution on a constant weight that
Inductor packs only when frozen.

An int8 weight's ``onednn.qlinear_prepack`` and a bf16 weight's ``mkldnn._reorder_linear_weight``
(``pack-linears-bf16``) are the computations on a weight alone that are lifted too: :func:`lift_weights` packs
the weight once, eagerly, and the *packed* tensor becomes the input (a FakeTensor of it keys the caches by shape,
as any input; the packed bytes are never pickled)::

    %w = get_attr[target=_fxopt_int8_weight_0]                 %w_packed = placeholder[target=_fxopt_weight_0]
    %p = onednn.qlinear_prepack(%w, None)             ──▶      %y = onednn.qlinear_pointwise(%q, …, %w_packed, …)
    %y = onednn.qlinear_pointwise(%q, …, %p, …)

Measured on MiniLM (Intel Xeon host, BENCHMARKS.md): the int8 graph's second compile in a new process took 45 s
frozen, when Inductor refused to cache it ("mkldnn tensors unpickleable": the packed constants enter its key), and
takes 1.45× the warm fp32 compile now; the compiled code runs the same oneDNN calls on the same packed weights.

Inductor lowers ``mkldnn._linear_pointwise`` and ``mkl._mkl_linear`` only for a constant weight (an ``assert`` in
``torch/_inductor/mkldnn_lowerings.py``, torch 2.13, which exists for its autotuner); :func:`_allow_input_weights`
adds the case of a weight that is an input, emitting the same oneDNN or MKL call (keeping Inductor's fusions of a
following activation or add into oneDNN's) without autotuning. A constant weight still takes Inductor's lowering.
"""
from __future__ import annotations

import operator
from typing import Callable, Sequence

import torch
import torch.fx

aten = torch.ops.aten

onednn = torch.ops.onednn

#: Packing ops that :func:`lift_weights` runs once on a constant weight, lifting the packed result: an int8
#: weight's and a bf16 weight's (``pack-linears-bf16``).
_PACKED_AT_LIFT = tuple(op.default for op in (getattr(onednn, "qlinear_prepack", None),
                                              getattr(torch.ops.mkldnn, "_reorder_linear_weight", None))
                        if op is not None)

#: Ops whose constant weight Inductor packs (oneDNN/MKL layouts) only under freezing: operand positions.
_PACKED_WHEN_FROZEN = {
    aten.linear.default: (1,),
    aten.mm.default: (0, 1),
    aten.addmm.default: (1, 2),
    aten.convolution.default: (1,),
}


def _attr(gm: torch.fx.GraphModule, target: str):
    return operator.attrgetter(target)(gm)


def freezing_reason(gm: torch.fx.GraphModule) -> str | None:
    """Why ``gm`` should be lowered with freezing, or None when lifting its weights into inputs loses nothing."""
    constant: set[torch.fx.Node] = set()  # nodes computed from weights alone
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = _attr(gm, node.target)
            if not isinstance(value, torch.Tensor):
                return f"{node.target} is a {type(value).__name__}, not a tensor that could be passed as an input"
            if value.is_mkldnn:
                return f"{node.target} is packed for oneDNN or MKL (opaque, unpicklable)"
            constant.add(node)
        elif node.op == "call_function":
            inputs = node.all_input_nodes
            if _packed_at_lift(node):
                continue
            if inputs and all(a in constant for a in inputs):
                constant.add(node)
                if not getattr(node.target, "is_view", False):
                    return f"{node.name} ({node.target}) computes from weights alone: freezing runs it once"
            positions = _PACKED_WHEN_FROZEN.get(node.target, ())
            if any(i < len(node.args) and node.args[i] in constant for i in positions):
                return f"{node.name} ({node.target}): Inductor packs its weight only when frozen"
        elif node.op not in ("placeholder", "output"):
            return f"{node.name} is a {node.op} node"
    return None


def _packed_at_lift(node: torch.fx.Node) -> bool:
    """Whether ``node`` packs a constant weight, which :func:`lift_weights` does once, lifting the result."""
    return (node.target in _PACKED_AT_LIFT and isinstance(node.args[0], torch.fx.Node)
            and node.args[0].op == "get_attr" and not any(isinstance(a, torch.fx.Node) for a in node.args[1:]))


def lift_weights(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    """A graph module holding no tensor: each ``get_attr`` becomes a leading placeholder, and so does each
    packing of a constant weight (packed here, once). Returns it and the tensors to pass for those placeholders
    (the graph's own, detached: no copy; the packed weights, which only the compiled code will hold)."""
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    weights: list[torch.Tensor] = []
    by_key: dict[object, torch.fx.Node] = {}
    fake_mode = _fake_mode(gm)

    def lift(key, make: Callable[[], torch.Tensor]) -> torch.fx.Node:
        if key not in by_key:
            tensor = make()
            lifted = graph.placeholder(f"_fxopt_weight_{len(weights)}")
            lifted.meta["val"] = _fake_of(fake_mode, tensor) if fake_mode else tensor
            weights.append(tensor)
            by_key[key] = lifted
        return by_key[key]

    packed = [n for n in gm.graph.nodes if n.op == "call_function" and _packed_at_lift(n)]
    for node in packed:
        weight = node.args[0]
        env[node] = lift((node.target, weight.target),
                         lambda: node.target(_attr(gm, weight.target).detach(), *node.args[1:]))
    needed = {n for n in gm.graph.find_nodes(op="get_attr") if any(u not in env for u in n.users)}
    for node in gm.graph.find_nodes(op="get_attr"):
        if node in needed:
            env[node] = lift(node.target, lambda: _attr(gm, node.target).detach())
    for node in gm.graph.nodes:
        if node.op == "get_attr" or node in env:
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    return torch.fx.GraphModule(torch.nn.Module(), graph), weights


def _fake_of(fake_mode, tensor: torch.Tensor) -> torch.Tensor:
    """The FakeTensor that stands for a lifted weight. A oneDNN-packed bf16 weight (opaque, no strides: its fake
    would report ``(1, 0)``) is given contiguous strides: Inductor's ``LinearUnary`` requires a contiguous weight
    and would otherwise copy it, reading a storage the opaque tensor does not have. oneDNN reads it as packed."""
    if tensor.is_mkldnn and tensor.dtype == torch.bfloat16:
        with fake_mode:
            return torch.empty(tensor.shape, dtype=tensor.dtype)
    return fake_mode.from_tensor(tensor, static_shapes=True)


def _fake_mode(gm: torch.fx.GraphModule):
    from torch._guards import detect_fake_mode

    return detect_fake_mode([n.meta["val"] for n in gm.graph.find_nodes(op="placeholder") if "val" in n.meta])


def compile_unfrozen(gm: torch.fx.GraphModule, fake_inputs: Sequence[torch.Tensor], *,
                     cpp_wrapper: bool = False) -> Callable:
    """Compile ``gm`` with Inductor, its weights lifted into inputs; returns a callable over the flat inputs.
    ``cpp_wrapper``: Inductor's C++ wrapper instead of its Python one (:mod:`fxopt.cpp_wrapper`)."""
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx

    _allow_input_weights()
    lifted, weights = lift_weights(gm)
    fake_weights = [n.meta["val"] for n in lifted.graph.find_nodes(op="placeholder")][:len(weights)]
    # Inductor's code checks every input's sizes, strides and alignment on every call (about 1 µs each): for an int8
    # decode step's ~490 inputs that is 0.7 ms of a 28 ms token. The weights are the graph's own tensors, and the
    # callers check the rest first (fxopt.call_contract: dtype, rank, sizes and ranges, made contiguous; the
    # generation loop allocates its caches in the traced layout), so the per-call checks are left out.
    with torch.no_grad(), inductor_config.patch(freezing=False, size_asserts=False, alignment_asserts=False,
                                                cpp_wrapper=cpp_wrapper):
        compiled = compile_fx(lifted, [*fake_weights, *fake_inputs])

    def run(*flat: torch.Tensor):
        return compiled(*weights, *flat)

    return run


_installed = False


def _allow_input_weights() -> None:
    """Let Inductor lower oneDNN's linear on a weight that is a graph input (once per process)."""
    global _installed
    if _installed or not torch._C._has_mkldnn:
        return
    from torch._inductor import ir, mkldnn_ir
    from torch._inductor.lowering import lowerings, view
    from torch._inductor.virtualized import V

    unary_op, binary_op = torch.ops.mkldnn._linear_pointwise.default, torch.ops.mkldnn._linear_pointwise.binary
    inductors_unary, inductors_binary = lowerings.get(unary_op), lowerings.get(binary_op)
    if inductors_unary is None or inductors_binary is None:  # this Inductor does not lower oneDNN linears
        _installed = True
        return

    def rows(t):
        size = t.get_size()
        return (view(t, [-1, size[-1]]) if len(size) > 2 else t), size

    def unflatten(result, size):
        return view(result, (*size[:-1], result.get_size()[-1])) if len(size) > 2 else result

    def unary(x, w, b, attr, scalars, algorithm, layout=None):
        if w.get_name() in V.graph.constants:
            return inductors_unary(x, w, b, attr, scalars, algorithm, layout)
        x2, size = rows(x)
        b = ir.ExternKernel.realize_input(b) if b is not None else None
        return unflatten(ir.TensorBox.create(mkldnn_ir.LinearUnary.create(x2, w, b, attr, scalars, algorithm)), size)

    def binary(x, y, w, b, attr, layout=None):
        if w.get_name() in V.graph.constants:
            return inductors_binary(x, y, w, b, attr, layout)
        x2, size = rows(x)
        y2, _ = rows(y)
        b = ir.ExternKernel.realize_input(b) if b is not None else None
        return unflatten(ir.TensorBox.create(mkldnn_ir.LinearBinary.create(x2, y2, w, b, attr)), size)

    lowerings[unary_op] = unary
    lowerings[binary_op] = binary
    mkl_op = torch.ops.mkl._mkl_linear.default if hasattr(torch.ops.mkl, "_mkl_linear") else None
    inductors_mkl = lowerings.get(mkl_op) if mkl_op is not None else None
    if inductors_mkl is not None:
        def mkl(x, packed_w, orig_w, b, batch_size, *, layout=None):
            if packed_w.get_name() in V.graph.constants:
                return inductors_mkl(x, packed_w, orig_w, b, batch_size, layout=layout)
            return ir.TensorBox.create(mkldnn_ir.MKLPackedLinear.create(x, packed_w, orig_w, b, batch_size))

        lowerings[mkl_op] = mkl
    _allow_input_int8_weights()
    _installed = True


def _allow_input_int8_weights() -> None:
    """oneDNN's int8 linear on a packed weight that is an input: Inductor's lowering asserts a constant weight
    (``torch/_inductor/mkldnn_lowerings.py``, torch 2.13); for an input it becomes the same oneDNN call, as an
    extern kernel. The activation's quantize and the dequantizing epilogue around it stay Inductor's kernels."""
    from torch._inductor.lowering import fallback_handler, lowerings
    from torch._inductor.virtualized import V

    weight_position = 3  # (x, x_scale, x_zero_point, packed_weight, …) in every overload
    for name in ("default", "tensor", "binary", "binary_tensor"):
        op = getattr(onednn.qlinear_pointwise, name, None)
        inductors = lowerings.get(op) if op is not None else None
        if inductors is None:
            continue

        def lowering(*args, _inductors=inductors, _extern=fallback_handler(op, add_to_fallback_set=False),
                     **kwargs):
            weight = args[weight_position]
            if weight.get_name() in V.graph.constants:
                return _inductors(*args, **kwargs)
            return _extern(*args, **kwargs)

        lowerings[op] = lowering
