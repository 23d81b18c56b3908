"""generate() over compiled prefill and decode graphs with a static KV cache: Hugging Face's results token for
token (greedy, left-padded batches, seeded sampling, EOS and padding), one compilation per graph, and clear
errors for what it does not take."""
import pytest
import torch

import fxopt
from fxopt.decode_graphs import StaticCacheStep, cache_layout, step_inputs
from fxopt.ir.printer import format_graph


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return tiny_llama


@pytest.fixture(scope="module")
def compiled(tiny):
    return fxopt.compile(tiny, {"input_ids": torch.randint(4, 128, (1, 10))}, backend="eager", max_cache_len=64)


def _left_padded(*rows):
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def test_step_module_matches_the_model(tiny):
    layout = cache_layout(tiny, 32)
    step = StaticCacheStep(tiny, layout)
    inputs = step_inputs(layout, 1, 6)
    inputs["input_ids"] = torch.randint(4, 128, (1, 6))
    with torch.no_grad():
        logits = step(**inputs)
        torch.testing.assert_close(logits, tiny(inputs["input_ids"]).logits[:, -1], rtol=1e-5, atol=1e-5)
        assert inputs["keys"][0][:, :, :6].abs().sum() > 0 and inputs["keys"][0][:, :, 6:].abs().sum() == 0


def test_greedy_equals_hugging_face(tiny, compiled):
    for seed in range(3):
        torch.manual_seed(seed)
        ids = torch.randint(4, 128, (1, 5 + 3 * seed))
        assert torch.equal(compiled.generate(input_ids=ids, max_new_tokens=20, do_sample=False),
                           tiny.generate(input_ids=ids, max_new_tokens=20, do_sample=False))
    stats = compiled.generator.last_stats
    assert stats.new_tokens == 20 and stats.steps == 19 and stats.decode_graph_seconds <= stats.decode_seconds


def test_left_padded_batches_equal_hugging_face_and_each_row_alone(tiny, compiled):
    ids, mask = _left_padded([5, 9, 22, 41], list(range(10, 20)), [77, 78])
    out = compiled.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert torch.equal(out, tiny.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False))
    alone = compiled.generate(input_ids=torch.tensor([[5, 9, 22, 41]]), max_new_tokens=12, do_sample=False)
    assert torch.equal(out[0, 6:], alone[0])


def test_seeded_sampling_equals_hugging_face(tiny, compiled):
    ids = torch.randint(4, 128, (2, 7))
    for kwargs in ({"top_k": 20, "top_p": 0.9, "temperature": 0.8}, {"top_k": 0, "top_p": 0.5}, {}):
        torch.manual_seed(11)
        ours = compiled.generate(input_ids=ids, max_new_tokens=15, do_sample=True, **kwargs)
        torch.manual_seed(11)
        theirs = tiny.generate(input_ids=ids, max_new_tokens=15, do_sample=True, **kwargs)
        assert torch.equal(ours, theirs), kwargs


def test_eos_pads_finished_rows_and_min_new_tokens_holds_it_back(tiny, compiled):
    ids = torch.randint(4, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    first = compiled.generate(input_ids=ids, max_new_tokens=6, do_sample=False)[0, 6:].tolist()
    # the first new token of row 0 not generated before it (a greedy tiny model may repeat one) becomes end-of-sequence
    at = next(i for i in range(1, len(first)) if first[i] not in first[:i])
    eos = first[at]
    out = compiled.generate(input_ids=ids, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0)
    ref = tiny.generate(input_ids=ids, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out, ref) and out[0, 6 + at] == eos
    held = compiled.generate(input_ids=ids, max_new_tokens=6, min_new_tokens=4, do_sample=False, eos_token_id=eos,
                             pad_token_id=0)
    assert torch.equal(held, tiny.generate(input_ids=ids, max_new_tokens=6, min_new_tokens=4, do_sample=False,
                                           eos_token_id=eos, pad_token_id=0))
    assert (held[0, 6:10] != eos).all()


def test_streamer_sees_prompt_then_each_token(compiled):
    seen = []

    class Streamer:
        def put(self, tokens):
            seen.append(tokens.tolist())

        def end(self):
            seen.append("end")

    ids = torch.randint(4, 128, (1, 5))
    out = compiled.generate(input_ids=ids, max_new_tokens=4, do_sample=False, streamer=Streamer())
    assert seen[0] == ids.tolist() and seen[-1] == "end" and len(seen) == 6
    assert [t[0] for t in seen[1:-1]] == out[0, 5:].tolist()


def test_bench_clock_times_first_token_and_steps_inside_one_call(tiny, compiled):
    """fxopt bench --generate stamps tokens with a streamer, the same way for Hugging Face's generate() and fxopt's."""
    from fxopt.tools.bench_generate import _timed

    ids = torch.randint(4, 128, (1, 5))
    for generate in (tiny.generate, compiled.generate):
        first, step, out = _timed(generate, input_ids=ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert out.shape == (1, 9) and first > 0 and step > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"num_beams": 4}, "does not support num_beams"),
    ({"repetition_penalty": 1.2, "output_scores": True}, "does not support output_scores, repetition_penalty"),
    ({"use_cache": False}, "always decodes with its KV cache"),
    ({"max_new_tokens": 0}, "at least 1"),
    ({"max_new_tokens": 60}, r"needs 66 cache slots; .* max_cache_len=64: recompile"),
    ({"do_sample": True, "temperature": 0.0}, "temperature must be positive"),
    ({"input_ids": torch.tensor([[5, 200]])}, r"outside the vocabulary \[0, 128\)"),
    ({"attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]])}, "pad on the left"),
])
def test_bad_requests_are_refused_by_name(compiled, kwargs, message):
    args = {"input_ids": torch.randint(4, 128, (1, 6)), "max_new_tokens": 5, **kwargs}
    with pytest.raises(fxopt.InputError, match=message):
        compiled.generate(**args)


