"""Capture a model into fxopt's IR: a flat ``torch.fx.GraphModule`` produced by ``torch.export``.

The IR every pass sees:

* placeholders are the call's *tensor* leaves, in pytree order (non-tensor arguments such as
  ``use_cache=False`` are fixed at capture time and checked at call time);
* weights, buffers and tensor constants are ``get_attr`` nodes, so passes can fold and quantize them;
* the output node returns a flat tuple; the original output structure (a tuple, a dict, a Hugging Face
  ``ModelOutput``) is rebuilt by the runtime wrapper from ``CapturedModel.out_spec``;
* every node carries ``meta["val"]``: a fake tensor whose sizes are sympy expressions of the dynamic
  dimensions (``batch``, ``seq``), which the printer, the verifier and the cost model read.

``torch.fx.symbolic_trace`` cannot trace Hugging Face models (data-dependent Python control flow), so
capture uses non-strict ``torch.export`` under ``torch.no_grad()``.
"""
from __future__ import annotations

import inspect
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.fx
from torch.export import Dim
from torch.utils import _pytree as pytree

from fxopt.errors import CaptureError
from fxopt.ir.static_fallback import export_with_fallback

#: Default ranges of the dynamic dimensions. ``seq``'s upper bound is lowered to the model's
#: ``max_position_embeddings`` when it has one.
DEFAULT_DIM_RANGES: dict[str, tuple[int, int]] = {"batch": (1, 256), "seq": (1, 4096)}


@dataclass(frozen=True)
class DimRange:
    """One dynamic dimension: its name in printed graphs and the range the compiled code accepts."""

    name: str
    min: int
    max: int

    def __str__(self) -> str:
        return f"{self.name}∈[{self.min}, {self.max}]"


@dataclass(frozen=True)
class InputSlot:
    """One leaf of the captured call's arguments.

    ``shape`` holds ints for static sizes and dimension names (``"batch"``) for dynamic ones.
    Non-tensor leaves are constants fixed at capture time (``value``).
    """

    path: str
    is_tensor: bool
    dtype: torch.dtype | None = None
    shape: tuple[int | str, ...] = ()
    value: Any = None

    def describe(self) -> str:
        if not self.is_tensor:
            return f"{self.path}={self.value!r}"
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.path}: {str(self.dtype).replace('torch.', '')}[{dims}]"


@dataclass
class CapturedModel:
    """What :func:`capture` returns: the graph plus everything needed to call it like the model."""

    graph_module: torch.fx.GraphModule
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec
    slots: list[InputSlot]
    dims: dict[str, DimRange]
    example_inputs: list[torch.Tensor]  # None where release_examples dropped one: use examples()
    signature: inspect.Signature
    capture_seconds: float
    notes: list[str] = field(default_factory=list)
    model_name: str = ""
    #: The ExportedProgram the graph came from (shares the model's weights): what a saved artifact needs to
    #: re-run the portable pipeline elsewhere.
    exported: torch.export.ExportedProgram | None = None
    #: Shape and dtype of the example tensors :meth:`release_examples` dropped (None: kept), by position.
    released_examples: list[tuple[torch.Size, torch.dtype] | None] | None = None

    def release_examples(self, positions: Sequence[int]) -> int:
        """Drop the example tensors at ``positions`` once the graph is compiled; :meth:`examples` gives zeros of
        their shapes from then on. For examples whose values no longer matter, such as a static KV cache
        (SmolLM2's at 384 slots: 34 MB a graph). Returns the bytes dropped."""
        released = [(t.shape, t.dtype) if i in positions else None for i, t in enumerate(self.example_inputs)]
        freed = sum(t.untyped_storage().nbytes() for t, r in zip(self.example_inputs, released) if r is not None)
        if freed:
            self.released_examples = released
            self.example_inputs = [t if r is None else None for t, r in zip(self.example_inputs, released)]
            if self.exported is not None:
                self.exported.example_inputs = None  # it holds the same tensors
        return freed

    def examples(self) -> list[torch.Tensor]:
        """The example tensors in placeholder order, zeros where :meth:`release_examples` dropped one."""
        if self.released_examples is None:
            return self.example_inputs
        return [t if r is None else torch.zeros(r[0], dtype=r[1]) for t, r in zip(self.example_inputs,
                                                                                   self.released_examples)]

    @property
    def tensor_slots(self) -> list[InputSlot]:
        return [s for s in self.slots if s.is_tensor]

    def example_dims(self) -> dict[str, int]:
        """The user's example size of every dynamic dimension, e.g. ``{"batch": 8, "seq": 128}`` (a batch of 1
        stays 1 here although it was traced as 2); also in ``graph_module.meta["fxopt.example_dims"]``."""
        return dict(self.graph_module.meta.get("fxopt.example_dims", {}))

    def fake_inputs(self) -> list[torch.Tensor]:
        """The placeholders' fake tensors: symbolic sizes, used to compile one graph for all shapes."""
        return [n.meta["val"] for n in self.graph_module.graph.find_nodes(op="placeholder")]


