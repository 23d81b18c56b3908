"""The ONNX peers of ``fxopt bench``: ONNX Runtime (fp32, and int8 by its ``quantize_dynamic``) and OpenVINO (its
CPU default precision, which is bf16 on a CPU with AVX-512 BF16 or AMX), each running the model as
``torch.onnx.export`` writes it (the exporter that goes through ``torch.export``), with dynamic batch and sequence
(a batch of 1 in the example stays static).

They are optional extras (``pip install fxopt[peers]``): :func:`installed` says which are here, and ``fxopt bench``
runs only those by default. Each builder has the signature of :data:`fxopt.tools.bench.CONFIGS`: it takes the
model and example inputs and returns a callable taking the same keyword tensors and returning the model's own
output type (``last_hidden_state``, ``logits``…), so accuracy is measured as for every other row, and a line
for the report.
"""
from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Callable

import torch

#: peer configuration name → the package it needs
PACKAGES = {
    "ONNX Runtime fp32": "onnxruntime",
    "ONNX Runtime int8 (quantize_dynamic)": "onnxruntime",
    "OpenVINO (CPU default precision)": "openvino",
}


def installed(config: str) -> bool:
    """Whether the package a peer needs is importable here (and the ONNX exporter's, onnxscript)."""
    return all(importlib.util.find_spec(p) is not None for p in (PACKAGES[config], "onnx", "onnxscript"))


def _no_cache(model) -> dict:
    """``use_cache=False`` for a causal LM, so that its output is the logits alone."""
    return {"use_cache": False} if getattr(getattr(model, "config", None), "use_cache", False) else {}


def export_onnx(model: torch.nn.Module, inputs: dict, directory: Path) -> Path:
    """``model`` as an ONNX file in ``directory``, with the inputs' first two dims (batch, sequence) dynamic where
    the example lets ``torch.export`` keep them so (a batch of 1 stays 1)."""
    from torch.export import Dim

    kwargs = {**inputs, **_no_cache(model)}
    shapes = {k: ({0: Dim.AUTO, 1: Dim.AUTO} if torch.is_tensor(v) and v.dim() == 2 else None)
              for k, v in kwargs.items()}
    exported = torch.export.export(model, (), kwargs, dynamic_shapes=shapes, strict=False)
    path = directory / "model.onnx"
    torch.onnx.export(exported, f=str(path), dynamo=True, external_data=False)
    return path


def _as_model_output(model, inputs: dict, run: Callable[[dict], list]) -> Callable:
    """Wrap ``run`` (numpy inputs by name → outputs in order) as a call returning ``model``'s output type."""
    reference = model(**inputs, **_no_cache(model))
    out_type, keys = type(reference), list(reference.keys())

    def call(**kw):
        outputs = run({k: v.numpy() for k, v in kw.items()})
        return out_type(**{k: torch.from_numpy(a) for k, a in zip(keys, outputs)})
    return call


def _ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return lambda feed: session.run(None, {k: v for k, v in feed.items() if k in names})


def ort_fp32_config(model, inputs):
    """ONNX Runtime, fp32, all graph optimizations, as many threads as torch."""
    tmp = tempfile.TemporaryDirectory(prefix="fxopt-ort-")
    run = _ort_session(export_onnx(model, inputs, Path(tmp.name)))
    call = _as_model_output(model, inputs, run)
    call.keep = tmp  # the files live as long as the session
    return call, ""


def ort_int8_config(model, inputs):
    """ONNX Runtime int8: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights per tensor, activations
    quantized per call), the recipe its documentation gives for transformers."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = tempfile.TemporaryDirectory(prefix="fxopt-ort-")
    fp32 = export_onnx(model, inputs, Path(tmp.name))
    int8 = Path(tmp.name) / "model.int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    call = _as_model_output(model, inputs, _ort_session(int8))
    call.keep = tmp
    return call, ""


def openvino_config(model, inputs):
    """OpenVINO on the CPU with its defaults (the inference precision it picks for this CPU is in the report)."""
    import openvino as ov

    tmp = tempfile.TemporaryDirectory(prefix="fxopt-ov-")
    core = ov.Core()
    compiled = core.compile_model(str(export_onnx(model, inputs, Path(tmp.name))), "CPU",
                                  {"INFERENCE_NUM_THREADS": torch.get_num_threads()})
    names = {port.get_any_name() for port in compiled.inputs}
    request = compiled.create_infer_request()

    def run(feed):
        result = request.infer({k: v for k, v in feed.items() if k in names})
        return [result[port].copy() for port in compiled.outputs]
    call = _as_model_output(model, inputs, run)
    call.keep = tmp
    return call, f"OpenVINO inference precision: {compiled.get_property('INFERENCE_PRECISION_HINT')}"


#: peer configuration name → builder, as in :data:`fxopt.tools.bench.CONFIGS`
CONFIGS = {
    "ONNX Runtime fp32": ort_fp32_config,
    "ONNX Runtime int8 (quantize_dynamic)": ort_int8_config,
    "OpenVINO (CPU default precision)": openvino_config,
}
