"""fold-position-tables: precompute what depends only on weights and ``arange(seq)``, once, for the longest sequence.

Rotary cos/sin tables, position-embedding lookups and similar values are not constants of the graph: they
are computed from ``arange(seq)`` (or a weight sliced to ``seq``) on every call, and Inductor recomputes
them inside every layer's kernel that reads them (a cos and a sin per element of q and k, per layer).
Their value for a sequence of ``s`` positions is the first ``s`` rows of their value for the longest
sequence the model was compiled for. This pass computes that table once, at the upper end of the
dimension's range, and replaces the subgraph with a slice of it.

The prefix property is not assumed, it is checked: each table is also computed directly at two other
lengths and must equal its slice there, or it is not folded (the reason goes to the pass's notes).
A size cap (``max_bytes``, per table at the longest length) keeps quadratic tables such as a causal
mask of 8192 × 8192 positions in the graph.

Before::

    %inv_freq = const : f32[4]
    %arange = aten.arange(%sym_size_int_3, device='cpu', pin_memory=False) : i64[seq]
    %to = aten.to.dtype(%arange, float32) : f32[seq]
    %unsqueeze = aten.unsqueeze(%to, 1) : f32[seq, 1]
    %unsqueeze_1 = aten.unsqueeze(%inv_freq, 0) : f32[1, 4]
    %mul = aten.mul.Tensor(%unsqueeze, %unsqueeze_1) : f32[seq, 4]
    %cat = aten.cat([%mul, %mul], -1) : f32[seq, 8]
    %cos = aten.cos(%cat) : f32[seq, 8]
    %mul_1 = aten.mul.Tensor(%x, %cos) : f32[batch, seq, 8]
    %sin = aten.sin(%cat) : f32[seq, 8]
    %mul_2 = aten.mul.Tensor(%cat_1, %sin) : f32[batch, seq, 8]

After::

    %_fxopt_cos_table = const : f32[64, 8]
    %slice_tensor = aten.slice.Tensor(%_fxopt_cos_table, 0, 0, %sym_size_int_3) : f32[seq, 8]
    %mul_1 = aten.mul.Tensor(%x, %slice_tensor) : f32[batch, seq, 8]
    %_fxopt_sin_table = const : f32[64, 8]
    %slice_tensor_1 = aten.slice.Tensor(%_fxopt_sin_table, 0, 0, %sym_size_int_3) : f32[seq, 8]
    %mul_2 = aten.mul.Tensor(%cat_1, %slice_tensor_1) : f32[batch, seq, 8]
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch
import torch.fx

from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.ir.meta import fake_mode_of, size_expr, tensor_val
from fxopt.ir.ops import DATA_MOVEMENT, is_pure, is_written
from fxopt.rewriter import Rewriter, is_erased

aten = torch.ops.aten

@dataclass
class PositionTableOptions:
    max_bytes: int = 16 * 2**20      # largest table kept, at the longest sequence
    max_positions: int = 1 << 17     # a dimension allowed to grow past this is never tabulated


@graph_pass("fold-position-tables", options=PositionTableOptions, after=("fold-constants",))
def fold_position_tables(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Replace subgraphs of weights and ``arange(seq)`` with a slice of a table computed for the longest ``seq``."""
    opts: PositionTableOptions = ctx.options
    rw = Rewriter(gm)
    mode = fake_mode_of(gm)
    if mode is None or mode.shape_env is None:
        return rw.result()  # static shapes: fold-constants already computed everything it could
    symbol_of = _positional_nodes(gm, rw, mode.shape_env, opts)
    position = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in [n for n, sym in symbol_of.items() if sym is not None and n.op == "call_function"
                 and n.target is not aten.sym_size.int and any(u not in symbol_of for u in n.users)]:
        if is_erased(node):
            continue
        if is_written(node):
            ctx.note(f"not folded: %{node.name} is written in place by a user, so it cannot be a shared table")
            rw.count("written in place")
            continue
        cone = _cone(node, symbol_of, position)
        if all(n.op != "call_function" or n.target in DATA_MOVEMENT for n in cone):
            continue  # only views of arange: not worth a constant
        sym = symbol_of[node]
        upper = int(mode.shape_env.var_to_range[sym].upper)
        lower = max(int(mode.shape_env.var_to_range[sym].lower), 1)
        val = tensor_val(node)
        dims = [d for d, size in enumerate(val.shape) if size_expr(size) == sym]
        size = _longest_numel([size_expr(s) for s in val.shape], sym, mode.shape_env) * val.element_size()
        if size > opts.max_bytes:
            name = gm.meta.get("fxopt.symbols", {}).get(sym.name, sym.name)
            ctx.note(f"not folded (size cap): %{node.name} would take {size / 2**20:.1f} MiB at {name}={upper}")
            rw.count("over size cap")
            continue
        table = _evaluate(cone, upper, rw)
        mismatch = _first_mismatch(cone, table, dims, rw, (lower, (lower + upper) // 3 + 1))
        if mismatch is not None:
            ctx.note(f"not folded: %{node.name} at length {mismatch} is not the first rows of its table")
            rw.count("not a prefix")
            continue
        length = _length_node(cone, sym, symbol_of)
        value = rw.add_constant(node.name + "_table", table, before=node)
        symbol_of[value] = None
        for d in dims:
            value = rw.call(aten.slice.Tensor, (value, d, 0, length), before=node)
            symbol_of[value] = sym  # a later table built on this one reads it through the slice
        del symbol_of[node]
        rw.replace(node, value)
        position = {n: i for i, n in enumerate(gm.graph.nodes)}
        rw.count("tables")
    rw.remove_unused()
    return rw.result()


def _positional_nodes(gm, rw: Rewriter, shape_env, opts: PositionTableOptions) -> dict:
    """Node → the one dynamic symbol its value depends on (None for a constant), for every node whose value is a
    function of constants and one bounded dimension, with that dimension appearing only as a whole axis."""
    symbol_of: dict[torch.fx.Node, sympy.Symbol | None] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and rw.constant(node) is not None:
            symbol_of[node] = None
            continue
        if node.op != "call_function" or not is_pure(node):
            continue
        if node.target is aten.sym_size.int:
            expr = size_expr(node.meta.get("val", 0))
            if isinstance(expr, sympy.Symbol) and _bounded(expr, shape_env, opts):
                symbol_of[node] = expr
            continue
        inputs = node.all_input_nodes
        if not inputs or any(n not in symbol_of for n in inputs):
            continue
        symbols = {symbol_of[n] for n in inputs} - {None}
        if not symbols:
            symbol_of[node] = None  # a constant (left by fold-constants' size cap, or run before it)
            continue
        val = tensor_val(node)
        if len(symbols) != 1 or val is None:
            continue  # several: a table per pair of lengths is not worth it
        (sym,) = symbols
        exprs = [size_expr(s) for s in val.shape]
        if any(e.free_symbols and e != sym for e in exprs):
            continue  # e.g. 2*seq or seq+1: slicing the longest table would not give this value
        if _longest_numel(exprs, sym, shape_env) * val.element_size() > 4 * opts.max_bytes:
            continue  # too big even to evaluate
        symbol_of[node] = sym
    return symbol_of


def _bounded(sym, shape_env, opts: PositionTableOptions) -> bool:
    rng = shape_env.var_to_range.get(sym)
    return rng is not None and rng.upper.is_finite and int(rng.upper) <= opts.max_positions


def _longest_numel(exprs, sym, shape_env) -> int:
    upper = int(shape_env.var_to_range[sym].upper)
    n = 1
    for e in exprs:
        n *= int(e.subs(sym, upper))
    return n


def _cone(node, symbol_of, position) -> list[torch.fx.Node]:
    """The positional nodes ``node`` is computed from (itself last), in graph order."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(m for m in n.all_input_nodes if m in symbol_of)
    return sorted(seen, key=position.__getitem__)


def _evaluate(cone, length: int, rw: Rewriter):
    """The value of the cone's last node when its dimension is ``length``."""
    values: dict[torch.fx.Node, object] = {}
    for n in cone:
        if n.op == "get_attr":
            values[n] = rw.constant(n)
        elif n.target is aten.sym_size.int:
            values[n] = length
        else:
            args = torch.fx.node.map_arg(n.args, values.__getitem__)
            kwargs = torch.fx.node.map_arg(n.kwargs, values.__getitem__)
            with torch.no_grad():
                values[n] = n.target(*args, **kwargs)
    return values[cone[-1]]


def _first_mismatch(cone, table, dims, rw: Rewriter, lengths) -> int | None:
    for length in lengths:
        direct = _evaluate(cone, length, rw)
        sliced = table
        for d in dims:
            sliced = sliced.narrow(d, 0, length)
        same = (sliced.shape == direct.shape and
                (torch.allclose(sliced, direct, rtol=1e-6, atol=1e-7) if direct.is_floating_point()
                 else torch.equal(sliced, direct)))
        if not same:
            return length
    return None


def _length_node(cone, sym, symbol_of) -> torch.fx.Node:
    """A node of the cone (so computed before its last node) whose value is the dimension's length."""
    for n in cone:
        if n.op == "call_function" and n.target is aten.sym_size.int and symbol_of[n] == sym:
            return n
    raise AssertionError(f"%{cone[-1].name} depends on {sym} but no sym_size node of it precedes it")