def test_a_request_that_cannot_fit_fails_before_anything_is_compiled(tiny, monkeypatch):
    fresh = fxopt.compile(tiny, {"input_ids": torch.randint(4, 128, (1, 10))}, backend="eager", max_cache_len=16)
    with pytest.raises(fxopt.InputError, match="needs 30 cache slots"):
        fresh.generate(input_ids=torch.randint(4, 128, (1, 10)), max_new_tokens=20)
    assert fresh.generator is None


@pytest.fixture
def lowerings(monkeypatch) -> list:
    """One entry per graph fxopt lowers from here on. fxopt's lowering calls, not Inductor's compile_fx:
    select-gemm-backend compiles its GEMV candidate with compile_fx to time it, on shapes its timing cache lacks."""
    import fxopt.compiled_graph as compiled_graph

    calls = []
    original = compiled_graph.lower
    monkeypatch.setattr(compiled_graph, "lower", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_each_graph_is_lowered_once(tiny, lowerings):
    calls = lowerings
    compiled = fxopt.compile(tiny, {"input_ids": torch.randint(4, 128, (1, 10))}, max_cache_len=48)
    assert len(calls) == 1  # the forward graph
    for batch, prompt in ((1, 3), (1, 17), (2, 9), (3, 30)):
        ids = torch.randint(4, 128, (batch, prompt))
        assert torch.equal(compiled.generate(input_ids=ids, max_new_tokens=8, do_sample=False),
                           tiny.generate(input_ids=ids, max_new_tokens=8, do_sample=False))
    assert len(calls) == 3  # + prefill + decode, whatever the prompt length or batch
    assert compiled.generator.graphs.prefill.report.stages["target"] == ["select-gemm-backend", "pack-linears-bf16",
                                                                          "native-attention"]


def test_compile_generator_lowers_the_prefill_and_decode_graphs_only(tiny, lowerings):
    """fxopt.compile_generator (what fxopt generate/chat use): no forward graph; the same tokens as eager."""
    generator = fxopt.compile_generator(tiny, torch.randint(4, 128, (1, 10)), max_cache_len=48)
    assert len(lowerings) == 2  # prefill + decode
    ids = torch.randint(4, 128, (2, 7))
    assert torch.equal(generator.generate(input_ids=ids, max_new_tokens=8, do_sample=False),
                       tiny.generate(input_ids=ids, max_new_tokens=8, do_sample=False))
    assert generator.last_stats.new_tokens == 8
    assert "select-gemm-backend{copy_margin=1.0}" in generator.graphs.decode.report.spec
    for graph in (generator.graphs.prefill, generator.graphs.decode):  # cacheable: the weights are inputs
        assert not graph.lowered.frozen, graph.lowered.why_frozen
    captured = generator.graphs.decode.captured  # once compiled, the example caches are not kept ...
    assert all(t is None for t in captured.example_inputs[4:]) and captured.example_inputs[0] is not None
    rebuilt = captured.examples()  # ... zeros of their shapes stand in for them (what saving exports with)
    assert [t.shape for t in rebuilt[4:]] == [r[0] for r in captured.released_examples[4:]]
    assert not any(t.any() for t in rebuilt[4:])


def test_compile_generator_refuses_what_cannot_generate(tiny):
    from conftest import MLP

    with pytest.raises(fxopt.FxoptError, match="cannot generate: compile_generator needs a causal LM"):
        fxopt.compile_generator(MLP(), torch.randn(2, 64))
    with pytest.raises(fxopt.FxoptError, match=r"example_prompt_ids must be token ids \[batch, tokens\]"):
        fxopt.compile_generator(tiny, "What is the capital of France?")
    with pytest.raises(fxopt.PipelineSpecError, match="unknown decode precision 'int3'"):
        fxopt.compile_generator(tiny, torch.ones(1, 4, dtype=torch.long), decode_precision="int3")


def test_a_causal_lm_runs_its_linears_on_the_models_own_weights(tiny, compiled):
    """Three graphs read a causal LM's weights: its default pipeline never packs a second copy of one
    (copy_margin=1), whatever this machine's timings say; a spec that names the pass keeps its own options."""
    graphs = compiled.prepare_generation().graphs
    for report in (compiled.report, graphs.prefill.report, graphs.decode.report):
        assert "select-gemm-backend{copy_margin=1.0}" in report.spec
        assert "mkl" not in report.pipeline.record("select-gemm-backend").stats
    own = fxopt.compile(tiny, {"input_ids": torch.randint(4, 128, (1, 10))}, backend="eager",
                        passes="select-gemm-backend{backend=mkl}")
    assert own.report.spec == "select-gemm-backend{backend=mkl}"


@pytest.mark.parametrize("precision, pass_name", [("bf16", "cast-linears-bf16"),
                                                   ("int8-weight-only", "quantize-weights-int8")])
def test_a_decode_precision_changes_the_decode_graph_only(tiny, precision, pass_name):
    """The decode graph's linears run in ``precision`` (bf16: the LM head aside; int8: in groups of 32, the LM
    head included); the prefill graph stays fp32, so the first new token is Hugging Face's."""
    compiled = fxopt.compile(tiny, {"input_ids": torch.randint(4, 128, (1, 10))}, backend="eager", max_cache_len=64,
                             decode_precision=precision, decode_accuracy_budget=0.0)  # random logits: near ties
    graphs = compiled.prepare_generation().graphs
    assert compiled.generator.accuracy.positions == 9  # measured on the example prompt, not enforced
    changed = {name: {r.name for r in g.report.pipeline.records if r.changed}
               for name, g in (("prefill", graphs.prefill), ("decode", graphs.decode))}
    assert pass_name in changed["decode"] and pass_name not in changed["prefill"]
    decode = format_graph(graphs.decode.graph_module)
    if precision == "bf16":
        assert "lm_head.weight = const : f32[" in decode  # the LM head stays fp32
    else:
        assert "lm_head.weight" not in decode and "const : i8[128, 64]" in decode  # its int8 copy instead
        stats = graphs.decode.report.pipeline.record(pass_name).stats  # each shape on the kernel measured faster
        assert stats.get("gemv", 0) + stats.get("native gemv", 0) == 2 * 4 + 1  # 2 × (qkv, o, gate_up, down) + head
    ids = torch.randint(4, 128, (2, 12))
    got = compiled.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    want = tiny.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    assert got.shape == want.shape and torch.equal(got[:, :13], want[:, :13])


def test_the_decode_guard_measures_teacher_forced_agreement(tiny, compiled):
    """fp32 graphs agree with the model on every position of the prompt; the guard measures a lossy decode graph
    before generate() runs it, and refuses one under its budget with what it measured and what to do."""
    from fxopt.decode_guard import example_prompt, guard, teacher_forced_agreement

    padded, mask = _left_padded([5, 9, 22], [7, 8, 9, 10, 11])
    assert example_prompt((), {"input_ids": padded, "attention_mask": mask}).tolist() == [[5, 9, 22]]
    assert example_prompt((padded,), {}).shape == (1, 5) and example_prompt((), {}) is None

    graphs = compiled.prepare_generation().graphs
    ids = torch.randint(4, 128, (1, 20))
    assert teacher_forced_agreement(tiny, graphs, ids) == (1.0, 19)
    assert guard(tiny, graphs, ids, "fp32", 0.9) is None and compiled.generator.accuracy is None

    class Scrambled:  # a decode graph whose tokens are noise
        layout, prefill = graphs.layout, graphs.prefill

        @staticmethod
        def decode(*args):
            return (torch.randn(1, 128),)

    torch.manual_seed(0)
    with pytest.raises(fxopt.AccuracyBudgetError, match=r"decode graph in int8-weight-only: \d+% of 19 .*"
                                                        r"decode_precision='bf16'"):
        guard(tiny, Scrambled, ids, "int8-weight-only", 0.9)
    assert guard(tiny, Scrambled, ids, "int8-weight-only", 0.0).positions == 19
    with pytest.raises(fxopt.FxoptError, match="decode_accuracy_budget is a fraction"):
        fxopt.compile(tiny, {"input_ids": ids}, backend="eager", decode_accuracy_budget=90)
