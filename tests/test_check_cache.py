"""Numeric-check verdicts remembered across compiles (fxopt.check_cache, issue 17's warm start): a second compile
of the same model makes no eager check run; other weights, other inputs, another graph or a lossy pass are
checked again; a pass that breaks the numerics after cached passes is still caught, against the captured graph."""
from __future__ import annotations

import pytest
import torch

import fxopt
from fxopt import check_cache
from fxopt.errors import NumericsError
from fxopt.graph_pass import graph_pass
from fxopt.pass_manager import NumericCheck

PIPELINE = "eliminate-dead-nodes,eliminate-common-subexpressions,fold-constants,fuse-sibling-linears"


class Siblings(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 32), torch.nn.Linear(16, 32)

    def forward(self, x):
        return torch.relu(self.a(x)) + torch.tanh(self.b(x)) * 1.0


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A private cache folder; counts the eager runs the numeric check makes."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(check_cache.ENV, raising=False)
    count = {"n": 0}
    original = NumericCheck._run

    def counted(self, gm, inputs):
        count["n"] += 1
        return original(self, gm, inputs)

    monkeypatch.setattr(NumericCheck, "_run", counted)
    return count


def _compile(model, x, passes=PIPELINE, **kwargs):
    return fxopt.compile(model, x, passes=passes, backend="eager", **kwargs)


def _errors(compiled):
    return {r.name: r.extra.get("max_rel_error") for r in compiled.report.pipeline.records if r.changed}


def test_a_second_compile_runs_no_check_and_reports_the_same_errors(runs):
    torch.manual_seed(0)
    model, x = Siblings().eval(), torch.randn(4, 16)
    first = _compile(model, x)
    cold = runs["n"]
    assert cold >= 3 and check_cache.cache_path().is_file()
    second = _compile(model, x)
    assert runs["n"] == cold  # no eager run at all
    assert _errors(second) == _errors(first) and _errors(second)
    assert all(r.extra.get("numerics") == "cached" for r in second.report.pipeline.records if r.changed)
    torch.testing.assert_close(second(x), model(x))


@pytest.mark.parametrize("change", ["weights", "inputs"])
def test_other_weights_or_inputs_are_checked_again(runs, change):
    torch.manual_seed(0)
    model, x = Siblings().eval(), torch.randn(4, 16)
    _compile(model, x)
    cold = runs["n"]
    if change == "weights":
        with torch.no_grad():
            model.a.weight[0, 0] += 1e-3
    else:
        x = x + 1e-3
    _compile(model, x)
    assert runs["n"] == 2 * cold


def test_a_pass_that_breaks_the_numerics_after_cached_passes_is_caught(runs):
    """The reference the check skipped is computed from the captured graph when a check misses."""
    @graph_pass("test-scale-outputs-check-cache")
    def scale_outputs(gm, ctx):
        out = next(iter(gm.graph.find_nodes(op="output")))
        value = out.args[0][0]
        with gm.graph.inserting_before(out):
            scaled = gm.graph.call_function(torch.ops.aten.mul.Tensor, (value, 1.01))
        scaled.meta["val"] = value.meta["val"]
        out.args = ((scaled,),)

    torch.manual_seed(0)
    model, x = Siblings().eval(), torch.randn(4, 16)
    _compile(model, x)
    before = runs["n"]
    with pytest.raises(NumericsError, match="test-scale-outputs-check-cache"):
        _compile(model, x, passes=[*PIPELINE.split(","), scale_outputs])
    assert runs["n"] - before == 3  # the captured graph twice (the reference), the broken graph once


def test_lossy_passes_are_always_checked(runs):
    torch.manual_seed(0)
    model, x = Siblings().eval(), torch.randn(4, 16)
    passes = "eliminate-dead-nodes,quantize-weights-int8"
    _compile(model, x, passes=passes)
    cold = runs["n"]
    second = _compile(model, x, passes=passes)
    assert runs["n"] > cold
    cached = {r.name for r in second.report.pipeline.records if r.extra.get("numerics") == "cached"}
    assert cached == {"eliminate-dead-nodes"}  # the exact pass before it


def test_the_cache_can_be_turned_off(runs, monkeypatch):
    monkeypatch.setenv(check_cache.ENV, "0")
    torch.manual_seed(0)
    model, x = Siblings().eval(), torch.randn(4, 16)
    _compile(model, x)
    cold = runs["n"]
    _compile(model, x)
    assert runs["n"] == 2 * cold and not check_cache.cache_path().exists()


def test_a_corrupt_cache_file_is_ignored_and_rewritten(runs):
    path = check_cache.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    torch.manual_seed(0)
    _compile(Siblings().eval(), torch.randn(4, 16))
    assert isinstance(check_cache.VerdictCache().entries, dict) and check_cache.VerdictCache().entries


def test_the_final_deep_verification_is_remembered_for_the_same_graph(runs, monkeypatch):
    """A graph printed like one whose deep verification passed is not propagated again; another graph is."""
    from fxopt.ir import verifier

    deep = {"n": 0}
    original = verifier._stale_metadata
    monkeypatch.setattr(verifier, "_stale_metadata", lambda gm: deep.__setitem__("n", deep["n"] + 1) or original(gm))
    torch.manual_seed(0)
    model, x = Siblings().eval(), torch.randn(4, 16)
    _compile(model, x)
    assert deep["n"] == 1 and check_cache.verified_graphs().path.is_file()
    _compile(model, x)
    assert deep["n"] == 1
    _compile(model, torch.randn(4, 3, 16))  # another graph: verified
    assert deep["n"] == 2
