"""compile_graph and the seams around it: one constant pool per model shared by its graphs, portable and
target stages with the machine key recorded, the pipeline spec in the report, the split CompiledModule."""
import pytest
import torch

import fxopt
from fxopt import CompileOptions, ConstantPool, compile_graph
from fxopt.ir import capture
from fxopt.pipeline import build_pipeline
from fxopt.rewriter import OWN_CONSTANT_PREFIX


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _own_constants(gm):
    return {name: t for name, t in gm.named_buffers() if name.startswith(OWN_CONSTANT_PREFIX)}


def _two_graphs(model, spec, pool):
    ids = torch.randint(0, 128, (2, 12))
    first = capture(model, (), {"input_ids": ids})
    second = capture(model, (), {"input_ids": ids[:, :5]}, dynamic=False)
    options = CompileOptions(backend="eager")
    g1 = compile_graph(first, build_pipeline(spec), options, pool=pool)
    g2 = compile_graph(second, build_pipeline(spec), options, pool=pool)
    for graph, inputs in ((g1, first.example_inputs), (g2, second.example_inputs)):
        expected = model(input_ids=inputs[0], use_cache=False).logits
        torch.testing.assert_close(graph(*inputs)[0], expected, rtol=1e-4, atol=1e-4)
    fused = [{t.data_ptr() for n, t in _own_constants(g.graph_module).items() if "fused" in n} for g in (g1, g2)]
    return fused


SPEC = "eliminate-dead-nodes,fuse-rms-norm,fuse-sibling-linears"


def test_two_graphs_of_one_model_hold_their_fused_weights_once():
    """The first graph's fusion makes the model's q/k/v and gate/up views of the fused weights; the second
    graph finds them adjacent and takes views: the same memory, without the pool."""
    pool = ConstantPool()
    fused1, fused2 = _two_graphs(_tiny_llama(), SPEC, pool)
    assert len(fused1) == 4 and fused1 == fused2  # 2 layers × (q/k/v weight, gate/up weight), held once
    assert pool.built == 0


def test_two_graphs_share_the_pool_when_the_model_keeps_its_weights():
    pool = ConstantPool()
    fused1, fused2 = _two_graphs(_tiny_llama(), SPEC.replace("linears", "linears{share=false}"), pool)
    assert len(fused1) == 4 and fused1 == fused2  # the same tensors, held once
    assert pool.built == 4 and pool.reused == 4
    assert pool.release() > 0 and len(pool) == 0


def test_a_released_pool_finds_what_compiled_code_still_holds():
    """A causal LM's generation graphs are compiled after the forward graph's pool was released: a constant the
    forward graph still holds (a packed weight) is reused, one nothing holds any more is built again."""
    pool, weight = ConstantPool(), torch.randn(4, 4)
    held = pool.get(("pack", weight), lambda: weight * 2)
    dropped = pool.get(("other", weight), lambda: weight * 3)
    assert pool.release() > 0 and len(pool) == 0
    del dropped
    assert pool.get(("pack", weight), lambda: weight * 5) is held
    assert torch.equal(pool.get(("other", weight), lambda: weight * 7), weight * 7)
    assert pool.built == 3 and pool.reused == 1


def test_without_a_pool_each_graph_builds_its_own():
    model = _tiny_llama()
    cap = capture(model, (), {"input_ids": torch.randint(0, 128, (2, 12))})
    graph = compile_graph(cap, build_pipeline("fuse-sibling-linears"), CompileOptions(backend="eager"))
    assert len(_own_constants(graph.graph_module)) == 4


def test_stages_machine_key_and_spec_in_the_report():
    model = _tiny_llama()
    cap = capture(model, (), {"input_ids": torch.randint(0, 128, (2, 12))})
    pipeline = build_pipeline("select-gemm-backend{margin=0.5},eliminate-dead-nodes,fuse-sibling-linears")
    graph = compile_graph(cap, pipeline, CompileOptions(backend="eager"))
    report = graph.report
    # target passes run after every portable one, whatever the order given
    assert [r.name for r in report.pipeline.records] == ["eliminate-dead-nodes", "fuse-sibling-linears",
                                                         "select-gemm-backend"]
    assert report.stages == {"portable": ["eliminate-dead-nodes", "fuse-sibling-linears"],
                             "target": ["select-gemm-backend"]}
    assert report.spec == "eliminate-dead-nodes,fuse-sibling-linears,select-gemm-backend{margin=0.5}"
    assert build_pipeline(report.spec) == [pipeline[1], pipeline[2], pipeline[0]]
    key = report.machine
    assert key is not None and key.cpu and key.torch == torch.__version__ and key.threads >= 1
    text = str(report)
    assert "target stage" in text and key.cpu in text and report.spec in text
    # the portable graph is what the target stage started from: no machine-specific op in it
    portable = "\n".join(str(n.target) for n in graph.portable_graph.nodes)
    assert "mkl" not in portable and "linear" in portable

    portable_only = compile_graph(capture(model, (), {"input_ids": torch.randint(0, 128, (2, 12))}),
                                  build_pipeline("eliminate-dead-nodes"), CompileOptions(backend="eager"))
    assert portable_only.report.machine is None and "none (no machine-specific choices)" in str(portable_only.report)


def test_compiled_module_is_made_of_contract_graph_and_generation():
    from fxopt.call_contract import CallContract
    from fxopt.compiled_graph import CompiledGraph

    model = _tiny_llama()
    ids = torch.randint(0, 128, (2, 12))
    compiled = fxopt.compile(model, {"input_ids": ids}, backend="eager")
    assert isinstance(compiled.contract, CallContract) and isinstance(compiled.compiled_graph, CompiledGraph)
    assert compiled.captured.exported is not None and compiled.captured.model_name == "LlamaForCausalLM"
    assert compiled.report.spec.startswith("eliminate-dead-nodes,")
    out = compiled(input_ids=ids[:1, :7])
    torch.testing.assert_close(out.logits, model(input_ids=ids[:1, :7], use_cache=False).logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(fxopt.InputError, match="outside the compiled range"):
        compiled(input_ids=torch.randint(0, 128, (1, 65)))


def test_bad_pipeline_fails_before_capture():
    class Untraceable(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("capture must not run")

    with pytest.raises(fxopt.PipelineSpecError, match="never closed"):
        fxopt.compile(Untraceable(), torch.randn(2, 3), passes="eliminate-dead-nodes{")
