"""quantize="auto" on the real models: the budget holds on text the calibration never saw, the int8 kernels run,
and the quantized SmolLM2 still knows the capital of France."""
import pytest
import torch
from torch._inductor.utils import run_and_get_code

import fxopt
from fxopt import metrics
from fxopt.generation import hf_generate
from fxopt.pipeline import DEFAULT_PIPELINE

pytestmark = pytest.mark.usefixtures("python_wrapper")  # they read the code it generates


@pytest.mark.slow
def test_minilm_auto_holds_its_budget_on_unseen_sentences(minilm, int8_start):
    compiled, (code, *_) = run_and_get_code(lambda: fxopt.compile(minilm.model, minilm.inputs(8, 128),
                                                                  quantize="auto"))
    plan = compiled.report.precision
    int8 = sum(1 for l in plan.layers if l.precision == "int8")
    assert int8 >= 20  # MiniLM's linears take int8 well (25 linears after q/k/v fusion)
    assert code.count("= torch.ops.onednn.qlinear_pointwise") == int8  # each int8 linear runs oneDNN's int8 GEMM
    assert plan.compiled >= 0.995  # checked on the calibration batch
    sentences = metrics.evaluation_sentences(32)  # never calibrated on
    enc = dict(minilm.tokenizer(sentences, padding=True, return_tensors="pt"))
    with torch.no_grad():
        cosine = metrics.min_cosine(minilm.model(**enc).last_hidden_state, compiled(**enc).last_hidden_state,
                                    enc["attention_mask"])
    assert cosine >= 0.995
    assert "int8 error" in str(compiled.report) and "precision plan (auto)" in str(compiled.report)


@pytest.mark.slow
def test_smollm2_int8_with_down_proj_and_lm_head_in_bf16_knows_paris(smollm2):
    """The recipe of docs/quantization.md: smoothed int8 everywhere but ``down_proj`` and ``lm_head``, which run
    in bf16. fp32's answer to "What is the capital of France?" is forced through the quantized model, which must
    pick fp32's token wherever fp32 is sure of it ("Paris" among them). fp32's *first* answer token is a near-tie
    ("The" by 0.08 logits over "L", which goes on "L'Étoile, …"): whether a lossy model's free-running answer
    names Paris is decided by that coin flip, and the flip differs between hosts (metrics.decisive_positions)."""
    spec = ",".join(DEFAULT_PIPELINE) + (",smooth-activations,quantize-dynamic-int8{skip=[lm_head,down_proj]},"
                                         "cast-linears-bf16")  # the default's target passes still run last
    compiled = fxopt.compile(smollm2.model, smollm2.inputs(1, 256), passes=spec)
    records = compiled.report.pipeline.record
    assert records("smooth-activations").stats["inputs smoothed"] == 91
    assert records("quantize-dynamic-int8").stats["linears"] == 90  # q/k/v, o, gate/up of 30 layers
    assert records("cast-linears-bf16").stats["linears"] == 31  # down_proj of 30 layers, lm_head
    tok = smollm2.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    start = prompt["input_ids"].shape[1]
    with torch.no_grad():
        answer = smollm2.model.generate(**prompt, max_new_tokens=12, do_sample=False)  # fp32's greedy answer
        reference = smollm2.model(answer).logits[0, start - 1:-1]
        candidate = compiled(input_ids=answer, attention_mask=torch.ones_like(answer)).logits[0, start - 1:-1]
    assert "Paris" in tok.decode(answer[0, start:])
    sure = metrics.decisive_positions(reference)
    paris = [i for i, t in enumerate(answer[0, start:].tolist()) if "Paris" in tok.decode([t])]
    assert paris and sure[paris[0]] and sure.sum() >= 5
    assert torch.equal(candidate.argmax(-1)[sure], reference.argmax(-1)[sure])
    inputs = smollm2.inputs(1, 128)
    with torch.no_grad():
        agree = metrics.next_token_agreement(smollm2.model(**inputs).logits, compiled(**inputs).logits)
    assert agree > 0.85
