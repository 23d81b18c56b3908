"""fuse-layer-norm: golden text and stats for both spellings, near-match diagnostics; numerics and stats on
config-built DeBERTa and Cohere are in test_hf_configs (the bundled models use nn.LayerNorm already)."""
import torch

from fxopt.testing import check_pass, filecheck


class SqrtLayerNorm(torch.nn.Module):
    """DeBERTa's spelling (its `x - mean` appears twice in the model; CSE makes it one node)."""

    def __init__(self, size=16, eps=1e-7, weight_size=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(weight_size or size) + 0.5)
        self.bias = torch.nn.Parameter(torch.randn(size))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        centered = x - mean
        variance = centered.pow(2).mean(-1, keepdim=True)
        return self.weight * (centered / torch.sqrt(variance + self.eps)) + self.bias


class RsqrtLayerNorm(torch.nn.Module):
    """Cohere's spelling: rsqrt, a weight, no bias."""

    def __init__(self, size=16):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(size) + 0.5)

    def forward(self, x):
        x = x.to(torch.float32)
        mean = x.mean(-1, keepdim=True)
        variance = (x - mean).pow(2).mean(-1, keepdim=True)
        return self.weight.to(torch.float32) * ((x - mean) * torch.rsqrt(variance + 1e-5))


def test_sqrt_spelling_golden():
    result = check_pass("fuse-layer-norm", torch.nn.Sequential(SqrtLayerNorm(), SqrtLayerNorm(eps=1e-5)),
                        torch.randn(2, 7, 16))
    assert result.stats == {"sqrt, with bias": 2}
    filecheck(result.after, """
        CHECK: %input_1 = input : f32[batch, 7, 16]
        CHECK-NEXT: %layer_norm_default = aten.layer_norm(%input_1, [16], %0.weight, %0.bias, 1e-07) : f32[batch, 7, 16]
        CHECK-NEXT: aten.layer_norm(%layer_norm_default, [16], %1.weight, %1.bias, 1e-05) : f32[batch, 7, 16]
        CHECK-NEXT: return
    """)
    assert "sqrt" not in result.after


def test_rsqrt_spelling_after_cse_golden():
    from fxopt.registry import get_pass

    def cse_then_fuse(gm, ctx):  # the pipeline runs CSE first, merging the two `x - mean`
        get_pass("eliminate-common-subexpressions")(gm)
        return get_pass("fuse-layer-norm").fn(gm, ctx)

    from fxopt.graph_pass import GraphPass
    result = check_pass(GraphPass("cse+fuse-layer-norm", cse_then_fuse), RsqrtLayerNorm(), torch.randn(2, 7, 16))
    assert result.stats == {"rsqrt, no bias": 1}
    filecheck(result.after, """
        CHECK: aten.layer_norm(%x, [16], %weight, None, 1e-05) : f32[batch, 7, 16]
        CHECK-NOT: aten.rsqrt
    """)


def test_a_weight_not_over_the_last_dim_is_a_reported_near_match():
    result = check_pass("fuse-layer-norm", SqrtLayerNorm(weight_size=1), torch.randn(2, 7, 16))
    assert result.stats == {"sqrt, with bias rejected": 1} and not result.changed
    assert any("the weight is not a vector over the last dimension" in d for d in result.diagnostics), \
        result.diagnostics
