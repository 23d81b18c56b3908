"""eliminate-common-subexpressions: merges pure duplicates, never random ones."""
import torch

from fxopt.testing import check_pass, filecheck


def duplicated(x):
    a = torch.tanh(x) + 1
    b = torch.tanh(x) + 1
    return a * b


def random(x):
    return torch.nn.functional.dropout(x, 0.5, training=True) + torch.nn.functional.dropout(x, 0.5, training=True)


def test_merges_duplicates_golden():
    result = check_pass("eliminate-common-subexpressions", duplicated, torch.randn(3, 4))
    assert result.stats == {"merged": 2}
    filecheck(result.after, """
        CHECK: %tanh = aten.tanh(%x)
        CHECK-NEXT: %add = aten.add.Tensor(%tanh, 1)
        CHECK-NEXT: %mul = aten.mul.Tensor(%add, %add)
        CHECK-NOT: tanh_1
    """)


def test_random_ops_are_never_merged():
    from fxopt.ir import capture
    from fxopt.passes import eliminate_common_subexpressions

    class M(torch.nn.Module):
        def forward(self, x):
            return random(x)

    cap = capture(M(), (torch.randn(3, 4),))
    result = eliminate_common_subexpressions(cap.graph_module)
    assert not result.changed


def test_merges_on_minilm(minilm_compiled):
    assert minilm_compiled.report.pipeline.record("eliminate-common-subexpressions").stats["merged"] >= 2