def is_hf_model(model: torch.nn.Module) -> bool:
    """True for a Hugging Face ``PreTrainedModel`` (checked without importing transformers)."""
    return any(c.__name__ == "PreTrainedModel" for c in type(model).__mro__)


def bind_call(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Bind a call to ``forward``'s signature and return every argument by name (``**kwargs`` inlined)."""
    bound = signature.bind(*args, **kwargs)
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            raise CaptureError(
                f"forward(*{name}) takes variable positional arguments, which fxopt cannot bind by name; "
                "wrap the model in a module whose forward names its inputs."
            )
        else:
            named[name] = value
    return named


def capture(
    model: torch.nn.Module,
    example_args: tuple = (),
    example_kwargs: dict | None = None,
    *,
    dynamic: bool = True,
    dims: dict[str, tuple[int, int]] | None = None,
    dim_axes: dict[str, dict[int, str]] | None = None,
) -> CapturedModel:
    """Capture ``model`` called on the example inputs into fxopt's IR.

    ``dynamic=True`` makes the batch dimension (dim 0 of every tensor whose dim 0 equals the first input's)
    dynamic and, for Hugging Face models or when ``dims`` names ``"seq"``, the sequence dimension (dim 1 of every
    tensor whose dim 1 equals the first input's) too. ``dims`` sets ranges, e.g. ``{"batch": (1, 64),
    "seq": (2, 512)}``, and may name further dimensions. ``dim_axes`` says which axis of an input is which named
    dimension, for inputs the automatic rule does not fit (a KV cache, a cache position)::

        dim_axes={"input_ids": {0: "batch"}, "cache_position": {}, "past": {0: "batch", 2: "cache"}},
        dims={"cache": (16, 2048)}

    An input given there takes exactly those axes (``{}``: all static); an input whose value is a list or tuple
    of tensors applies the same axes to each. Raises :class:`fxopt.CaptureError` when ``torch.export`` cannot
    capture the model or the dims do not fit the example.
    """
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"fxopt.compile needs a torch.nn.Module, got {type(model).__name__}.")
    example_kwargs = dict(example_kwargs or {})
    signature = inspect.signature(model.forward)
    try:
        named = bind_call(signature, tuple(example_args), example_kwargs)
    except TypeError as e:
        raise CaptureError(f"the example inputs do not fit {type(model).__name__}.forward{signature}: {e}") from None
    if not any(isinstance(v, torch.Tensor) for v in pytree.tree_leaves(named)):
        raise CaptureError(
            f"no example tensor was given for {type(model).__name__}; pass example_inputs=(...) or "
            "example_kwargs={...} with real tensors of the shapes you will call the model with."
        )
    notes: list[str] = []
    if is_hf_model(model):
        named = _hf_inference_kwargs(model, signature, named, notes)

    dim_axes = dict(dim_axes or {})
    unknown_inputs = sorted(set(dim_axes) - set(named))
    if unknown_inputs:
        raise CaptureError(f"dim_axes names inputs the call does not have: {unknown_inputs}; "
                           f"the inputs are {sorted(named)}")
    ranges = _dim_ranges(model, dims, dim_axes)
    has_seq = is_hf_model(model) or "seq" in (dims or {})
    axes = _axes_of_inputs(named, has_seq, dim_axes) if dynamic else {}
    user_sizes = _example_sizes(named, axes)

    def attempt(static: frozenset[str]):
        kept = {key: {axis: n for axis, n in entry.items() if n not in static} for key, entry in axes.items()}
        sizes = {n: size for n, size in user_sizes.items() if n not in static}
        attempt_notes: list[str] = []
        spec, example = _dynamic_spec(named, ranges, dynamic, sizes, kept, notes=attempt_notes)
        with torch.no_grad():
            exported = torch.export.export(model, (), example, dynamic_shapes=spec, strict=False)
        return exported, spec, example, attempt_notes

    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        # the dims fxopt chose may fall back to static; those the caller ranged in dims= may not
        automatic = set(user_sizes) - set(dims or {}) if dynamic else set()
        exported, dyn_spec, named, attempt_notes = export_with_fallback(attempt, automatic, user_sizes, notes)
        notes.extend(attempt_notes)
    except CaptureError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure becomes one short CaptureError
        error = CaptureError(_explain_export_failure(model, e, ranges))
        error.export_error = e  # torch.export's own exception, for who wants the whole report
        raise error from (e if os.environ.get("FXOPT_FULL_ERRORS") else None)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start

    gm = _flat_graph_module(exported)
    flat, in_spec = pytree.tree_flatten(((), named))
    paths = [_path_name(path) for path, _ in pytree.tree_flatten_with_path(named)[0]]
    leaf_specs = [
        entry for key, value in named.items()
        for entry, leaf in zip(_spec_leaves((dyn_spec or {}).get(key), value), pytree.tree_leaves(value))
    ]
    sym_names = _symbol_names(list(gm.graph.find_nodes(op="placeholder")), leaf_specs)
    _drop_constant_placeholders(gm)
    _drop_unused(gm)
    slots = _input_slots(paths, flat, gm, sym_names)
    used_dims = {name for s in slots for name in s.shape if isinstance(name, str)}
    gm.meta["fxopt.symbols"] = sym_names
    gm.meta["fxopt.example_dims"] = {name: size for name, size in user_sizes.items() if name in used_dims}
    gm.meta["fxopt.outputs"] = _output_signature(gm)
    return CapturedModel(
        graph_module=gm,
        in_spec=in_spec,
        out_spec=exported.call_spec.out_spec,
        slots=slots,
        dims={n: DimRange(n, *ranges[n]) for n in ranges if n in used_dims},
        example_inputs=[t for t in flat if isinstance(t, torch.Tensor)],
        signature=signature,
        capture_seconds=seconds,
        notes=notes,
        model_name=type(model).__name__,
        exported=exported,
    )


