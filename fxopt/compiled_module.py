"""The module ``fxopt.compile`` returns: same call signature and output types as the original model.

It binds each call to the original ``forward``'s signature, checks every input against what was
compiled (dtype, rank, static sizes, dynamic sizes within their range, non-tensor arguments equal to
the captured ones) and raises :class:`fxopt.InputError` naming the input and the fix otherwise, runs the
compiled graph, and rebuilds the original output structure (tuples, dicts, Hugging Face ``ModelOutput``).
For causal LMs ``generate()`` works: it runs Hugging Face's generation loop over the compiled forward.
"""
from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
import torch.fx
from torch.utils import _pytree as pytree

from fxopt.errors import InputError
from fxopt.ir.capture import CapturedModel, bind_call
from fxopt.lowering import Lowered

_MISSING = object()


class CompiledModule(torch.nn.Module):
    """A drop-in replacement for the compiled model (see the module docstring)."""

    def __init__(self, original: torch.nn.Module, captured: CapturedModel, graph_module: torch.fx.GraphModule,
                 lowered: Lowered, report):
        super().__init__()
        # Held outside nn.Module's registries: the original model's weights are not state of this module.
        object.__setattr__(self, "_original", original)
        object.__setattr__(self, "_lowered", lowered)
        self.graph_module = graph_module
        self.captured = captured
        self.report = report
        self._top_keys = list(pytree.tree_unflatten(
            [None] * captured.in_spec.num_leaves, captured.in_spec)[1].keys())
        self._returns_model_output = hasattr(pytree.tree_unflatten(
            [None] * captured.out_spec.num_leaves, captured.out_spec), "to_tuple")
        self._constants = {s.path: s.value for s in captured.slots if not s.is_tensor and "." not in s.path}

    # -- calling ------------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        # Hugging Face's return_dict only chooses the output container: handled here, not in the graph.
        return_dict = kwargs.pop("return_dict", None) if self._returns_model_output else None
        flat = self.flat_inputs(args, kwargs)
        with torch.no_grad():
            outputs = self._lowered.run(*flat)
        result = pytree.tree_unflatten(list(outputs), self.captured.out_spec)
        return result.to_tuple() if return_dict is False else result

    def flat_inputs(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        """Bind and check one call; returns the tensors in placeholder order."""
        captured = self.captured
        try:
            named = bind_call(captured.signature, args, kwargs)
        except TypeError as e:
            raise InputError(f"{e}; the compiled model takes the original forward{captured.signature}") from None
        call: dict[str, Any] = {}
        for key in self._top_keys:
            value = named.pop(key, _MISSING)
            if value is _MISSING:
                if key in self._constants:
                    value = self._constants[key]
                else:
                    raise InputError(f"missing input {key!r}: the model was compiled with it "
                                     f"({self._describe_inputs()})")
            call[key] = value
        for key, value in named.items():
            default = captured.signature.parameters.get(key)
            default = default.default if default is not None else inspect.Parameter.empty
            if value is not None and value is not default:
                raise InputError(f"argument {key}={_short(value)} was not part of the captured call; compile "
                                 f"with it in example_kwargs (compiled: {self._describe_inputs()})")
        leaves, spec = pytree.tree_flatten(((), call))
        if spec != captured.in_spec:
            kwargs_spec = captured.in_spec.child(1)
            for key, want in zip(kwargs_spec.context, kwargs_spec.children()):
                got = pytree.tree_structure(call[key])
                if got != want:
                    kind = "a tensor" if want.is_leaf() else f"structured like {want}"
                    raise InputError(f"input {key!r} must be {kind}, got {_short(call[key])} "
                                     f"(compiled: {self._describe_inputs()})")
        return self._check_leaves(leaves)

    def _check_leaves(self, leaves) -> list[torch.Tensor]:
        sizes: dict[str, tuple[int, str]] = {}
        tensors = []
        for slot, value in zip(self.captured.slots, leaves):
            if not slot.is_tensor:
                if not _same_constant(value, slot.value):
                    raise InputError(f"argument {slot.path}={_short(value)} differs from the value it was compiled "
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
                rng = self.captured.dims.get(want)
                if rng is not None and not rng.min <= got <= rng.max:
                    raise InputError(f"input {slot.path!r} dim {axis} ({want}) is {got}, outside the compiled range "
                                     f"[{rng.min}, {rng.max}]; recompile with dims={{{want!r}: (lo, hi)}} covering it")
                seen = sizes.setdefault(want, (got, slot.path))
                if seen[0] != got:
                    raise InputError(f"inputs {seen[1]!r} and {slot.path!r} disagree on {want}: {seen[0]} vs {got}")
            tensors.append(value.contiguous())
        return tensors

    def _describe_inputs(self) -> str:
        return ", ".join(s.describe() for s in self.captured.slots)

    # -- Hugging Face compatibility -----------------------------------------------------------------
    def generate(self, *args, **kwargs):
        """Hugging Face ``generate()`` over the compiled forward.

        The compiled graph is the full-sequence forward, so each step recomputes the prefix
        (``use_cache=False``); greedy results are token-for-token eager's.
        """
        original = self._original
        if not hasattr(original, "generate"):
            raise AttributeError(f"{type(original).__name__} has no generate()")
        shell = copy.copy(original)  # shares weights and submodules; only its forward differs
        shell.forward = self.forward
        shell.generation_config = copy.deepcopy(original.generation_config)
        shell.generation_config.use_cache = False
        kwargs["use_cache"] = False
        return shell.generate(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_original")
            if original is None or name.startswith("__"):
                raise
            return getattr(original, name)

    def extra_repr(self) -> str:
        return (f"model={type(self._original).__name__}, backend={self._lowered.backend}, "
                f"inputs=({self._describe_inputs()})")


def _same_constant(a, b) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001 - objects without a usable ==
        return a is b


def _short(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"<tensor {str(value.dtype).replace('torch.', '')}{list(value.shape)}>"
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."

