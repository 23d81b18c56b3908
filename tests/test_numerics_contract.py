"""The numerics contract per pass: exact passes at the pipeline's tolerance, lossy passes at their own or the
accuracy budget's, the reference taken again after a lossy pass, and no failure or revert reason dropped."""
import pytest
import torch

import fxopt
from fxopt import PassManager, graph_pass, node_rewrite
from fxopt.ir import capture, format_graph, verify

aten = torch.ops.aten


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, x):
        return torch.relu(self.fc(x)) + x


def _captured():
    torch.manual_seed(0)
    return capture(Block().eval(), (torch.randn(4, 16),))


def _round_weights(decimals: int, tolerance):
    """A lossy pass: rounds the linear's weight (changes outputs by roughly 10**-decimals)."""

    @graph_pass(f"round-weights-{decimals}", tolerance=tolerance)
    def round_weights(gm, ctx):
        """Rounds every linear weight (a stand-in for quantization)."""
        rw = fxopt.Rewriter(gm)
        for node in gm.graph.find_nodes(op="call_function", target=aten.linear.default):
            w = rw.constant(node.args[1])
            rounded = rw.add_constant("rounded", torch.round(w, decimals=decimals), before=node)
            rw.update(node, args=(node.args[0], rounded, *node.args[2:]))
        rw.remove_unused()
        return rw.result()

    return round_weights


@node_rewrite("nudge")
def nudge(node, rw):
    """An 'exact' pass that is not: adds 1e-3 after the relu."""
    if node.target is aten.relu.default:
        return rw.call(aten.add.Tensor, (rw.call(aten.relu.default, node.args, before=node), 1e-3), before=node)
    return None


@node_rewrite("negate-relu")
def negate_relu(node, rw):
    """A harmless exact rewrite: relu(x) → neg(neg(relu(x)))."""
    if node.target is aten.relu.default and node.meta.get("fxopt.created_by") != "negate-relu":
        inner = rw.call(aten.relu.default, node.args, before=node)
        inner.meta["fxopt.created_by"] = "negate-relu"
        return rw.call(aten.neg.default, (rw.call(aten.neg.default, (inner,), before=node),), before=node)
    return None


def test_a_lossy_pass_within_its_own_tolerance_is_accepted_and_becomes_the_reference():
    cap = _captured()
    report = PassManager([_round_weights(1, 0.2), negate_relu], [fxopt.NumericCheck(rtol=1e-6)]).run(
        cap.graph_module, cap.example_inputs)
    lossy, exact = report.records
    assert lossy.changed and 1e-3 < lossy.extra["max_rel_error"] <= 0.2
    # the exact pass after it is compared with the lossy pass's outputs, at the tight tolerance
    assert exact.changed and exact.extra["max_rel_error"] <= 1e-6
    assert exact.extra["rel_error_vs_captured"] > 1e-3


def test_a_lossy_pass_beyond_its_tolerance_is_named():
    cap = _captured()
    with pytest.raises(fxopt.NumericsError, match=r"round-weights-0' changed output 0 by .* relative to the graph before it \(its own tolerance 0.001\)"):
        PassManager([_round_weights(0, 1e-3)], [fxopt.NumericCheck()]).run(cap.graph_module, cap.example_inputs)


def test_an_exact_pass_that_moves_the_outputs_fails_even_after_a_lossy_one():
    cap = _captured()
    with pytest.raises(fxopt.NumericsError, match="'nudge' changed output 0"):
        PassManager([_round_weights(1, "budget"), nudge], [fxopt.NumericCheck()]).run(
            cap.graph_module, cap.example_inputs)


def test_a_budget_pass_only_has_to_stay_finite():
    cap = _captured()
    report = PassManager([_round_weights(0, "budget")], [fxopt.NumericCheck()]).run(cap.graph_module,
                                                                                   cap.example_inputs)
    assert report.records[0].changed and report.records[0].extra["max_rel_error"] > 1e-3

    @graph_pass("poison", tolerance="budget")
    def poison(gm, ctx):
        """Multiplies the output by inf."""
        rw = fxopt.Rewriter(gm)
        out = gm.graph.find_nodes(op="output")[0]
        bad = rw.call(aten.mul.Tensor, (out.args[0][0], float("inf")), before=out)
        out.args = ((bad,),)
        return rw.result()

    cap = _captured()
    with pytest.raises(fxopt.NumericsError, match="'poison' made output 0 non-finite"):
        PassManager([poison], [fxopt.NumericCheck()]).run(cap.graph_module, cap.example_inputs)


def test_a_pass_that_leaves_a_graph_that_cannot_run_is_named_and_can_be_reverted():
    @graph_pass("break-shapes")
    def break_shapes(gm, ctx):
        """Makes the linear read a weight of the wrong width (metadata kept, so only running finds it)."""
        for node in gm.graph.find_nodes(op="call_function", target=aten.linear.default):
            gm.register_buffer("_fxopt_bad", torch.zeros(16, 3))
            with gm.graph.inserting_before(node):
                bad = gm.graph.get_attr("_fxopt_bad")
            bad.meta["val"] = node.args[1].meta["val"]
            node.args = (node.args[0], bad, *node.args[2:])
        gm.graph.eliminate_dead_code()
        gm.recompile()

    cap = _captured()
    with pytest.raises(fxopt.NumericsError, match="graph no longer runs after pass 'break-shapes'"):
        PassManager([break_shapes], [fxopt.NumericCheck()]).run(cap.graph_module, cap.example_inputs)
    cap = _captured()
    before = format_graph(cap.graph_module)
    report = PassManager([break_shapes], [fxopt.NumericCheck(on_failure="skip")]).run(cap.graph_module,
                                                                                      cap.example_inputs)
    assert "no longer runs" in report.records[0].reverted and format_graph(cap.graph_module) == before


