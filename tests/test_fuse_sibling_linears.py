"""fuse-sibling-linears: q/k/v and gate/up fusion, golden text, stats on the real models."""
import torch

from fxopt.testing import check_pass, filecheck


class QKV(torch.nn.Module):
    def __init__(self, bias=True, kv=4):
        super().__init__()
        self.q = torch.nn.Linear(8, 8, bias=bias)
        self.k = torch.nn.Linear(8, kv, bias=bias)
        self.v = torch.nn.Linear(8, kv, bias=True)

    def forward(self, x):
        return self.q(x) + self.k(x).repeat(1, 8 // self.k.out_features) * self.v(x).repeat(1, 8 // self.k.out_features)


def test_grouped_query_shapes_fuse_golden():
    result = check_pass("fuse-sibling-linears", QKV(), torch.randn(3, 8))
    assert result.stats == {"groups fused": 1, "linears fused": 3}
    filecheck(result.after, """
        CHECK: %_fxopt_linear_fused_weight = const : f32[16, 8]
        CHECK: %_fxopt_linear_fused_bias = const : f32[16]
        CHECK: aten.linear(%x, %_fxopt_linear_fused_weight, %_fxopt_linear_fused_bias) : f32[batch, 16]
        CHECK-NEXT: aten.split_with_sizes(%linear_default, [8, 4, 4], -1)
        CHECK-NOT: %linear_1 =
    """)


def test_mixed_bias_is_reported_not_fused():
    result = check_pass("fuse-sibling-linears", QKV(bias=False), torch.randn(3, 8))
    assert result.stats == {"groups not fused": 1}
    assert any("some have a bias and some do not" in d for d in result.diagnostics)


def test_fuses_six_qkv_groups_on_minilm(minilm_compiled):
    stats = minilm_compiled.report.pipeline.record("fuse-sibling-linears").stats
    assert stats == {"groups fused": 6, "linears fused": 18}


def test_the_model_keeps_its_weights_as_views_of_the_fused_one():
    """No weight held twice: the fused weight is the only copy, and the model still computes the same."""
    torch.manual_seed(0)
    model = QKV().eval()
    x = torch.randn(3, 8)
    expected = model(x)
    check_pass("fuse-sibling-linears", model, x)
    storages = {m.weight.untyped_storage().data_ptr() for m in (model.q, model.k, model.v)}
    assert len(storages) == 1 and model.q.weight.untyped_storage().nbytes() == 16 * 8 * 4
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_share_false_leaves_the_model_untouched():
    from fxopt.passes.fuse_sibling_linears import FuseOptions
    model = QKV().eval()
    pointers = [m.weight.data_ptr() for m in (model.q, model.k, model.v)]
    result = check_pass("fuse-sibling-linears", model, torch.randn(3, 8), options=FuseOptions(share=False))
    assert result.stats == {"groups fused": 1, "linears fused": 3}
    assert [m.weight.data_ptr() for m in (model.q, model.k, model.v)] == pointers
