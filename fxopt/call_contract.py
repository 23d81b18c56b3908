"""The call contract of a compiled model: bind a call to the original ``forward``'s signature, check every input
against what was compiled, and rebuild the original output structure.

It raises :class:`fxopt.InputError` naming the input and the fix when a call does not fit: dtype, rank, static
sizes, dynamic sizes outside their range, two inputs disagreeing on a dimension, non-tensor arguments that
differ from the captured ones, unknown arguments. Outputs come back as the model returned them (tuples, dicts,
Hugging Face ``ModelOutput``; ``return_dict=False`` gives the tuple).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.utils import _pytree as pytree

from fxopt.errors import InputError
from fxopt.ir.capture import CapturedModel, DimRange, InputSlot, bind_call

_MISSING = object()


@dataclass
class CallSignature:
    """What the call contract needs to know of a capture: the original ``forward``'s signature, the input and
    output structure, every input slot with its dims, and the rows of each embedding table an input indexes.
    A saved artifact stores it (:mod:`fxopt.artifact_manifest`), so a loaded model checks calls like a compiled one."""

    signature: inspect.Signature
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec
    slots: list[InputSlot]
    dims: dict[str, DimRange]
    index_bounds: dict[int, int]

    @classmethod
    def of(cls, captured: CapturedModel) -> "CallSignature":
        return cls(captured.signature, captured.in_spec, captured.out_spec, list(captured.slots), dict(captured.dims),
                   index_bounds(captured.graph_module))

    @property
    def tensor_slots(self) -> list[InputSlot]:
        return [s for s in self.slots if s.is_tensor]


class CallContract:
    """Binding, input checks and output rebuilding for one captured signature."""

    def __init__(self, call: CapturedModel | CallSignature):
        call = call if isinstance(call, CallSignature) else CallSignature.of(call)
        self.call = call
        self.top_keys = list(pytree.tree_unflatten([None] * call.in_spec.num_leaves, call.in_spec)[1].keys())
        self.returns_model_output = hasattr(
            pytree.tree_unflatten([None] * call.out_spec.num_leaves, call.out_spec), "to_tuple")
        self.constants = {s.path: s.value for s in call.slots if not s.is_tensor and "." not in s.path}
        self.index_bounds = call.index_bounds

    def describe_inputs(self) -> str:
        return ", ".join(s.describe() for s in self.call.slots)

    # -- inputs -------------------------------------------------------------------------------------
    def flat_inputs(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        """Bind and check one call; returns the tensors in placeholder order."""
        captured = self.call
        try:
            named = bind_call(captured.signature, args, kwargs)
        except TypeError as e:
            raise InputError(f"{e}; the compiled model takes the original forward{captured.signature}") from None
        call: dict[str, Any] = {}
        for key in self.top_keys:
            value = named.pop(key, _MISSING)
            if value is _MISSING:
                if key in self.constants:
                    value = self.constants[key]
                else:
                    raise InputError(f"missing input {key!r}: the model was compiled with it "
                                     f"({self.describe_inputs()})")
            call[key] = value
        for key, value in named.items():
            default = captured.signature.parameters.get(key)
            default = default.default if default is not None else inspect.Parameter.empty
            if value is not None and value is not default:
                raise InputError(f"argument {key}={short_repr(value)} was not part of the captured call; compile "
                                 f"with it in example_kwargs (compiled: {self.describe_inputs()})")
        leaves, spec = pytree.tree_flatten(((), call))
        if spec != captured.in_spec:
            kwargs_spec = captured.in_spec.child(1)
            for key, want in zip(kwargs_spec.context, kwargs_spec.children()):
                got = pytree.tree_structure(call[key])
                if got != want:
                    kind = "a tensor" if want.is_leaf() else f"structured like {want}"
                    raise InputError(f"input {key!r} must be {kind}, got {short_repr(call[key])} "
                                     f"(compiled: {self.describe_inputs()})")
        return self.check_leaves(leaves)

    def check_leaves(self, leaves) -> list[torch.Tensor]:
        sizes: dict[str, tuple[int, str]] = {}
        tensors = []
        for slot, value in zip(self.call.slots, leaves):
            if not slot.is_tensor:
                if not _same_constant(value, slot.value):
                    raise InputError(f"argument {slot.path}={short_repr(value)} differs from the value it was compiled "
                                     f"with ({slot.value!r}); non-tensor arguments are fixed at compile time")
                continue
            if not isinstance(value, torch.Tensor):
                raise InputError(f"input {slot.path!r} must be a tensor ({slot.describe()}), got {type(value).__name__}")
            if value.dtype != slot.dtype:
                raise InputError(f"input {slot.path!r} has dtype {value.dtype}, compiled for {slot.dtype}; "
                                 f"convert it with .to({slot.dtype})")
            if value.dim() != len(slot.shape):
                raise InputError(f"input {slot.path!r} has {value.dim()} dimensions {tuple(value.shape)}, compiled "
                                 f"for {len(slot.shape)}: {slot.describe()}")
            if value.device.type != "cpu":
                raise InputError(f"input {slot.path!r} is on {value.device}; fxopt compiled the model for the CPU")
            for axis, (got, want) in enumerate(zip(value.shape, slot.shape)):
                if isinstance(want, int):
                    if got != want:
                        raise InputError(f"input {slot.path!r} has size {got} at dim {axis}, compiled for the "
                                         f"static size {want} ({slot.describe()})")
                    continue
                rng = self.call.dims.get(want)
                if rng is not None and not rng.min <= got <= rng.max:
                    raise InputError(f"input {slot.path!r} dim {axis} ({want}) is {got}, outside the compiled range "
                                     f"[{rng.min}, {rng.max}]; recompile with dims={{{want!r}: (lo, hi)}} covering it")
                seen = sizes.setdefault(want, (got, slot.path))
                if seen[0] != got:
                    raise InputError(f"inputs {seen[1]!r} and {slot.path!r} disagree on {want}: {seen[0]} vs {got}")
            tensors.append(value.contiguous())
        for i, rows in self.index_bounds.items():  # the compiled code indexes without bounds checks
            ids = tensors[i]
            low, high = (int(ids.min()), int(ids.max())) if ids.numel() else (0, 0)
            if low < 0 or high >= rows:
                bad = high if high >= rows else low
                raise InputError(f"input {self.call.tensor_slots[i].path!r} holds index {bad}, outside the "
                                 f"table it selects rows of ({rows} rows: valid ids are 0..{rows - 1})")
        return tensors

    # -- outputs ------------------------------------------------------------------------------------
    def pop_return_dict(self, kwargs: dict):
        """Hugging Face's ``return_dict`` only chooses the output container: taken out of the call here."""
        return kwargs.pop("return_dict", None) if self.returns_model_output else None

    def rebuild(self, outputs: Sequence[torch.Tensor], return_dict=None):
        result = pytree.tree_unflatten(list(outputs), self.call.out_spec)
        return result.to_tuple() if return_dict is False else result


def index_bounds(gm) -> dict[int, int]:
    """Flat input position → rows of the embedding table it indexes, for inputs used as ``aten.embedding`` ids
    (token ids, token type ids, position ids): what the compiled code would read out of bounds."""
    bounds: dict[int, int] = {}
    for i, p in enumerate(gm.graph.find_nodes(op="placeholder")):
        for user in p.users:
            if user.target is torch.ops.aten.embedding.default and user.args[1] is p:
                rows = int(user.args[0].meta["val"].shape[0])
                bounds[i] = min(bounds.get(i, rows), rows)
    return bounds


def _same_constant(a, b) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001 - objects without a usable ==
        return a is b


def short_repr(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"<tensor {str(value.dtype).replace('torch.', '')}{list(value.shape)}>"
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."