def test_a_revert_reason_is_never_dropped():
    class Veto(fxopt.Instrument):  # asks to revert, but did not ask for a snapshot
        def after_pass(self, p, gm, ctx, record):
            return "vetoed" if record.changed else None

    cap = _captured()
    with pytest.raises(fxopt.PassError, match="Veto asked to revert pass 'negate-relu' .*vetoed.*wants_snapshot"):
        PassManager([negate_relu], [Veto()]).run(cap.graph_module, cap.example_inputs)

    seen = []

    class Late(fxopt.Instrument):  # instruments after the reverting one still see the (reverted) record
        def after_pass(self, p, gm, ctx, record):
            seen.append(record.reverted)

    class SnapshotVeto(Veto):
        wants_snapshot = True

    cap = _captured()
    report = PassManager([negate_relu], [SnapshotVeto(), Late()]).run(cap.graph_module, cap.example_inputs)
    assert report.records[0].reverted == "vetoed" and seen == ["vetoed"]


def test_an_instrument_that_breaks_names_the_pass():
    class Broken(fxopt.Instrument):
        def after_pass(self, p, gm, ctx, record):
            raise IndexError("index 7 is out of bounds")

    cap = _captured()
    with pytest.raises(fxopt.PassError, match="after pass 'negate-relu', Broken failed: IndexError"):
        PassManager([negate_relu], [Broken()]).run(cap.graph_module, cap.example_inputs)


def test_deep_verify_catches_stale_metadata():
    @graph_pass("widen-silently")
    def widen_silently(gm, ctx):
        """Swaps the linear's weight for a wider one by editing args directly: the users' metadata goes stale."""
        for node in gm.graph.find_nodes(op="call_function", target=aten.linear.default):
            rw = fxopt.Rewriter(gm)
            wide = rw.add_constant("wide", torch.zeros(32, 16), before=node)
            node.args = (node.args[0], wide)  # not through rw.update: meta['val'] still says 16 wide
            gm.graph.eliminate_dead_code()
            gm.recompile()

    cap = _captured()
    PassManager([widen_silently], [fxopt.Verify(deep=False)]).run(cap.graph_module)  # shallow: cannot see it
    with pytest.raises(fxopt.VerificationError, match=r"stale meta\['val'\] .*f32\[batch, 32\]"):
        verify(cap.graph_module, deep=True)
    cap = _captured()
    with pytest.raises(fxopt.VerificationError, match=r"after the pipeline \(widen-silently\)"):
        PassManager([widen_silently], [fxopt.Verify()]).run(cap.graph_module)  # the default: deep at the end
    cap = _captured()
    with pytest.raises(fxopt.VerificationError, match="after pass 'widen-silently'"):
        PassManager([widen_silently], [fxopt.Verify(deep=True)]).run(cap.graph_module)


def test_rewriter_update_refreshes_the_node_and_deep_verify_sees_its_users():
    cap = _captured()
    gm = cap.graph_module
    rw = fxopt.Rewriter(gm)
    linear = gm.graph.find_nodes(op="call_function", target=aten.linear.default)[0]
    wide = rw.add_constant("wide", torch.zeros(32, 16), before=linear)
    rw.update(linear, args=(linear.args[0], wide))
    rw.remove_unused()
    assert list(linear.meta["val"].shape)[-1] == 32
    with pytest.raises(fxopt.VerificationError, match="relu"):  # its user still says 16 (and the add breaks)
        verify(gm, deep=True)


def test_pass_contract_is_validated():
    with pytest.raises(ValueError, match="tolerance must be"):
        graph_pass("bad", tolerance="loose")(lambda gm, ctx: None)
    with pytest.raises(ValueError, match="stage must be"):
        graph_pass("bad", stage="gpu")(lambda gm, ctx: None)
    assert fxopt.passes.select_gemm_backend.stage == "target"
    assert fxopt.passes.quantize_weights_int8.tolerance == "budget"
    assert fxopt.passes.prune_mlp_channels.tolerance == fxopt.passes.factorize_low_rank.tolerance == "budget"
    assert fxopt.passes.prune_attention_heads.tolerance == "budget"
    assert all(p.stage == "portable" and not p.lossy for p in fxopt.passes.BUILTIN_PASSES
               if p.name not in ("select-gemm-backend", "quantize-weights-int8", "quantize-weights-int4",
                                 "quantize-dynamic-int8", "quantize-static-int8", "cast-linears-bf16", "cast-attention-bf16",
                                 "fuse-gelu-quantize-rows",
                                 "pack-linears-bf16", "native-attention",
                                 "prune-mlp-channels", "prune-attention-heads",
                                 "factorize-low-rank"))
