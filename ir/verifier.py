"""``verify(gm)``: torch.fx's lint plus the invariants every fxopt pass must keep.

1. ``Graph.lint()`` holds (topological order, every argument defined, targets exist);
2. every placeholder, ``get_attr`` and ``call_function`` node carries ``meta["val"]``;
3. no dead node: every non-output node that is pure has a user;
4. the outputs keep the captured structure: same count, and each output's dtype and rank;
5. every call is an operator (``torch.ops.*``, or Python arithmetic on sizes): no Python function, method or
   module call, which Inductor and the cost model would not see as an op; and no constant a pass made is
   written in place (the next call would see the write);
6. with ``deep=True``: every node's ``meta["val"]`` is what fake-tensor propagation computes from its inputs'
   (a pass that changed a node's arguments and left its metadata stale is caught here).
"""
from __future__ import annotations

import operator

import torch
import torch.fx

from fxopt.errors import VerificationError
from fxopt.ir import ops
from fxopt.ir.meta import format_type, propagate, same_type, symbol_map
from fxopt.ir.printer import format_node



def find_problems(gm: torch.fx.GraphModule, *, deep: bool = False) -> list[str]:
    """Every broken invariant as one line (empty when the graph is well formed)."""
    problems: list[str] = []
    try:
        gm.graph.lint()
    except Exception as e:  # noqa: BLE001 - lint raises bare RuntimeErrors
        problems.append(f"lint: {e}")
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "call_function") and "val" not in node.meta:
            problems.append(f"no meta['val'] (shape/dtype) on: {format_node(node)}")
        if node.op in ("call_function", "get_attr") and not node.users and not node.is_impure():
            problems.append(f"dead node (no users): {format_node(node)}")
        if node.op == "call_function" and not ops.is_graph_op(node.target):
            problems.append(f"call of {getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', '')}"
                            f", which is not an operator (graphs hold torch.ops.* calls): {format_node(node)}")
        elif node.op == "get_attr" and str(node.target).startswith(ops.OWN_CONSTANT_PREFIX) and ops.is_written(node):
            problems.append(f"the constant %{node.name}, made by a pass, is written in place by the graph: every call "
                            f"would see the previous call's write")
        elif node.op in ("call_method", "call_module"):
            problems.append(f"{node.op} node, which is not an operator (graphs hold torch.ops.* calls): "
                            f"{format_node(node)}")
    expected = gm.meta.get("fxopt.outputs")
    if expected is not None:
        outputs = gm.graph.find_nodes(op="output")[0].args[0]
        if len(outputs) != len(expected):
            problems.append(f"output count changed: {len(outputs)} outputs, captured {len(expected)}")
        else:
            for i, (arg, exp) in enumerate(zip(outputs, expected)):
                val = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
                got = (str(val.dtype), val.dim()) if isinstance(val, torch.Tensor) else None
                if exp is not None and got is not None and got != tuple(exp):
                    problems.append(f"output {i} changed from {exp[0]} rank {exp[1]} to {got[0]} rank {got[1]}")
    if deep and not problems:
        problems.extend(_stale_metadata(gm))
    return problems


def _stale_metadata(gm: torch.fx.GraphModule) -> list[str]:
    problems = []
    symbols = symbol_map(gm)
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        try:
            fresh = propagate(gm, node)
        except Exception as e:  # noqa: BLE001 - an op that no longer accepts its inputs is a problem too
            problems.append(f"shape propagation fails ({type(e).__name__}: {str(e).splitlines()[0][:120]}) on: "
                            f"{format_node(node)}")
            continue
        if not same_type(fresh, node.meta.get("val")):
            problems.append(f"stale meta['val'] (propagation gives {format_type(fresh, symbols)}) on: {format_node(node)}")
    return problems


def verify(gm: torch.fx.GraphModule, *, context: str = "", deep: bool = False) -> None:
    """Raise :class:`fxopt.VerificationError` listing every broken invariant of ``gm``."""
    problems = find_problems(gm, deep=deep)
    if problems:
        where = f" {context}" if context else ""
        shown = "\n  ".join(problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise VerificationError(f"graph is not well formed{where}:\n  {shown}{more}")
