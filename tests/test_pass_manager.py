"""The pass manager: ordering, enabling/disabling, instruments, and catching a wrong pass by name."""
import io
from dataclasses import dataclass

import pytest
import torch

import fxopt
from fxopt import PassManager, PassResult, graph_pass, node_rewrite
from fxopt.ir import capture, format_graph
from fxopt.pipeline import build_pipeline, parse_spec

aten = torch.ops.aten


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)
        self.drop = torch.nn.Dropout(0.1)

    def forward(self, x):
        return torch.relu(self.drop(self.fc(x))) + x


def _captured():
    torch.manual_seed(0)
    return capture(Block().eval(), (torch.randn(4, 16),))


@node_rewrite("relu-to-gelu")
def relu_to_gelu(node, rw):
    """A deliberately wrong rewrite: relu(x) → gelu(x)."""
    if node.target is aten.relu.default:
        rw.count("rewritten")
        return rw.call(aten.gelu.default, (node.args[0],), before=node)
    return None


@graph_pass("lying-pass")
def lying_pass(gm, ctx):
    """Changes the graph but claims it did not."""
    for node in gm.graph.nodes:
        if node.target is aten.relu.default:
            node.target = aten.gelu.default
    return PassResult(changed=False)


@graph_pass("needs-dce", after=("eliminate-dead-nodes",))
def needs_dce(gm, ctx):
    """Does nothing; must run after eliminate-dead-nodes."""
    return PassResult(changed=False)


@dataclass
class ScaleOptions:
    factor: float = 1.0
    enabled: bool = True


@graph_pass("scale", options=ScaleOptions)
def scale(gm, ctx):
    """Records its options in its stats."""
    return PassResult(stats={"factor": ctx.options.factor, "enabled": ctx.options.enabled})


def test_wrong_pass_is_caught_and_named():
    cap = _captured()
    manager = PassManager(build_pipeline(["eliminate-dead-nodes", relu_to_gelu]), [fxopt.NumericCheck(rtol=1e-4)])
    with pytest.raises(fxopt.NumericsError, match="pass 'relu-to-gelu' changed output 0"):
        manager.run(cap.graph_module, cap.example_inputs)


def test_wrong_pass_is_skipped_and_reverted_on_request():
    cap = _captured()
    manager = PassManager([fxopt.passes.eliminate_dead_nodes, relu_to_gelu],
                          [fxopt.NumericCheck(on_failure="skip"), fxopt.Verify()])
    report = manager.run(cap.graph_module, cap.example_inputs)
    record = report.record("relu-to-gelu")
    assert record.reverted and "relu-to-gelu" in record.reverted and not record.changed
    text = format_graph(cap.graph_module)
    assert "aten.relu" in text and "aten.gelu" not in text
    assert report.record("eliminate-dead-nodes").changed


def test_pass_that_lies_about_changed_is_an_error():
    cap = _captured()
    with pytest.raises(fxopt.PassError, match="'lying-pass' reported changed=False but modified the graph"):
        PassManager([lying_pass]).run(cap.graph_module)


def test_ordering_constraints_are_enforced():
    with pytest.raises(fxopt.PipelineSpecError, match="'needs-dce' must run after 'eliminate-dead-nodes'"):
        PassManager([needs_dce, fxopt.passes.eliminate_dead_nodes])
    PassManager([fxopt.passes.eliminate_dead_nodes, needs_dce])  # the right order is accepted


def test_disable_and_opt_level():
    level_one = [p.name for p, _ in build_pipeline(None, opt_level=1)]
    assert level_one == list(fxopt.DEFAULT_PIPELINE)  # every built-in pass is level 1
    assert build_pipeline(None, opt_level=0) == []
    without_dce = build_pipeline(None, disable=["eliminate-dead-nodes"])
    assert [p.name for p, _ in without_dce] == level_one[1:]
    with pytest.raises(fxopt.PipelineSpecError, match="not in the pipeline"):
        build_pipeline(None, disable=["fuse-everything"])


def test_pipeline_spec_with_options():
    assert parse_spec("a, b{x=1,y=two} ,c") == [("a", {}), ("b", {"x": "1", "y": "two"}), ("c", {})]
    pipeline = build_pipeline("eliminate-dead-nodes,scale{factor=2.5,enabled=false}", extra={"scale": scale})
    (dce, _), (sc, options) = pipeline
    assert dce.name == "eliminate-dead-nodes" and options == ScaleOptions(factor=2.5, enabled=False)
    with pytest.raises(fxopt.PipelineSpecError, match="unknown pass 'eliminate-dead-node'; did you mean"):
        build_pipeline("eliminate-dead-node")
    with pytest.raises(fxopt.PipelineSpecError, match="has no option colour"):
        build_pipeline("scale{colour=red}", extra={"scale": scale})
    with pytest.raises(fxopt.PipelineSpecError, match="not a boolean"):
        build_pipeline("scale{enabled=maybe}", extra={"scale": scale})
    with pytest.raises(fxopt.PipelineSpecError, match="options of pass 'scale' .* never closed: add '}'"):
        build_pipeline("scale{factor=1")


