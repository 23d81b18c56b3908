"""fold-constants: compute at compile time every pure subgraph whose inputs are all constants.

Weights, buffers and literals are constants; placeholders and shape symbols are not. A folded value
replaces the frontier node with a new constant. The size cap keeps folding from growing memory: a value
larger than ``max_bytes``, or larger than the constants it is computed from (a broadcast, say) when over
``small_bytes``, stays in the graph.

Before::

    %weight = const : f32[16, 8]
    %scale = const : f32[]
    %t = aten.t(%weight) : f32[8, 16]
    %mul = aten.mul.Tensor(%t, %scale) : f32[8, 16]
    %add = aten.add.Tensor(%mul, 1.0) : f32[8, 16]
    %matmul = aten.matmul(%x, %add) : f32[batch, 16]

After::

    %_fxopt_add = const : f32[8, 16]
    %matmul = aten.matmul(%x, %_fxopt_add) : f32[batch, 16]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.ir.ops import is_pure, is_written
from fxopt.rewriter import Rewriter


@dataclass
class FoldOptions:
    max_bytes: int = 256 * 2**20
    small_bytes: int = 2**20


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


@graph_pass("fold-constants", options=FoldOptions, after=("eliminate-dead-nodes",))
def fold_constants(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Precompute pure subgraphs of weights, buffers and literals, within a size cap."""
    opts: FoldOptions = ctx.options
    rw = Rewriter(gm)
    values: dict[torch.fx.Node, object] = {}
    source_bytes: dict[torch.fx.Node, int] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = rw.constant(node)
            if value is not None:
                values[node] = value
                source_bytes[node] = _nbytes(value)
            continue
        if not is_pure(node) or node.target is torch.ops.aten.sym_size.int:
            continue
        inputs = node.all_input_nodes
        if not inputs or any(n not in values for n in inputs):
            continue
        args = torch.fx.node.map_arg(node.args, lambda n: values[n])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: values[n])
        with torch.no_grad():
            values[node] = node.target(*args, **kwargs)
        source_bytes[node] = sum(source_bytes[n] for n in inputs)
    for node, value in values.items():
        if node.op == "get_attr" or not isinstance(value, torch.Tensor):
            continue
        if all(user in values for user in node.users):
            continue  # an inner node: its consumers are folded too
        if is_written(node):
            ctx.note(f"not folded: %{node.name} is written in place by a user, so it cannot be a shared constant")
            rw.count("written in place")
            continue
        size = _nbytes(value)
        if size > opts.max_bytes or (size > opts.small_bytes and size > source_bytes[node]):
            ctx.note(f"not folded (size cap): %{node.name} would take {size / 2**20:.1f} MiB")
            rw.count("over size cap")
            continue
        rw.replace(node, rw.add_constant(node.name, value, before=node))
        rw.count("folded")
    rw.remove_unused()
    return rw.result()
