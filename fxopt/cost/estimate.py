"""``estimate(gm)``: FLOPs and bytes of every node, and their totals, as sympy formulas.

Bytes: a view moves nothing; every other op reads its tensor inputs and writes its outputs (the
eager model, one kernel per op). ``fused=True`` models Inductor instead: pointwise/normalization ops
between GEMMs fuse, so a value produced and consumed only by such ops never touches memory.

Eager (``fused=False``) also marks what :mod:`fxopt.cost.kernel_times` should time at its shape rather than
bound by the roofline: each pointwise, normalization and reduction op (timed alone, ATen's kernels ran MiniLM's
GELUs, LayerNorms and adds at 4.3 ms where the memory roofline gave 2.8, Intel Xeon host) and each fp32 linear
with a bias (ATen's ``addmm`` copies the bias into the output before the product).

In either graph, fxopt's own native ops (the ``fxopt::`` namespace, :mod:`fxopt.native_kernels`) are timed at their
shape too: their roofline put MiniLM's six ``gelu_quantize_rows`` at 0.72 ms and its 19 ``quantize_rows`` at
0.54 ms, where the model ran them in 4.0 and 1.4 ms and the same ops alone took the same in that spell (an erf, a
row maximum and a rounding per element are not FMA-rate work; Intel Xeon host). The bench's predicted speed of
``"int8"`` was 26% high; timed, +2%.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import networkx as nx
import sympy
import torch
import torch.fx
from tabulate import tabulate

from fxopt.cost.rules import NORMS, POINTWISE, REDUCTIONS, OpCost, TensorSpec, op_name, rule
from fxopt.ir.meta import dim_symbol, size_expr, symbol_map

ZERO = sympy.Integer(0)


@dataclass
class NodeCost:
    name: str
    op: str
    matmul_flops: sympy.Expr
    other_flops: sympy.Expr
    bytes_read: sympy.Expr
    bytes_written: sympy.Expr
    dtype: str
    is_view: bool = False
    timed: tuple | None = None  # the kernel and shape fxopt.cost.kernel_times times (OpCost.timed)

    @property
    def flops(self) -> sympy.Expr:
        return self.matmul_flops + self.other_flops

    @property
    def bytes(self) -> sympy.Expr:
        return self.bytes_read + self.bytes_written


@dataclass
class CostReport:
    """Costs of one graph. Totals are sympy expressions over the named dimensions (``batch``, ``seq``)."""

    nodes: list[NodeCost]
    unknown_ops: dict[str, int] = field(default_factory=dict)
    graph: nx.DiGraph | None = None

    # Totals are built with one ``sympy.Add`` over all terms: ``sum()`` re-flattens the growing sum at every term,
    # quadratic in the node count (SmolLM2's ~1,400 nodes: seconds per total, after every pass of a compile).
    @functools.cached_property
    def matmul_flops(self) -> sympy.Expr:
        return _total(n.matmul_flops for n in self.nodes)

    @functools.cached_property
    def flops(self) -> sympy.Expr:
        return _total(t for n in self.nodes for t in (n.matmul_flops, n.other_flops))

    @functools.cached_property
    def bytes(self) -> sympy.Expr:
        return _total(t for n in self.nodes for t in (n.bytes_read, n.bytes_written))

    @property
    def symbols(self) -> list[sympy.Symbol]:
        return sorted(self.flops.free_symbols | self.bytes.free_symbols, key=str)

    def _sizes(self, dims: dict[str, int], call: str) -> dict:
        subs = {dim_symbol(k): v for k, v in dims.items()}
        missing = [str(s) for s in self.symbols if s not in subs]
        if missing:
            example = ", ".join(f"{m}=..." for m in missing)
            raise ValueError(f"give a size for {', '.join(missing)}: the formulas depend on them ({call}({example}))")
        return subs

    def at(self, **dims: int) -> dict[str, float]:
        """Evaluate the totals at concrete sizes, e.g. ``at(batch=8, seq=128)``."""
        subs = self._sizes(dims, "at")
        return {"flops": float(self.flops.subs(subs)), "matmul_flops": float(self.matmul_flops.subs(subs)),
                "bytes": float(self.bytes.subs(subs))}

    def by_op(self, **dims: int) -> list[tuple[str, int, float, float]]:
        """(op, count, GFLOP, MB) per op type at the given sizes (every dynamic dim needs one), largest FLOPs
        first."""
        subs = self._sizes(dims, "by_op")
        rows: dict[str, list] = {}
        for n in self.nodes:
            row = rows.setdefault(n.op, [0, 0.0, 0.0])
            row[0] += 1
            row[1] += float(n.flops.subs(subs)) / 1e9
            row[2] += float(n.bytes.subs(subs)) / 1e6
        return sorted(((k, *v) for k, v in rows.items()), key=lambda r: (-r[2], -r[3]))

    def table(self, **dims: int) -> str:
        return tabulate(self.by_op(**dims), headers=["op", "nodes", "GFLOP", "MB moved"], floatfmt=".3f")

    def critical_path(self, weights: dict[str, float]) -> list[str]:
        """The longest chain of dependent nodes when each node takes ``weights[name]`` seconds."""
        g = self.graph.copy()
        for u, v in g.edges:
            g.edges[u, v]["w"] = weights.get(v, 0.0)
        return nx.dag_longest_path(g, weight="w")


def _total(terms) -> sympy.Expr:
    return sympy.expand(sympy.Add(*terms))


def _tensor_vals(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def _bytes(val: torch.Tensor, symbols) -> sympy.Expr:
    n = sympy.Integer(1)
    for s in val.shape:
        n *= size_expr(s, symbols)
    return n * val.element_size()


FUSIBLE = {"add", "sub", "mul", "div", "neg", "rsqrt", "pow", "exp", "tanh", "sigmoid", "relu", "gelu", "silu",
           "where", "masked_fill", "layer_norm", "rms_norm", "_softmax", "softmax", "mean", "sum", "to",
           "_to_copy", "clamp", "erf", "sqrt", "reciprocal", "maximum", "minimum", "abs"}


def estimate(gm: torch.fx.GraphModule, *, fused: bool = False) -> CostReport:
    """Cost of every ``call_function`` node of ``gm`` (see the module docstring)."""
    symbols = symbol_map(gm)
    nodes: list[NodeCost] = []
    unknown: dict[str, int] = {}
    graph = nx.DiGraph()
    view_of: dict[torch.fx.Node, bool] = {}
    for node in gm.graph.nodes:
        graph.add_node(node.name)
        for inp in node.all_input_nodes:
            graph.add_edge(inp.name, node.name)
        if node.op != "call_function":
            continue
        outs = _tensor_vals(node.meta.get("val"))
        ins = [a for a in node.args if isinstance(a, torch.fx.Node)]
        for a in node.args:
            if isinstance(a, (list, tuple)):
                ins.extend(x for x in a if isinstance(x, torch.fx.Node))
        in_vals = [v for a in ins for v in _tensor_vals(a.meta.get("val"))]
        in_shapes = [tuple(size_expr(s, symbols) for s in v.shape) for v in in_vals]
        out_shapes = [tuple(size_expr(s, symbols) for s in v.shape) for v in outs]
        cost: OpCost | None = rule(node.target, in_shapes, out_shapes, node.args)
        name = op_name(node.target)
        if cost is None:
            unknown[name] = unknown.get(name, 0) + 1
            cost = OpCost()
        view_of[node] = cost.is_view
        if cost.is_view or not outs:
            read = written = ZERO
        else:
            read = sum((_bytes(v, symbols) for i, a in enumerate(ins) for v in _tensor_vals(a.meta.get("val"))
                        if i not in cost.unread_inputs and not (fused and _fused_input(a, name))), ZERO)
            written = ZERO if fused and _fused_output(node, name) else sum((_bytes(v, symbols) for v in outs), ZERO)
        # a GEMM runs at the rate of its operands' type (uint8 × int8 → int32/fp32 is an int8 GEMM)
        typed = in_vals[0] if in_vals and cost.matmul != 0 else (outs[0] if outs else None)
        dtype = str(typed.dtype).replace("torch.", "") if typed is not None else ""
        if _is_native(node):
            timed = _op_timed(node, symbols)
        else:
            timed = cost.timed if fused or cost.is_view else _eager_timed(node, name, cost.timed, symbols)
        nodes.append(NodeCost(node.name, name, cost.matmul, cost.elementwise, read, written, dtype, cost.is_view,
                              timed))
    return CostReport(nodes, unknown, graph)


EAGER_TIMED_OPS = frozenset(POINTWISE) | frozenset(NORMS) | frozenset(REDUCTIONS)


class _Untimable(Exception):
    pass


def _eager_timed(node: torch.fx.Node, name: str, timed: tuple | None, symbols) -> tuple | None:
    """What an eager run of ``node`` should be timed as (see the module docstring), else ``timed`` as it was."""
    if timed is not None:
        biased_fp32 = (timed[0] == "linear" and name == "linear" and len(node.args) > 2 and node.args[2] is not None
                       and node.args[0].meta["val"].dtype == torch.float32)
        return ("linear+bias", *timed[1:]) if biased_fp32 else timed
    if name not in EAGER_TIMED_OPS or not isinstance(node.target, torch._ops.OpOverload):
        return None
    return _op_timed(node, symbols)


def _is_native(node: torch.fx.Node) -> bool:
    """An op of fxopt's own kernels (:mod:`fxopt.native_kernels`)."""
    return isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "fxopt"


