"""The JSON manifest of a saved artifact: what was compiled, for which machine, and how to call it.

Everything a loaded model needs besides the compiled code is plain JSON: versions, the machine key (CPU model,
ISA features, threads, torch), the call signature (input slots with dtypes and dynamic dims, the input and output
pytree structure, embedding-table bounds), for causal LMs the KV-cache layout and generation config, each
package's size and SHA-256, and the compile report. Reading it never runs code: the only types it names are
pytree containers, and a Hugging Face ``ModelOutput`` class is looked up only inside ``transformers``.
"""
from __future__ import annotations

import importlib
import inspect
import json
from typing import Any

import torch
from torch.utils import _pytree as pytree

from fxopt.call_contract import CallSignature
from fxopt.errors import ArtifactError
from fxopt.ir.capture import DimRange, InputSlot

FORMAT = "fxopt-artifact"
FORMAT_VERSION = 1
_JSON_SCALARS = (type(None), bool, int, float, str)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_of(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ArtifactError(f"the manifest names an unknown dtype {name!r}; the artifact is corrupt: recompile it")
    return dtype


# -- the call signature -----------------------------------------------------------------------------
def call_to_json(call: CallSignature) -> dict[str, Any]:
    slots = []
    for s in call.slots:
        if not s.is_tensor and not isinstance(s.value, _JSON_SCALARS):
            raise ArtifactError(f"the non-tensor argument {s.path}={s.value!r} cannot be saved (only None, bools, "
                                "numbers and strings can); compile without it")
        slots.append({"path": s.path, "tensor": s.is_tensor, "value": s.value, "shape": list(s.shape),
                      "dtype": dtype_name(s.dtype) if s.is_tensor else None})
    params = [{"name": p.name, "kind": int(p.kind),
               "default": (p.default if isinstance(p.default, _JSON_SCALARS) else None),
               "has_default": p.default is not inspect.Parameter.empty}
              for p in call.signature.parameters.values()]
    return {"signature": params, "in_spec": pytree.treespec_dumps(call.in_spec),
            "out_spec": pytree.treespec_dumps(call.out_spec), "slots": slots,
            "dims": {name: [rng.min, rng.max] for name, rng in call.dims.items()},
            "index_bounds": {str(i): rows for i, rows in call.index_bounds.items()}}


def call_from_json(data: dict[str, Any]) -> CallSignature:
    params = [inspect.Parameter(p["name"], inspect._ParameterKind(p["kind"]),
                                default=p["default"] if p["has_default"] else inspect.Parameter.empty)
              for p in data["signature"]]
    slots = [InputSlot(s["path"], s["tensor"], dtype_of(s["dtype"]) if s["tensor"] else None, tuple(s["shape"]),
                       s["value"]) for s in data["slots"]]
    return CallSignature(inspect.Signature(params), _treespec(data["in_spec"]), _treespec(data["out_spec"]), slots,
                         {name: DimRange(name, lo, hi) for name, (lo, hi) in data["dims"].items()},
                         {int(i): rows for i, rows in data["index_bounds"].items()})


def _treespec(text: str) -> pytree.TreeSpec:
    """``treespec_loads``, after importing the ``transformers`` module that registers a named ModelOutput type."""
    for type_name in _type_names(json.loads(text)):
        module = type_name.rpartition(".")[0]
        if type_name not in pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE and module.startswith("transformers."):
            importlib.import_module(module)
    try:
        return pytree.treespec_loads(text)
    except Exception as e:  # noqa: BLE001 - an unknown container type or a malformed spec
        raise ArtifactError(f"cannot rebuild the model's input/output structure ({e}); recompile the artifact "
                            "with this environment") from None


def _type_names(node) -> list[str]:
    if isinstance(node, list):
        return [n for item in node for n in _type_names(item)]
    if isinstance(node, dict):
        found = [node["type"]] if isinstance(node.get("type"), str) else []
        return found + _type_names(node.get("children_spec", []))
    return []
