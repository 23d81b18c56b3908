"""What passes need to know about ATen ops, in one place: purity, views, conversions, data movement,
assertions and commutativity.

Passes ask questions here instead of keeping their own op sets::

    from fxopt.ir import ops

    if ops.is_pure(node) and node.target in ops.DATA_MOVEMENT: ...

Each set holds ``OpOverload`` objects (``aten.view.default``), the form every node of a captured graph has.
"""
from __future__ import annotations

import operator

import torch
import torch.fx

aten = torch.ops.aten

#: The name prefix of every constant a pass adds with :meth:`fxopt.Rewriter.add_constant` (the model's own
#: weights keep their names): how lowering and the verifier tell the constants fxopt made from the model's.
OWN_CONSTANT_PREFIX = "_fxopt_"

#: Export's runtime checks; fxopt checks inputs at call time, so an inference graph can drop them.
ASSERTIONS = frozenset({
    aten._assert_tensor_metadata.default, aten._assert_scalar.default, aten._assert_async.msg,
    aten.sym_constrain_range_for_size.default, aten.sym_constrain_range.default,
})

#: dtype/device conversions: a no-op when the result has the input's type.
CONVERSIONS = frozenset({aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten._to_copy.default})

#: Views that can change the shape (a no-op when they do not).
VIEWS = frozenset({aten.view.default, aten.reshape.default, aten.expand.default, aten.slice.Tensor,
                   aten._unsafe_view.default})

#: Ops that return their input unchanged in an inference graph.
ALIASES = frozenset({aten.alias.default, aten.detach.default})

#: Ops that only move, relabel or convert data (no arithmetic): a constant built from nothing but these and
#: an ``arange`` is not worth precomputing.
DATA_MOVEMENT = frozenset({
    aten.arange.default, aten.arange.start, aten.arange.start_step, aten.slice.Tensor, aten.unsqueeze.default,
    aten.squeeze.dim, aten.view.default, aten.reshape.default, aten.expand.default, aten.transpose.int,
    aten.permute.default, aten.to.dtype, aten.to.device, aten.to.dtype_layout, aten._to_copy.default,
    aten.clone.default, aten.sym_size.int,
})

#: Binary ops whose two tensor operands can be swapped without changing the result.
COMMUTATIVE = frozenset({
    aten.add.Tensor, aten.mul.Tensor, aten.maximum.default, aten.minimum.default, aten.eq.Tensor,
    aten.ne.Tensor, aten.logical_and.default, aten.logical_or.default, aten.logical_xor.default,
    aten.bitwise_and.Tensor, aten.bitwise_or.Tensor, aten.bitwise_xor.Tensor, operator.add, operator.mul,
})

#: The value an op leaves its other operand unchanged with: ``x + 0``, ``x * 1``, ``x - 0``, ``x / 1``.
IDENTITY_SCALAR = {aten.add.Tensor: 0, aten.sub.Tensor: 0, aten.mul.Tensor: 1, aten.div.Tensor: 1}


def is_random(target) -> bool:
    """True for ops whose result depends on a random generator (dropout, rand*, bernoulli, …)."""
    if isinstance(target, torch._ops.OpOverload):
        return torch.Tag.nondeterministic_seeded in target.tags or "dropout" in target.name()
    return False


def is_mutating(target) -> bool:
    """True for ops that write into one of their arguments (``copy_``, ``index_put_``, ``out=`` forms)."""
    return isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable


def is_pure(node: torch.fx.Node) -> bool:
    """True when running ``node`` twice on the same inputs gives the same result and changes nothing."""
    if node.op != "call_function" or node.is_impure():
        return False
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return not is_mutating(target) and not is_random(target)
    return getattr(target, "__module__", "") in ("_operator", "operator")


def is_commutative(target) -> bool:
    return target in COMMUTATIVE


def is_written(node: torch.fx.Node) -> bool:
    """True when a user of ``node`` writes into its value in place, directly or through a view of it
    (``add_(slice(node))``). Such a value cannot become a constant shared by every call: the write would
    change it for the next one. (``torch.export`` keeps in-place ops in its graphs: MPNet's position buckets
    are built with ``+=``.)"""
    stack, seen = [node], set()
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        for user in value.users:
            target = user.target
            if target is operator.getitem:
                stack.append(user)
                continue
            if not isinstance(target, torch._ops.OpOverload):
                continue
            schema = target._schema
            for i, arg in enumerate(user.args):
                if arg is not value or i >= len(schema.arguments):
                    continue
                alias = schema.arguments[i].alias_info
                if alias is not None and alias.is_write:
                    return True
                if alias is not None and any(r.alias_info is not None for r in schema.returns):
                    stack.append(user)  # a view of the value: writes into it write into the value
            for name, arg in user.kwargs.items():
                if arg is value:
                    alias = next((a.alias_info for a in schema.arguments if a.name == name), None)
                    if alias is not None and alias.is_write:
                        return True
    return False


def is_graph_op(target) -> bool:
    """A call target a captured graph may hold: an operator (``torch.ops.*``), a higher-order op, or Python's
    arithmetic on symbolic sizes (``operator.mul``, ``torch.sym_max``…). A Python function such as
    ``torch.nn.functional.silu`` is not: Inductor and the cost model see only operators."""
    if isinstance(target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
        return True
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", "")
    if module in ("_operator", "operator", "math"):
        return True
    return module.startswith("torch") and (name.startswith("sym_") or name == "_assert")


__all__ = ["ASSERTIONS", "CONVERSIONS", "VIEWS", "ALIASES", "DATA_MOVEMENT", "COMMUTATIVE", "IDENTITY_SCALAR",
           "is_random", "is_mutating", "is_pure", "is_commutative", "is_graph_op", "is_written"]