def _op_timed(node: torch.fx.Node, symbols) -> tuple | None:
    """``("op", target, args, kwargs)``: ``node``'s op on random tensors of its arguments' shapes
    (:func:`fxopt.cost.kernel_times.op_call`); None where a size is computed at run time."""
    def spec(a):
        if isinstance(a, torch.fx.Node):
            val = a.meta.get("val")
            if not isinstance(val, torch.Tensor):
                raise _Untimable  # a size computed at run time
            return TensorSpec(tuple(size_expr(s, symbols) for s in val.shape), val.dtype)
        if isinstance(a, (list, tuple)):
            return tuple(spec(x) for x in a)
        return a

    try:
        return ("op", node.target, spec(node.args), tuple(sorted((k, spec(v)) for k, v in node.kwargs.items())))
    except _Untimable:
        return None


def _fused_input(producer: torch.fx.Node, consumer_op: str) -> bool:
    """Inside a fused pointwise region, a value made by a fusible op is read from registers."""
    return consumer_op in FUSIBLE and producer.op == "call_function" and op_name(producer.target) in FUSIBLE


def _fused_output(node: torch.fx.Node, name: str) -> bool:
    return name in FUSIBLE and all(u.op == "call_function" and op_name(u.target) in FUSIBLE for u in node.users)
