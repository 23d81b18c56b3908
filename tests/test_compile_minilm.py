"""fxopt.compile on the real all-MiniLM-L6-v2: exact outputs at many shapes from one compilation."""
import pytest
import torch

import fxopt
from conftest import rel_err


def test_minilm_matches_eager_at_all_shapes_with_one_compilation(minilm, monkeypatch):
    import torch._inductor.compile_fx as inductor

    calls = []
    real_compile_fx = inductor.compile_fx
    monkeypatch.setattr(inductor, "compile_fx", lambda *a, **k: calls.append(1) or real_compile_fx(*a, **k))
    compiled = fxopt.compile(minilm.model, minilm.inputs(8, 128))
    with torch.no_grad():
        for batch in (1, 3, 8):
            for seq in (16, 57, 128):
                inputs = minilm.inputs(batch, seq)
                out, ref = compiled(**inputs), minilm.model(**inputs)
                assert type(out) is type(ref)
                assert rel_err(out.last_hidden_state, ref.last_hidden_state) < 1e-4, (batch, seq)
                assert rel_err(out.pooler_output, ref.pooler_output) < 1e-4, (batch, seq)
    assert len(calls) == 1, "one Inductor compilation must serve every shape in the dynamic range"


def test_minilm_padding_and_return_dict_false(minilm, minilm_compiled):
    inputs = minilm.inputs(3, 40)
    inputs["attention_mask"][1, 25:] = 0  # a padded row
    with torch.no_grad():
        ref = minilm.model(**inputs, return_dict=False)
        out = minilm_compiled(**inputs, return_dict=False)
    assert isinstance(out, tuple) and len(out) == len(ref)
    assert rel_err(out[0], ref[0]) < 1e-4


def test_minilm_dead_node_stats(minilm_compiled):
    stats = minilm_compiled.report.pipeline.record("eliminate-dead-nodes").stats
    assert stats["dropout"] == 13  # embeddings + 2 per layer × 6 layers
    assert stats["assertions"] >= 1
    report = str(minilm_compiled.report)
    assert "BertModel" in report and "eliminate-dead-nodes" in report


def test_minilm_call_errors(minilm, minilm_compiled):
    inputs = minilm.inputs(2, 16)
    with pytest.raises(fxopt.InputError, match="outside the compiled range"):
        long_ids = torch.zeros(1, 513, dtype=torch.long)  # MiniLM's positions end at 512
        minilm_compiled(input_ids=long_ids, attention_mask=torch.ones_like(long_ids), token_type_ids=long_ids)
    with pytest.raises(fxopt.InputError, match="disagree on seq"):
        minilm_compiled(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"][:, :8],
                        token_type_ids=inputs["token_type_ids"])
    with pytest.raises(fxopt.InputError, match="dtype torch.float32, compiled for torch.int64"):
        minilm_compiled(**{**inputs, "input_ids": inputs["input_ids"].float()})
    with pytest.raises(fxopt.InputError, match="output_attentions=True was not part of the captured call"):
        minilm_compiled(**inputs, output_attentions=True)


def test_minilm_fxopt_constants_are_held_once(minilm, minilm_compiled):
    # the fused q/k/v weights live in Inductor's frozen code; the inspection graph keeps only their shapes
    own = {n: t for n, t in minilm_compiled.graph_module.named_buffers() if n.startswith("_fxopt_")}
    assert len(own) >= 12 and all(t.device.type == "meta" for t in own.values())
    assert any("held by the compiled code only" in n for n in minilm_compiled.report.notes)
    inputs = minilm.inputs(2, 33)
    with torch.no_grad():
        assert rel_err(minilm_compiled(**inputs).last_hidden_state, minilm.model(**inputs).last_hidden_state) < 1e-4