def fresh_graph_module(captured: CapturedModel) -> torch.fx.GraphModule:
    """The captured graph again, as :func:`capture` first returned it (passes mutate ``captured.graph_module`` in
    place): rebuilt from ``captured.exported``, sharing the model's weights. Saving an artifact re-runs the
    portable passes on it (:mod:`fxopt.aot_package`)."""
    if captured.exported is None:
        raise CaptureError("this capture kept no ExportedProgram; capture the model again")
    gm = _flat_graph_module(captured.exported)
    _drop_constant_placeholders(gm)
    _drop_unused(gm)
    for key in ("fxopt.symbols", "fxopt.example_dims", "fxopt.outputs", "fxopt.calibration"):
        if key in captured.graph_module.meta:
            gm.meta[key] = captured.graph_module.meta[key]
    return gm


# --------------------------------------------------------------------------------------------------
# helpers of capture()


def _hf_inference_kwargs(model, signature, named: dict, notes: list[str]) -> dict:
    """Fix the Hugging Face flags an inference graph needs: no KV cache object, a ``ModelOutput`` back."""
    params = signature.parameters
    # Only a forward that names use_cache gets it: passed through **kwargs it would need a dynamic-shapes entry
    # under "kwargs", which torch.export 2.13 rejects; such forwards (encoders, classifiers) keep no cache.
    if "use_cache" in params and getattr(model.config, "use_cache", False):
        if named.get("use_cache") is not False:
            notes.append("use_cache=False: the captured graph recomputes the whole sequence (no KV-cache object)")
        named["use_cache"] = False
    if named.get("past_key_values") is not None:
        raise CaptureError(
            "past_key_values was given: fxopt captures the full-sequence forward and does not take a "
            "Hugging Face cache object as input; pass only input_ids/attention_mask."
        )
    named.pop("past_key_values", None)
    return named


