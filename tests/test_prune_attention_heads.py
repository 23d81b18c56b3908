"""prune-attention-heads (issue 14): whole heads leave q/k/v/o together (BERT-style attention) or leave each
key/value group alike with the repetition rewritten (grouped-query attention); the least important heads go first;
blocks whose per-head values leave the block are left alone; the output refit lowers the error; real models."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fxopt
from fxopt.testing import check_pass

aten = torch.ops.aten
p = fxopt.passes.prune_attention_heads
KEEP_LINEARS = ("select-gemm-backend",)


class MHA(torch.nn.Module):
    """Multi-head attention in BERT's spelling: 4 heads of 8."""

    def __init__(self, dim=32, heads=4, bias=False):
        super().__init__()
        self.d = dim // heads
        self.q, self.k, self.v = (torch.nn.Linear(dim, dim, bias=bias) for _ in range(3))
        self.o = torch.nn.Linear(dim, dim, bias=bias)

    def split(self, x, linear):
        b, s, _ = x.shape
        return linear(x).view(b, s, -1, self.d).transpose(1, 2)

    def forward(self, x):
        b, s, _ = x.shape
        a = F.scaled_dot_product_attention(self.split(x, self.q), self.split(x, self.k), self.split(x, self.v))
        return self.o(a.transpose(1, 2).reshape(b, s, -1))


class GQA(MHA):
    """Grouped-query attention in Llama's spelling: 6 query heads of 8, 2 key/value heads, groups of 3."""

    def __init__(self, dim=48, heads=6, kv_heads=2):
        super().__init__(dim, heads)
        self.k = torch.nn.Linear(dim, kv_heads * self.d, bias=False)
        self.v = torch.nn.Linear(dim, kv_heads * self.d, bias=False)
        self.group = heads // kv_heads

    def repeat(self, kv):
        b, h, s, d = kv.shape
        return kv[:, :, None].expand(b, h, self.group, s, d).reshape(b, h * self.group, s, d)

    def forward(self, x):
        b, s, _ = x.shape
        k, v = self.repeat(self.split(x, self.k)), self.repeat(self.split(x, self.v))
        a = F.scaled_dot_product_attention(self.split(x, self.q), k, v)
        return self.o(a.transpose(1, 2).reshape(b, s, -1))


def _weights(gm):
    rw = fxopt.Rewriter(gm)
    return [tuple(rw.constant(n.args[1]).shape) for n in gm.graph.find_nodes(op="call_function", target=aten.linear.default)]


def test_bert_style_heads_leave_q_k_v_and_o_together():
    torch.manual_seed(0)
    result = check_pass(p, MHA(bias=True).eval(), torch.randn(4, 16, 32), options=p.options(ratio=0.25), rtol=10.0)
    assert result.stats["blocks"] == 1 and result.stats["heads removed"] == 1
    assert result.after.count("f32[24, 32]") == 3 and "f32[32, 24]" in result.after
    assert "aten.scaled_dot_product_attention(%transpose, %transpose_1, %transpose_2) : f32[batch, 3, 16, 8]" in result.after


def test_grouped_query_attention_keeps_key_value_heads_and_shrinks_each_group():
    torch.manual_seed(0)
    result = check_pass(p, GQA().eval(), torch.randn(4, 16, 48), options=p.options(ratio=0.34), rtol=10.0)
    assert result.stats["heads removed"] == 2  # one of three in each of the two groups
    assert "f32[32, 48]" in result.after and result.after.count("f32[16, 48]") == 2 and "f32[48, 32]" in result.after
    assert result.after.count("aten.expand(") == 2 and result.after.count(", 2, 2, 16, 8]) : f32[batch, 2, 2, 16, 8]") == 2
    assert "aten.scaled_dot_product_attention(%transpose_2, %reshape, %reshape_1) : f32[batch, 4, 16, 8]" in result.after


