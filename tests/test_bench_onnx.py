"""fxopt bench's ONNX peers (ONNX Runtime fp32 and int8, OpenVINO) run the real MiniLM, return its output type and
agree with eager as their precisions allow; the test set-up installs them, so these run rather than skip."""
import pytest
import torch

from fxopt import metrics
from fxopt.tools import bench_onnx


@pytest.mark.parametrize("config, min_cosine", [("ONNX Runtime fp32", 0.99999),
                                                ("ONNX Runtime int8 (quantize_dynamic)", 0.9),
                                                ("OpenVINO (CPU default precision)", 0.999)])
def test_onnx_peers_run_minilm_and_agree_with_eager(minilm, config, min_cosine):
    assert bench_onnx.installed(config)
    inputs = minilm.inputs(2, 16)
    with torch.no_grad():
        call, note = bench_onnx.CONFIGS[config](minilm.model, inputs)
        other = minilm.inputs(3, 24)  # another batch and length: the export's dims are dynamic
        out, ref = call(**other), minilm.model(**other)
    assert type(out) is type(ref) and out.last_hidden_state.shape == ref.last_hidden_state.shape
    cosine = metrics.min_cosine(ref.last_hidden_state, out.last_hidden_state, other["attention_mask"])
    assert cosine >= min_cosine
    if config.startswith("OpenVINO"):
        assert "inference precision" in note


def test_ort_int8_model_multiplies_in_int8(minilm, tmp_path):
    """The int8 peer really is int8: ONNX Runtime's quantize_dynamic turns the linears into integer matmuls."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = bench_onnx.export_onnx(minilm.model, minilm.inputs(2, 16), tmp_path)
    quantize_dynamic(str(path), str(tmp_path / "int8.onnx"), weight_type=QuantType.QInt8)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node]
    assert ops.count("MatMulInteger") >= 6 * 6  # q, k, v, o, up, down in each of 6 layers
    assert "DynamicQuantizeLinear" in ops
