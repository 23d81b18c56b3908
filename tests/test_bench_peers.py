"""fxopt bench's torchao peers run (the test set-up installs torchao, so these run rather than skip), and the
static int8 rows calibrate on the bench's calibration batches, never on the held-out text."""
import pytest
import torch
from torch._inductor.utils import run_and_get_code

from fxopt import metrics
from fxopt.tools import bench

pytestmark = pytest.mark.usefixtures("python_wrapper")  # they read the code it generates


@pytest.fixture
def tiny_bert():
    import transformers as tf
    torch.manual_seed(0)
    model = tf.BertModel(tf.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=128)).eval()
    ids = torch.randint(0, 128, (2, 16))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_pt2e_peer_lowers_to_onednn_int8(tiny_bert):
    """The PT2E row runs (torch 2.13 + torchao 0.18 fail in freezing unless Inductor's global freezing flag is
    set: the bench's process sets it, this test puts it back — with config.patch: monkeypatch would delete the
    config entry on undo)."""
    model, inputs = tiny_bert
    with torch.no_grad(), torch._inductor.config.patch(freezing=False):
        call, _ = bench.pt2e_static_int8_config(model, inputs, [inputs])
        out, (code, *_) = run_and_get_code(lambda: call(**inputs))
        ref = model(**inputs)
    assert torch._inductor.config.freezing is False
    assert "onednn.qlinear_pointwise" in code
    assert type(out) is type(ref)
    assert metrics.min_cosine(ref.last_hidden_state, out.last_hidden_state) > 0.9


def test_calibration_batches_add_calibration_text_never_the_held_out_text(minilm):
    from fxopt.model_source import load_source
    source = load_source("minilm")
    inputs = source.inputs(2, 32)
    batches = bench.calibration_batches(source, inputs, 2, 32)
    assert len(batches) == 2 and batches[0] is inputs
    assert batches[1].keys() == inputs.keys() and batches[1]["input_ids"].shape == (2, 32)
    text = minilm.tokenizer.batch_decode(batches[1]["input_ids"], skip_special_tokens=True)
    held_out = " ".join(metrics.evaluation_sentences(64)).lower()
    assert all(t and t.lower()[:40] not in held_out for t in text)
    assert batches[1]["attention_mask"].sum() < batches[1]["attention_mask"].numel()  # padded sentences


def test_a_causal_lms_calibration_batch_is_running_text_of_any_size():
    from fxopt.model_source import load_source
    source = load_source("smollm2")
    inputs = source.inputs(1, 16)
    for batch, seq in ((1, 16), (4, 4096)):  # the second is more than the calibration text's ~7,300 tokens
        extra = bench.calibration_batches(source, inputs, batch, seq)[1]
        assert extra["input_ids"].shape == (batch, seq) and bool(extra["attention_mask"].all())