def test_the_least_important_head_goes_first():
    """A head whose output columns are zero adds nothing: it is the one removed, and nothing changes."""
    torch.manual_seed(0)
    model = MHA().eval()
    with torch.no_grad():
        model.o.weight[:, 16:24] = 0  # head 2
    x = torch.randn(4, 16, 32)
    compiled = fxopt.compile(model, x, passes="fuse-attention,prune-attention-heads{ratio=0.25,recover=false}",
                             backend="eager")
    q_weight = fxopt.Rewriter(compiled.graph_module).constant(
        next(iter(compiled.graph_module.graph.find_nodes(op="call_function", target=aten.linear.default))).args[1])
    torch.testing.assert_close(q_weight, torch.cat([model.q.weight[:16], model.q.weight[24:]]))
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_global_scope_prunes_where_heads_matter_least():
    """Two blocks, the second with two idle heads: at a ratio of 2/8 the global choice takes both from it; the
    per-layer choice takes one from each."""
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = MHA(), MHA()
            with torch.no_grad():
                self.b.o.weight[:, :16] *= 1e-3

        def forward(self, x):
            return self.b(x + self.a(x))

    torch.manual_seed(0)
    model, x = Two().eval(), torch.randn(4, 16, 32)
    shapes = {}
    for scope in ("global", "layer"):
        compiled = fxopt.compile(model, x, passes=f"fuse-attention,prune-attention-heads{{ratio=0.25,scope={scope}}}",
                                 backend="eager", check_numerics=False)
        shapes[scope] = _weights(compiled.graph_module)
    assert shapes["global"] == [(32, 32)] * 4 + [(16, 32)] * 3 + [(32, 16)]
    assert shapes["layer"] == [(24, 32)] * 3 + [(32, 24)] + [(24, 32)] * 3 + [(32, 24)]


def test_per_head_values_used_outside_the_block_are_left_alone():
    class ReturnsKeys(MHA):
        def forward(self, x):
            b, s, _ = x.shape
            k = self.split(x, self.k)
            a = F.scaled_dot_product_attention(self.split(x, self.q), k, self.split(x, self.v))
            return self.o(a.transpose(1, 2).reshape(b, s, -1)), k

    result = check_pass(p, ReturnsKeys().eval(), torch.randn(4, 16, 32), options=p.options(ratio=0.5))
    assert not result.changed
    assert result.stats == {"left alone: the key or value is not a linear's output split into heads": 1}


def test_the_refit_lowers_the_error_on_unseen_inputs():
    torch.manual_seed(0)
    model = MHA(dim=64, heads=8).eval()
    calibration = [torch.randn(16, 32, 64) for _ in range(4)]
    unseen = torch.randn(16, 32, 64)
    with torch.no_grad():
        want = model(unseen)
    errors = {}
    for recover in (False, True):
        compiled = fxopt.compile(model, calibration[0], backend="eager", calibration=calibration,
                                 compress={"prune_heads": 0.25, "recover": recover})
        with torch.no_grad():
            errors[recover] = ((compiled(unseen) - want).norm() / want.norm()).item()
    assert errors[True] < 0.9 * errors[False]


def test_compress_runs_it_before_the_sibling_fusion():
    torch.manual_seed(0)
    compiled = fxopt.compile(MHA().eval(), torch.randn(4, 16, 32), compress={"prune_heads": 0.25}, backend="eager",
                             disable=KEEP_LINEARS)
    names = [r.name for r in compiled.report.pipeline.records]
    assert names.index("fuse-attention") < names.index("prune-attention-heads") < names.index("fuse-sibling-linears")
    assert sorted(_weights(compiled.graph_module)) == [(32, 24), (72, 32)]  # q, k, v of 3 heads fused; o


@pytest.mark.parametrize("options, message", [({"ratio": 1.0}, "in \\[0, 1\\)"), ({"scope": "model"}, "scope")])
def test_bad_options(options, message):
    with pytest.raises(Exception, match=message):
        check_pass(p, MHA().eval(), torch.randn(2, 4, 32), options=p.options(**options))


@pytest.mark.parametrize("name, removed", [("minilm", 7), ("smollm2", 27)])
def test_real_models_lose_their_least_important_heads(name, removed, request):
    """Every attention block of both real models is recognized; 10% of the heads go, chosen across layers
    (MiniLM: 7 of 72; SmolLM2: 27 of 270, three at a time, one from each key/value group of a layer)."""
    real = request.getfixturevalue(name)
    compiled = fxopt.compile(real.model, real.inputs(1, 16), compress={"prune_heads": 0.1, "recover": False},
                             backend="eager", check_numerics=False)
    record = next(r for r in compiled.report.pipeline.records if r.name == "prune-attention-heads")
    assert not any(k.startswith("left alone: ") and "cut" not in k for k in record.stats), record.stats
    assert record.stats["heads removed"] == removed
    with torch.no_grad():
        out = compiled(**real.inputs(2, 24))
    assert all(torch.isfinite(t).all() for t in out.values() if isinstance(t, torch.Tensor))
