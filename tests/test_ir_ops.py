"""One home for op knowledge (fxopt.ir.ops): the passes' questions about purity, views, conversions."""
import operator

import torch

from fxopt.ir import ops
from fxopt.ir.capture import capture

aten = torch.ops.aten


def test_purity_of_ops():
    class M(torch.nn.Module):
        def forward(self, x):
            y = torch.nn.functional.dropout(x, 0.5, training=True)
            return torch.rand_like(x) + y.relu() + x.sin()

    gm = capture(M(), (torch.randn(2, 3),), dynamic=False).graph_module
    by_target = {n.target: n for n in gm.graph.nodes if n.op == "call_function"}
    assert ops.is_pure(by_target[aten.relu.default]) and ops.is_pure(by_target[aten.sin.default])
    assert not any(ops.is_pure(n) for t, n in by_target.items() if ops.is_random(t))
    assert any(ops.is_random(t) for t in by_target)


def test_op_sets():
    assert ops.is_mutating(aten.copy_.default) and not ops.is_mutating(aten.add.Tensor)
    assert ops.is_commutative(aten.mul.Tensor) and ops.is_commutative(operator.add)
    assert not ops.is_commutative(aten.sub.Tensor)
    assert aten.view.default in ops.VIEWS and aten.view.default in ops.DATA_MOVEMENT
    assert aten._to_copy.default in ops.CONVERSIONS and aten.detach.default in ops.ALIASES
    assert ops.IDENTITY_SCALAR[aten.mul.Tensor] == 1


def test_passes_use_the_shared_op_knowledge():
    import sys

    import fxopt.passes  # noqa: F401 - the modules, not the pass objects of the same names
    cse, fold, tables = (sys.modules[f"fxopt.passes.{m}"] for m in
                         ("eliminate_common_subexpressions", "fold_constants", "fold_position_tables"))
    assert cse.is_pure is ops.is_pure and fold.is_pure is ops.is_pure and tables.DATA_MOVEMENT is ops.DATA_MOVEMENT