def test_instruments_see_every_pass_in_order():
    events = []

    class Recorder(fxopt.Instrument):
        def before_pass(self, p, gm, ctx):
            events.append(("before", p.name))

        def after_pass(self, p, gm, ctx, record):
            events.append(("after", p.name, record.changed))

    cap = _captured()
    out = io.StringIO()
    timing = io.StringIO()
    PassManager([fxopt.passes.eliminate_dead_nodes, scale],
                [Recorder(), fxopt.PrintAfter(["eliminate-dead-nodes"], stream=out), fxopt.Timing(timing)]
                ).run(cap.graph_module, cap.example_inputs)
    assert events == [("before", "eliminate-dead-nodes"), ("after", "eliminate-dead-nodes", True),
                      ("before", "scale"), ("after", "scale", False)]
    assert out.getvalue().startswith("// after eliminate-dead-nodes\n")
    assert "aten.dropout" not in out.getvalue() and "aten.relu" in out.getvalue()
    assert "eliminate-dead-nodes" in timing.getvalue() and "scale" in timing.getvalue()


def test_verify_catches_a_pass_that_breaks_the_ir():
    @graph_pass("drop-meta")
    def drop_meta(gm, ctx):
        """Adds a node without shape metadata."""
        out = gm.graph.find_nodes(op="output")[0]
        with gm.graph.inserting_before(out):
            neg = gm.graph.call_function(aten.neg.default, (out.args[0][0],))
        out.args = ((neg,),)

    cap = _captured()
    with pytest.raises(fxopt.VerificationError, match="(?s)after pass 'drop-meta'.*no meta"):
        PassManager([drop_meta], [fxopt.Verify()]).run(cap.graph_module)


def test_compile_names_the_broken_pass():
    with pytest.raises(fxopt.NumericsError, match="relu-to-gelu"):
        fxopt.compile(Block().eval(), torch.randn(4, 16), passes=["eliminate-dead-nodes", relu_to_gelu],
                      backend="eager")
    compiled = fxopt.compile(Block().eval(), torch.randn(4, 16), passes=["eliminate-dead-nodes", relu_to_gelu],
                             backend="eager", on_numeric_failure="skip")
    assert compiled.report.pipeline.record("relu-to-gelu").reverted


def test_third_party_passes_are_found_through_entry_points(monkeypatch):
    from importlib import metadata

    import fxopt.registry as registry

    plugin = metadata.EntryPoint(name="scale", value="test_pass_manager:scale", group=registry.ENTRY_POINT_GROUP)
    broken = metadata.EntryPoint(name="broken", value="test_pass_manager:ScaleOptions",
                                 group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [plugin])
    assert registry.get_pass("scale") is scale
    assert [p.name for p, _ in build_pipeline("eliminate-dead-nodes,scale{factor=3}")] == [
        "eliminate-dead-nodes", "scale"]
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [broken])
    with pytest.raises(fxopt.PipelineSpecError, match="'broken' .* is not a GraphPass"):
        registry.available_passes()


def test_register_pass_places_it_in_the_default_pipeline():
    fuse_silu = fxopt.pattern_pass("fuse-silu-registered", lambda x: x * torch.sigmoid(x),
                                   lambda x: torch.ops.aten.silu.default(x), example_inputs=(torch.randn(4, 8),))
    try:
        fxopt.register_pass(fuse_silu, after="fuse-attention")
        names = fxopt.default_pipeline()
        assert names.index("fuse-silu-registered") == names.index("fuse-attention") + 1
        assert [p.name for p, _ in build_pipeline()] == list(names)
        assert fxopt.registry.get_pass("fuse-silu-registered") is fuse_silu  # and by name, in specs too

        class Swish(torch.nn.Module):
            def forward(self, x):
                return torch.sigmoid(x) * x

        compiled = fxopt.compile(Swish(), torch.randn(4, 8), backend="eager")
        assert compiled.report.pipeline.record("fuse-silu-registered").stats == {"fuse-silu-registered": 1}
        with pytest.raises(fxopt.PipelineSpecError, match="already exists"):
            fxopt.register_pass(scale.__class__(name="fuse-attention", fn=scale.fn))
        with pytest.raises(fxopt.PipelineSpecError, match="unknown pass 'fuse-atention'"):
            fxopt.register_pass(fuse_silu, after="fuse-atention")
        fxopt.register_pass(fuse_silu, default=False)
        assert "fuse-silu-registered" not in fxopt.default_pipeline()
    finally:
        fxopt.unregister_pass("fuse-silu-registered")
    assert "fuse-silu-registered" not in fxopt.default_pipeline()


def test_entry_point_passes_with_an_ordering_join_the_default_pipeline(monkeypatch):
    from importlib import metadata

    import fxopt.registry as registry

    ordered = metadata.EntryPoint(name="x", value="test_pass_manager:ordered_plugin", group=registry.ENTRY_POINT_GROUP)
    unordered = metadata.EntryPoint(name="y", value="test_pass_manager:scale", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [ordered, unordered])
    names = fxopt.default_pipeline()
    assert names.index("ordered-plugin") == names.index("select-gemm-backend") - 1  # before it, as it declares
    assert "scale" not in names  # no ordering: by name only


@fxopt.node_rewrite("ordered-plugin", before=("select-gemm-backend",))
def ordered_plugin(node, rw):
    return None
