"""fold-constants: weight arithmetic is precomputed; inputs and over-cap values are not."""
import torch

from fxopt.passes.fold_constants import FoldOptions
from fxopt.testing import check_pass, filecheck


class ScaledLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(16, 8))
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x):
        return x @ (self.weight.t() * self.scale + 1.0)


def test_folds_weight_arithmetic_golden():
    result = check_pass("fold-constants", ScaledLinear(), torch.randn(3, 8))
    assert result.stats == {"folded": 1}
    filecheck(result.after, """
        CHECK: %_fxopt_add = const : f32[8, 16]
        CHECK: aten.matmul(%x, %_fxopt_add)
        CHECK-NOT: aten.t(
    """)


def test_size_cap_keeps_large_values_in_the_graph():
    result = check_pass("fold-constants", ScaledLinear(), torch.randn(3, 8),
                        options=FoldOptions(max_bytes=64, small_bytes=16))
    assert result.stats == {"over size cap": 1} and not result.changed
    assert any("size cap" in d for d in result.diagnostics)
