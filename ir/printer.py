"""The canonical text form of a graph: one deterministic line per node.

Golden tests, error messages, the dump tool and the pass manager's print-after instrument all use it::

    %input_ids = input : i64[batch, seq]
    %embeddings.word_embeddings.weight = const : f32[30522, 384]
    %embedding = aten.embedding(%embeddings.word_embeddings.weight, %input_ids) : f32[batch, seq, 384]
    %linear = aten.linear(%layer_norm, %q.weight, %q.bias) : f32[batch, seq, 384]
    return (%last_hidden_state, %pooler_output)

Placeholders print as ``input``, ``get_attr`` nodes as ``const`` (named by their attribute path),
ATen overloads drop ``.default``. Shapes use the dimension names given at capture.
"""
from __future__ import annotations

import torch
import torch.fx

from fxopt.ir.meta import format_type, symbol_map


def target_name(node: torch.fx.Node) -> str:
    """``torch.ops.aten.linear.default`` → ``aten.linear``; ``operator.getitem`` → ``getitem``."""
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        name = target.name().replace("::", ".")
        return name[: -len(".default")] if name.endswith(".default") else name
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order.{target.name()}"
    if callable(target):
        module = getattr(target, "__module__", "") or ""
        qual = getattr(target, "__qualname__", getattr(target, "__name__", repr(target)))
        return qual if module in ("_operator", "operator", "builtins") else f"{module}.{qual}"
    return str(target)


def value_name(node: torch.fx.Node) -> str:
    return f"%{node.target}" if node.op == "get_attr" else f"%{node.name}"


def format_arg(arg) -> str:
    if isinstance(arg, torch.fx.Node):
        return value_name(arg)
    if isinstance(arg, (list, tuple)):
        inner = ", ".join(format_arg(a) for a in arg)
        return f"[{inner}]" if isinstance(arg, list) else f"({inner}{',' if len(arg) == 1 else ''})"
    if isinstance(arg, dict):
        return "{" + ", ".join(f"{k}: {format_arg(v)}" for k, v in arg.items()) + "}"
    if isinstance(arg, torch.dtype):
        return str(arg).replace("torch.", "")
    if isinstance(arg, float):
        return repr(arg)
    if isinstance(arg, torch.device):
        return f"'{arg}'"
    return repr(arg)


def format_node(node: torch.fx.Node, symbols: dict | None = None) -> str:
    """One node as one line (see the module docstring)."""
    type_str = format_type(node.meta.get("val"), symbols)
    if node.op == "placeholder":
        return f"%{node.name} = input : {type_str}"
    if node.op == "get_attr":
        return f"{value_name(node)} = const : {type_str}"
    if node.op == "output":
        return f"return {format_arg(tuple(node.args[0]) if isinstance(node.args[0], (list, tuple)) else node.args[0])}"
    args = [format_arg(a) for a in node.args]
    args += [f"{k}={format_arg(v)}" for k, v in node.kwargs.items()]
    callee = target_name(node) if node.op == "call_function" else f"{node.op}[{node.target}]"
    return f"%{node.name} = {callee}({', '.join(args)}) : {type_str}"


def format_graph(gm: torch.fx.GraphModule, *, constants: bool = True) -> str:
    """The whole graph, one line per node; ``constants=False`` leaves out the ``const`` lines."""
    symbols = symbol_map(gm)
    lines = [
        format_node(node, symbols)
        for node in gm.graph.nodes
        if constants or node.op != "get_attr"
    ]
    return "\n".join(lines) + "\n"
