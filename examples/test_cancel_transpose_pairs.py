import torch

from cancel_transpose_pairs import cancel_transpose_pairs
from fxopt.testing import check_pass, filecheck


def test_cancels_pairs_golden():
    result = check_pass(cancel_transpose_pairs, lambda x: torch.relu(x.transpose(1, 2).transpose(-1, 1)),
                        torch.randn(2, 3, 4))
    assert result.stats == {"cancelled": 1}
    filecheck(result.after, """
        CHECK: %relu = aten.relu(%x)
        CHECK-NOT: aten.transpose
    """)


def test_different_pairs_are_left_alone():
    result = check_pass(cancel_transpose_pairs, lambda x: x.transpose(0, 1).transpose(1, 2), torch.randn(2, 3, 4))
    assert result.stats == {} and not result.changed
