"""Reading the shape and dtype metadata that every node of fxopt's IR carries in ``meta["val"]``."""
from __future__ import annotations

import math

import sympy
import torch
import torch.fx

_DTYPE_SHORT = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
    torch.bool: "bool",
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``f32``."""
    return _DTYPE_SHORT.get(dtype, str(dtype).replace("torch.", ""))


def dim_symbol(name: str) -> sympy.Symbol:
    """The sympy symbol of a named dynamic dimension (``batch``, ``seq``)."""
    return sympy.Symbol(name, integer=True, positive=True)


def symbol_map(gm: torch.fx.GraphModule) -> dict[str, sympy.Symbol]:
    """Export's shape symbol names → the named dimensions given at capture (``s18`` → ``batch``)."""
    return {k: dim_symbol(v) for k, v in gm.meta.get("fxopt.symbols", {}).items()}


def size_expr(size, symbols: dict | None = None) -> sympy.Expr:
    """One size (int or SymInt) as a sympy expression over the named dimensions."""
    if isinstance(size, torch.SymInt):
        expr = size.node.expr
        if symbols:
            expr = expr.xreplace({s: symbols[s.name] for s in expr.free_symbols if s.name in symbols})
        return expr
    return sympy.Integer(int(size))


def tensor_val(node) -> torch.Tensor | None:
    """The node's example value when it is a single tensor, else None."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def shape_exprs(node, symbols: dict | None = None) -> tuple[sympy.Expr, ...] | None:
    val = tensor_val(node)
    return None if val is None else tuple(size_expr(s, symbols) for s in val.shape)


def format_type(val, symbols: dict | None = None) -> str:
    """``f32[batch, seq, 384]``; tuples of tensors as ``(f32[...], f32[...])``; ``?`` when unknown."""
    if isinstance(val, torch.Tensor):
        dims = ", ".join(str(size_expr(s, symbols)) for s in val.shape)
        return f"{dtype_name(val.dtype)}[{dims}]"
    if isinstance(val, (tuple, list)):
        return "(" + ", ".join(format_type(v, symbols) for v in val) + ")"
    if isinstance(val, torch.SymInt):
        return f"sym {size_expr(val, symbols)}"
    if val is None:
        return "?"
    return type(val).__name__


def fake_mode_of(gm: torch.fx.GraphModule):
    """The fake-tensor mode (with its shape environment) the graph was captured under."""
    from torch._guards import detect_fake_mode

    if "fxopt.fake_mode" not in gm.meta:
        vals = [n.meta["val"] for n in gm.graph.find_nodes(op="placeholder")
                if isinstance(n.meta.get("val"), torch.Tensor)]
        gm.meta["fxopt.fake_mode"] = detect_fake_mode(vals) if vals else None
    return gm.meta["fxopt.fake_mode"]


def infer_meta(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    """Compute ``node.meta["val"]`` by running its target on its inputs' fake values."""
    node.meta["val"] = propagate(gm, node, fill_inputs=True)


def propagate(gm: torch.fx.GraphModule, node: torch.fx.Node, *, fill_inputs: bool = False):
    """The value ``node`` computes from its inputs' ``meta["val"]`` (fake tensors), without storing it.
    ``fill_inputs`` first infers the metadata of inputs that have none."""
    mode = fake_mode_of(gm)
    if node.op == "get_attr":
        real = _attr(gm, node.target)
        return mode.from_tensor(real, static_shapes=True) if mode and isinstance(real, torch.Tensor) else real
    if node.op != "call_function":
        return node.meta.get("val")

    def to_val(a):
        if isinstance(a, torch.fx.Node):
            if "val" not in a.meta and fill_inputs:
                infer_meta(gm, a)
            return a.meta.get("val")
        return a

    args = torch.fx.node.map_aggregate(node.args, to_val)
    kwargs = torch.fx.node.map_aggregate(node.kwargs, to_val)
    if mode is None:
        return node.target(*args, **kwargs)
    with mode:
        return node.target(*args, **kwargs)


def same_type(a, b) -> bool:
    """Two metadata values agree on structure, dtype and (symbolic) shape."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.dim() == b.dim() and all(str(x) == str(y) for x, y in zip(a.shape, b.shape))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_type(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        return str(a) == str(b)
    return type(a) is type(b)


def _attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def rows_at_example(node: torch.fx.Node, gm: torch.fx.GraphModule) -> int:
    """The rows of a linear-like node's input (all dims but the last) at the user's example sizes (a batch of 1
    is traced as 2; this counts 1); the traced sizes where a dim was not captured by fxopt."""
    sizes = {dim_symbol(k): v for k, v in gm.meta.get("fxopt.example_dims", {}).items()}
    rows = sympy.Integer(1)
    for s in node.args[0].meta["val"].shape[:-1]:
        rows *= size_expr(s, symbol_map(gm))
    rows = rows.subs(sizes)
    if rows.free_symbols:
        rows = sympy.Integer(math.prod(int(s.node.hint) if isinstance(s, torch.SymInt) else int(s)
                                       for s in node.args[0].meta["val"].shape[:-1]))
    return int(rows)
