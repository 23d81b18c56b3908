"""Compression passes (issue 14): prune-mlp-channels removes hidden channels of GELU and SwiGLU MLP blocks with
consistent shapes and a ridge refit that lowers the error; factorize-low-rank replaces linears by rank-r pairs
only where the spectrum allows it; fxopt.compile(compress=...) places them before the sibling fusion, with
calibration data; the trade-off report's Pareto front; real MiniLM at a light pruning level."""
from __future__ import annotations

import pytest
import torch

import fxopt
from fxopt.layer_recovery import ridge
from fxopt.testing import check_pass
from fxopt.tools.tradeoff import Point, pareto

aten = torch.ops.aten
#: The graphs are read after the pipeline: keep the linears aten.linear (no MKL packing by the target stage).
KEEP_LINEARS = ("select-gemm-backend",)


class GeluMLP(torch.nn.Module):
    def __init__(self, dim=16, hidden=64):
        super().__init__()
        self.up = torch.nn.Linear(dim, hidden)
        self.down = torch.nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


class SwiGLU(torch.nn.Module):
    def __init__(self, dim=32, hidden=128):
        super().__init__()
        self.gate = torch.nn.Linear(dim, hidden, bias=False)
        self.up = torch.nn.Linear(dim, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return x + self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


class LowRankLinear(torch.nn.Module):
    """A 256 → 256 linear whose weight has rank 32 (plus a little noise)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(256, 256)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(256, 32) @ torch.randn(32, 256) / 16 + 1e-4 * torch.randn(256, 256))

    def forward(self, x):
        return self.fc(x)


def _linear_weights(gm):
    rw = fxopt.Rewriter(gm)
    return [tuple(rw.constant(n.args[1]).shape)
            for n in gm.graph.find_nodes(op="call_function", target=aten.linear.default)]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_pruning_a_gelu_block_keeps_every_shape_consistent():
    torch.manual_seed(0)
    p = fxopt.passes.prune_mlp_channels
    result = check_pass(p, GeluMLP(), torch.randn(64, 16), options=p.options(ratio=0.5), rtol=10.0)
    assert result.stats["blocks"] == 1 and result.stats["channels removed"] == 32
    assert float(result.stats["after refit"]) < float(result.stats["output err"])


def test_pruning_swiglu_prunes_gate_and_up_together_and_the_fusion_still_applies():
    torch.manual_seed(0)
    model, x = SwiGLU().eval(), torch.randn(4, 16, 32)
    compiled = fxopt.compile(model, x, compress={"prune_mlp": 0.25}, backend="eager", disable=KEEP_LINEARS)
    assert sorted(_linear_weights(compiled.graph_module)) == [(32, 96), (192, 32)]  # gate+up fused, 96 kept
    assert compiled.report.pipeline.records[[r.name for r in compiled.report.pipeline.records]
                                            .index("prune-mlp-channels")].stats["blocks"] == 1


def test_the_refit_lowers_the_error_on_unseen_inputs():
    torch.manual_seed(0)
    model = GeluMLP(32, 256).eval()
    calibration = [torch.randn(256, 32) for _ in range(4)]
    unseen = torch.randn(256, 32)
    with torch.no_grad():
        want = model(unseen)
    errors = {}
    for recover in (False, True):
        compiled = fxopt.compile(model, calibration[0], backend="eager", calibration=calibration,
                                 compress={"prune_mlp": 0.5, "recover": recover})
        with torch.no_grad():
            errors[recover] = _rel(compiled(unseen), want)
    assert errors[True] < 0.8 * errors[False]


def test_a_hidden_value_used_outside_the_block_is_not_pruned():
    class Leaky(GeluMLP):
        def forward(self, x):
            h = torch.nn.functional.gelu(self.up(x))
            return self.down(h), h.sum(-1)

    compiled = fxopt.compile(Leaky().eval(), torch.randn(8, 16), compress={"prune_mlp": 0.5}, backend="eager",
                             disable=KEEP_LINEARS)
    assert sorted(_linear_weights(compiled.graph_module)) == [(16, 64), (64, 16)]


def test_ratio_zero_changes_nothing():
    p = fxopt.passes.prune_mlp_channels
    result = check_pass(p, GeluMLP(), torch.randn(8, 16), options=p.options(ratio=0.0))
    assert not result.changed


def test_low_rank_factorizes_a_low_rank_weight_and_keeps_its_outputs():
    torch.manual_seed(0)
    p = fxopt.passes.factorize_low_rank
    result = check_pass(p, LowRankLinear().eval(), torch.randn(4, 128, 256), options=p.options(measure=False), rtol=1e-3)
    assert result.stats["factorized"] == 1 and result.stats["rank"] == 32


def test_low_rank_leaves_a_full_rank_weight_alone():
    torch.manual_seed(0)
    p = fxopt.passes.factorize_low_rank
    result = check_pass(p, torch.nn.Linear(128, 128).eval(), torch.randn(64, 128), options=p.options(measure=False))
    assert not result.changed
    assert any("saves too few FLOPs" in n for n in result.diagnostics)


def test_ridge_recovers_an_exact_linear_map_and_its_intercept():
    torch.manual_seed(0)
    z = torch.randn(1000, 20)
    w, c = torch.randn(5, 20), torch.randn(5)
    fit, shift = ridge(z, z @ w.T + c, alpha=1e-8)
    torch.testing.assert_close(fit, w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(shift, c, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("compress, message", [
    ({"distill": 0.2}, "unknown compress option"),
    ({"prune_heads": -0.1}, "in \\[0, 1\\)"),
    ({"prune_mlp": 1.0}, "in \\[0, 1\\)"),
    ({"low_rank": 0.0}, "in \\(0, 1\\]"),
    ("prune", "must be a mapping"),
])
def test_bad_compress_requests_fail_before_capture(compress, message):
    class Untraceable(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("captured")

    with pytest.raises((ValueError, TypeError), match=message):
        fxopt.compile(Untraceable(), torch.randn(2, 2), compress=compress)


def test_pareto_front():
    points = [Point("a", 1.0, 1, 1.0, 1), Point("b", 2.0, 1, 0.99, 1), Point("c", 1.5, 1, 0.98, 1),
              Point("d", 2.5, 1, 0.5, 1)]
    assert [p.label for p in pareto(points, higher_is_better=True)] == ["a", "b", "d"]


def test_minilm_light_pruning_holds_its_embeddings(minilm):
    from fxopt import metrics
    from fxopt.tools.tradeoff import calibration

    compiled = fxopt.compile(minilm.model, minilm.inputs(2, 32), compress={"prune_mlp": 0.02},
                             calibration=calibration(minilm)[:64], backend="eager", check_numerics=False,
                             disable=KEEP_LINEARS)
    intermediate = [s for s in _linear_weights(compiled.graph_module) if 1500 <= max(s) < 1536]
    assert len(intermediate) == 12  # 6 layers × (up, down) at 1,520 channels
    batch = minilm.tokenizer(metrics.evaluation_sentences(32), padding=True, return_tensors="pt")
    with torch.no_grad():
        want = minilm.model(**batch).last_hidden_state
        got = compiled(**batch).last_hidden_state
    assert metrics.min_cosine(want, got, batch["attention_mask"]) > 0.98


def test_tradeoff_arguments(capsys):
    from fxopt.tools.cli import main
    for argv, message in [(["tradeoff", "gpt5"], "invalid choice"), (["tradeoff", "minilm", "--points", "x"],
                                                                     "--points names none of")]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