def _dim_ranges(model, dims: dict[str, tuple[int, int]] | None, dim_axes: dict) -> dict[str, tuple[int, int]]:
    ranges = dict(DEFAULT_DIM_RANGES)
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(max_pos, int) and max_pos > 1:
        ranges["seq"] = (ranges["seq"][0], max_pos)
    named_in_axes = {name for axes in dim_axes.values() for name in axes.values()}
    for name in (dims or {}):
        if name not in ranges and name not in named_in_axes:
            raise CaptureError(f"dims names {name!r}, which no input has: name its axis in dim_axes= "
                               f"(e.g. dim_axes={{'past': {{2: {name!r}}}}}), or use one of {sorted(ranges)}.")
    missing = sorted(named_in_axes - set(ranges) - set(dims or {}))
    if missing:
        raise CaptureError(f"dim_axes names the dimension(s) {missing} without a range: give "
                           f"dims={{{missing[0]!r}: (min, max)}}.")
    for name, rng in (dims or {}).items():
        lo, hi = rng
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise CaptureError(f"dims[{name!r}]={rng!r} is not a range (min, max) with 1 <= min <= max.")
        ranges[name] = (lo, hi)
    return ranges


def _axes_of_inputs(named: dict, has_seq: bool, dim_axes: dict) -> dict[str, dict[int, str]]:
    """Which axis of each input is which named dimension: ``dim_axes`` where given, else dim 0 is ``batch`` and
    (with ``has_seq``) dim 1 is ``seq`` wherever they equal the first input's sizes."""
    first = next(v for v in named.values() if isinstance(v, torch.Tensor))
    batch = int(first.shape[0]) if first.dim() >= 1 else None
    seq = int(first.shape[1]) if has_seq and first.dim() >= 2 else None
    axes: dict[str, dict[int, str]] = {}
    for key, value in named.items():
        if key in dim_axes:
            axes[key] = dict(dim_axes[key])
            continue
        if not isinstance(value, torch.Tensor):
            continue
        entry = {}
        if batch is not None and value.dim() >= 1 and value.shape[0] == batch:
            entry[0] = "batch"
        if seq is not None and value.dim() >= 2 and value.shape[1] == seq:
            entry[1] = "seq"
        axes[key] = entry
    return axes


def _tensor_leaves(value) -> list[torch.Tensor]:
    return [v for v in pytree.tree_leaves(value) if isinstance(v, torch.Tensor)]


def _example_sizes(named: dict, axes: dict[str, dict[int, str]]) -> dict[str, int]:
    """The sizes the dynamic dimensions have in the user's example (before any widening for tracing); two
    inputs that disagree on a named dimension are an error."""
    sizes: dict[str, tuple[int, str]] = {}
    for key, entry in axes.items():
        for leaf in _tensor_leaves(named[key]):
            for axis, name in entry.items():
                if axis >= leaf.dim():
                    raise CaptureError(f"dim_axes gives input {key!r} an axis {axis} ({name}), but it has "
                                       f"{leaf.dim()} dimensions {tuple(leaf.shape)}")
                size = int(leaf.shape[axis])
                seen = sizes.setdefault(name, (size, key))
                if seen[0] != size:
                    raise CaptureError(f"inputs {seen[1]!r} and {key!r} disagree on the dimension {name!r}: "
                                       f"{seen[0]} vs {size}")
    return {name: size for name, (size, _) in sizes.items()}


