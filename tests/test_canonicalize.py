"""canonicalize: one spelling for transpose and softmax dims."""
import torch

from fxopt.testing import check_pass, filecheck


def spelled_differently(x):
    return torch.softmax(x.transpose(-1, -2), dim=-1) + x.transpose(2, 1).transpose(1, 2).transpose(2, 1)


def test_golden():
    result = check_pass("canonicalize", spelled_differently, torch.randn(2, 3, 4))
    assert result.stats == {"transposes": 3, "softmax dims": 1}
    filecheck(result.after, """
        CHECK: %transpose = aten.transpose.int(%x, 1, 2)
        CHECK-NEXT: %softmax = aten.softmax.int(%transpose, 2) : f32[batch, 4, 3]
        CHECK-NOT: -1
    """)


def test_already_canonical_is_unchanged():
    result = check_pass("canonicalize", lambda x: torch.softmax(x.transpose(1, 2), dim=2), torch.randn(2, 3, 4))
    assert not result.changed and result.stats == {}
