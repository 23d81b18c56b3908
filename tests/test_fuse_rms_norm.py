"""fuse-rms-norm: golden text, stats, near-match diagnostics; numerics on SmolLM2 are in test_smollm2."""
import torch

from fxopt.testing import check_pass, filecheck


class RMSNorm(torch.nn.Module):
    def __init__(self, eps=1e-5, power=2):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(16) + 0.5)
        self.eps, self.power = eps, power

    def forward(self, x):
        variance = x.to(torch.float32).pow(self.power).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps)).to(x.dtype)


def test_golden_and_stats():
    result = check_pass("fuse-rms-norm", torch.nn.Sequential(RMSNorm(), RMSNorm(eps=1e-6)), torch.randn(2, 7, 16))
    assert result.stats == {"fuse-rms-norm": 2}
    filecheck(result.after, """
        CHECK: %input_1 = input : f32[batch, 7, 16]
        CHECK-NEXT: %rms_norm_default = aten.rms_norm(%input_1, [16], %0.weight, 1e-05) : f32[batch, 7, 16]
        CHECK-NEXT: aten.rms_norm(%rms_norm_default, [16], %1.weight, 1e-06) : f32[batch, 7, 16]
        CHECK-NEXT: return
    """)
    assert "rsqrt" not in result.after


def test_a_different_power_is_a_reported_near_match():
    result = check_pass("fuse-rms-norm", RMSNorm(power=3), torch.randn(2, 7, 16))
    assert result.stats == {} and not result.changed
    assert any("near-match" in d and "literal 3" in d for d in result.diagnostics), result.diagnostics