def _spec_leaves(spec, value) -> list:
    """The dynamic-shape entry of every leaf of one input (a list spec per leaf, or one dict for all)."""
    leaves = pytree.tree_leaves(value)
    if isinstance(spec, (list, tuple)):
        return list(spec)
    return [spec if isinstance(leaf, torch.Tensor) else None for leaf in leaves]


def _dynamic_spec(named: dict, ranges, dynamic: bool, sizes: dict[str, int], axes: dict[str, dict[int, str]], *,
                  notes: list[str]):
    """Build export's ``dynamic_shapes`` for ``named`` and return it with (possibly widened) examples.

    Export specializes a size-1 dimension to 1, so an example batch of 1 is repeated to 2 for tracing
    only (the compiled code still accepts batch 1). Any other dimension must be at least 2 in the example.
    """
    if not dynamic:
        return None, named
    for name, size in sizes.items():
        lo, hi = ranges[name]
        if not lo <= size <= hi and size != 1:
            raise CaptureError(f"the example's {name} size {size} lies outside dims[{name!r}]=({lo}, {hi}).")
    dims = {name: Dim(name, min=ranges[name][0], max=ranges[name][1]) for name in sizes}
    spec: dict[str, Any] = {}
    for key, value in named.items():
        entry = {axis: dims[name] for axis, name in axes.get(key, {}).items()} or None
        if isinstance(value, torch.Tensor):
            spec[key] = entry
        elif isinstance(value, (list, tuple)) and key in axes:
            spec[key] = type(value)(entry if isinstance(v, torch.Tensor) else None for v in value)
        else:
            spec[key] = None
    if sizes.get("batch") == 1:
        def widen(v, entry):
            if not isinstance(v, torch.Tensor) or not entry:
                return v
            axis = next((a for a, d in entry.items() if d.__name__ == "batch"), None)
            return v if axis is None else v.repeat_interleave(2, dim=axis)

        named = {k: (type(v)(widen(x, e) for x, e in zip(v, spec[k])) if isinstance(spec[k], (list, tuple))
                     else widen(v, spec[k])) for k, v in named.items()}
        notes.append("the example batch of 1 was repeated to 2 for tracing, so that batch stays dynamic")
    for name, size in sizes.items():
        if size == 1 and name != "batch":
            raise CaptureError(
                f"the example's {name} has size 1, which torch.export would specialize; give an example of "
                f"at least 2 (the compiled model still accepts sizes down to dims[{name!r}][0]).")
    return spec, named


def _flat_graph_module(exported: torch.export.ExportedProgram) -> torch.fx.GraphModule:
    """Unlift parameters into ``get_attr`` nodes and strip export's pytree calling convention."""
    gm = exported.module()
    graph = gm.graph
    for node in list(graph.find_nodes(op="call_module")):
        if node.target == "_guards_fn" and not node.users:
            graph.erase_node(node)
            delattr(gm, "_guards_fn")
    graph._codegen = torch.fx.graph.CodeGen()
    output = graph.find_nodes(op="output")[0]
    flat_outputs = pytree.tree_leaves(output.args[0])
    output.args = (tuple(flat_outputs),)
    gm._forward_pre_hooks.clear()  # export's input checks; CompiledModule checks inputs itself
    for attr in ("_in_spec", "_out_spec"):
        if hasattr(gm, attr):
            delattr(gm, attr)
    gm.recompile()
    return gm


def _symbol_names(placeholders, leaf_specs) -> dict[str, str]:
    """Map export's shape symbols (``s18``) to the names fxopt gave them (``batch``, ``seq``)."""
    names: dict[str, str] = {}
    for node, entry in zip(placeholders, leaf_specs):
        fake = node.meta.get("val")
        if not isinstance(entry, dict) or not isinstance(fake, torch.Tensor):
            continue
        for index, dim in entry.items():
            size = fake.shape[index]
            if isinstance(size, torch.SymInt):
                names[str(size.node.expr)] = dim.__name__
    return names


def _path_name(path) -> str:
    """``(MappingKey('input_ids'),)`` → ``input_ids``; nested leaves become ``past.0``."""
    parts = []
    for key in path:
        parts.append(str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))))
    return ".".join(parts)


def _drop_constant_placeholders(gm: torch.fx.GraphModule) -> None:
    for node in list(gm.graph.find_nodes(op="placeholder")):
        if not isinstance(node.meta.get("val"), torch.Tensor):
            if node.users:
                raise CaptureError(f"the non-tensor input {node.target!r} is used inside the graph; fxopt "
                                   "only supports non-tensor inputs that export turns into constants.")
            gm.graph.erase_node(node)
    gm.recompile()


def _drop_unused(gm: torch.fx.GraphModule) -> None:
    """Export leaves some results unused (buffers read only by eager-only code, stray unsqueezes)."""
    gm.graph.eliminate_dead_code()
    for node in list(gm.graph.find_nodes(op="get_attr")):
        if not node.users:
            gm.graph.erase_node(node)
    gm.recompile()


def _input_slots(paths, flat, gm, sym_names) -> list[InputSlot]:
    fakes = iter(n.meta["val"] for n in gm.graph.find_nodes(op="placeholder"))
    slots = []
    for path, value in zip(paths, flat):
        if isinstance(value, torch.Tensor):
            fake = next(fakes)
            shape = tuple(
                sym_names.get(str(s.node.expr), str(s.node.expr)) if isinstance(s, torch.SymInt) else int(s)
                for s in fake.shape
            )
            slots.append(InputSlot(path, True, value.dtype, shape))
        else:
            slots.append(InputSlot(path, False, value=value))
    return slots


def _output_signature(gm: torch.fx.GraphModule) -> list[tuple[str, int] | None]:
    """(dtype, rank) of every graph output: the structure the verifier keeps passes from changing."""
    out = gm.graph.find_nodes(op="output")[0]
    sig = []
    for arg in out.args[0]:
        val = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
        sig.append((str(val.dtype), val.dim()) if isinstance(val, torch.Tensor) else None)
    return sig


_HINTS = [
    (("Constraints violated", "specialized", "not in range", "ConstraintViolation"),
     "a dimension fxopt made dynamic must be static for this model (or a range is too wide): pass "
     "dims={'batch': (lo, hi), 'seq': (lo, hi)} with a narrower range, or dynamic=False."),
    (("data-dependent", "GuardOnDataDependent", "DataDependent"),
     "the model branches on tensor *values* (data-dependent control flow); make that branch depend on "
     "shapes only, or use torch.cond."),
    (("not a known type", "register a pytree", "pytree"),
     "the model takes or returns a Python object that is not a pytree of tensors; return tensors, tuples, "
     "dicts or dataclasses registered with torch.utils._pytree."),
    (("Unsupported", "not supported", "NotImplementedError"),
     "an operation inside the model is not supported by torch.export; see the frame named above."),
]


def _explain_export_failure(model, error: Exception, ranges) -> str:
    text = f"{type(error).__name__}: {error}"
    first_line = next((l for l in str(error).splitlines() if l.strip()), type(error).__name__)
    frame = _innermost_model_frame(error)
    hint = next((h for keys, h in _HINTS if any(k in text for k in keys)),
                "run torch.export.export(model, args, kwargs, strict=False) yourself to see the full report.")
    where = f"\n  at {frame}" if frame else ""
    return (f"could not capture {type(model).__name__} with torch.export: {type(error).__name__}: "
            f"{first_line[:400]}{where}\n  what to do: {hint}\n  (FXOPT_FULL_ERRORS=1 shows torch.export's own "
            "report and traceback)")


def _innermost_model_frame(error: Exception) -> str | None:
    """The last traceback frame outside torch (the model's own code line that failed)."""
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        if "/torch/" not in frame.filename and "/fxopt/" not in frame.filename and "/ir/" not in frame.filename:
            return f"{frame.filename}:{frame.lineno} in {frame.name}: {frame.line}"
    return None
