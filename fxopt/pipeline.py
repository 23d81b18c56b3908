"""The default pipeline, top to bottom, and the text spec that names a custom one.

Spec syntax (API and CLI alike)::

    eliminate-dead-nodes,fold-constants,select-gemm-backend{margin=0.05,refresh=true}
    insert-quant{mode=int8,skip=[lm_head,down_proj]}

Each entry is a pass name, optionally with ``{option=value,...}`` for the pass's options dataclass; a value
is a bare word, a quoted string or a ``[list, of, values]``, converted by the option's type hint
(:mod:`fxopt.pass_options`). :func:`format_spec` prints a resolved pipeline back as a spec.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from fxopt.errors import PipelineSpecError
from fxopt.graph_pass import STAGES, GraphPass
from fxopt.pass_options import changed_options, format_value
from fxopt.registry import get_pass

# The default pipeline, in the order it runs. Each step names a pass of the library in passes/; a pass runs
# when its level is at most fxopt.compile's opt_level (default 1).
DEFAULT_PIPELINE: tuple[str, ...] = (
    "eliminate-dead-nodes",            # dropout, export's assertions, no-op views/casts, unused nodes
    "canonicalize",                    # one spelling per op (transpose/softmax dims), so patterns match
    "eliminate-common-subexpressions",  # compute each pure expression once
    "fold-constants",                  # precompute what depends only on weights and literals
    "fold-position-tables",            # ... and on arange(seq): rotary cos/sin, position embeddings
    "fuse-layer-norm",                 # decomposed LayerNorm (DeBERTa, Cohere) → aten.layer_norm
    "fuse-rms-norm",                   # decomposed RMSNorm → aten.rms_norm (after: a LayerNorm contains one)
    "fuse-attention",                  # softmax(QKᵀ·scale + mask)·V → scaled_dot_product_attention
    "single-query-attention",          # ... but one query (a decode step): fxopt's kernel on the K/V heads
    "fuse-sibling-linears",            # q/k/v and gate/up projections → one linear + split
    "grouped-query-attention",         # attention reads each K/V head in place for its query heads (no repeat)
    "select-gemm-backend",             # each linear on the GEMM library measured fastest here (oneDNN or MKL)
    "pack-linears-bf16",               # bf16 linears on oneDNN's packed weight, bias and GELU in its epilogue
    "native-attention",                # bf16 attention on fxopt's AMX kernel, where the CPU has AMX
)



def default_pipeline() -> tuple[str, ...]:
    """:data:`DEFAULT_PIPELINE` with the passes registered in this process (:func:`fxopt.register_pass`) and
    the entry-point passes that declare an ordering, each placed where its constraints allow: right after the
    last pass it must follow, else right before the first it must precede, else at the end of its stage."""
    from fxopt.registry import extra_placements

    names = list(DEFAULT_PIPELINE)
    for p, after, before in extra_placements():
        if p.name in names:
            continue
        names.insert(_position(names, p, after, before), p.name)
    return tuple(names)


def _position(names: list[str], p: GraphPass, after: Sequence[str], before: Sequence[str]) -> int:
    lo = max((names.index(a) + 1 for a in after if a in names), default=None)
    hi = min((names.index(b) for b in before if b in names), default=None)
    if lo is not None and hi is not None and lo > hi:
        raise PipelineSpecError(f"pass {p.name!r} cannot be placed in the default pipeline: it must run after "
                                f"{list(after)} and before {list(before)}, which the pipeline orders the other way")
    if lo is not None:
        return lo
    if hi is not None:
        return hi
    if p.stage == "portable":
        return next((i for i, n in enumerate(names) if get_pass(n).stage != "portable"), len(names))
    return len(names)


class _SpecReader:
    """A small recursive-descent reader of the spec syntax, with errors that say what is missing where."""

    def __init__(self, spec: str):
        self.text = spec
        self.pos = 0

    def fail(self, message: str, at: int | None = None) -> PipelineSpecError:
        at = self.pos if at is None else at
        pointer = f"\n  {self.text}\n  {' ' * at}^"
        return PipelineSpecError(f"pipeline spec, position {at}: {message}{pointer}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def word(self, what: str, pattern: re.Pattern | None = None) -> str:
        self.skip_space()
        m = (pattern or _WORD).match(self.text, self.pos)
        if not m:
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "the end of the spec"
            raise self.fail(f"expected {what}, found {found}")
        self.pos = m.end()
        return m.group(0).strip()

    def entries(self) -> list[tuple[str, dict[str, Any]]]:
        entries = []
        while True:
            name = self.word("a pass name", _NAME)
            options: dict[str, Any] = {}
            if self.peek() == "{":
                opened = self.pos
                self.pos += 1
                options = self.options(name, opened)
            entries.append((name, options))
            nxt = self.peek()
            if nxt == "":
                return entries
            if nxt != ",":
                raise self.fail(f"expected ',' between passes after {name!r}, found {nxt!r}")
            self.pos += 1

    def options(self, name: str, opened: int) -> dict[str, Any]:
        options: dict[str, Any] = {}
        while True:
            if self.peek() == "}":
                self.pos += 1
                return options
            if self.peek() == "":
                raise self.fail(f"the options of pass {name!r} opened with '{{' here are never closed: add '}}'",
                                opened)
            key = self.word(f"an option name of pass {name!r}", _NAME)
            if self.peek() != "=":
                raise self.fail(f"option {key!r} of pass {name!r} needs a value: {key}=VALUE")
            self.pos += 1
            if key in options:
                raise self.fail(f"option {key!r} of pass {name!r} is given twice")
            options[key] = self.value(f"the value of {name}.{key}")
            nxt = self.peek()
            if nxt == ",":
                self.pos += 1
            elif nxt != "}":
                if nxt == "":
                    raise self.fail(f"the options of pass {name!r} opened with '{{' here are never closed: "
                                    "add '}'", opened)
                raise self.fail(f"expected ',' or '}}' after option {key!r} of pass {name!r}, found {nxt!r}")

    def value(self, what: str):
        c = self.peek()
        if c == "[":
            opened = self.pos
            self.pos += 1
            items = []
            while self.peek() != "]":
                if self.peek() == "":
                    raise self.fail(f"the list in {what} opened with '[' here is never closed: add ']'", opened)
                items.append(self.value(what))
                if self.peek() == ",":
                    self.pos += 1
                elif self.peek() not in ("]", ""):
                    raise self.fail(f"expected ',' or ']' in the list of {what}, found {self.peek()!r}")
            self.pos += 1
            return items
        if c in ("'", '"'):
            start = self.pos
            self.pos += 1
            out = []
            while self.pos < len(self.text) and self.text[self.pos] != c:
                if self.text[self.pos] == "\\" and self.pos + 1 < len(self.text):
                    self.pos += 1
                out.append(self.text[self.pos])
                self.pos += 1
            if self.pos >= len(self.text):
                raise self.fail(f"the quoted string in {what} is never closed: add {c}", start)
            self.pos += 1
            return "".join(out)
        return self.word(what)


_NAME = re.compile(r"[A-Za-z0-9_.\-:]+")
_WORD = re.compile(r"[^,{}\[\]=\s'\"][^,{}\[\]=]*")


def parse_spec(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """``"a,b{x=1,y=[p,q]}"`` → ``[("a", {}), ("b", {"x": "1", "y": ["p", "q"]})]``.

    Values stay strings (lists of strings for ``[...]``); the pass's option types convert them
    (:meth:`GraphPass.make_options`). Quote a value that contains ``, { } [ ] =``: ``name="a,b"``.
    """
    if not spec.strip():
        raise PipelineSpecError("the pipeline spec is empty; name at least one pass")
    return _SpecReader(spec).entries()


def format_spec(pipeline: Sequence[tuple[GraphPass, Any]]) -> str:
    """The spec text of a resolved pipeline: every pass, with the options that differ from their defaults.
    ``build_pipeline(format_spec(p))`` gives the same passes with equal options."""
    parts = []
    for p, options in pipeline:
        changed = changed_options(options)
        body = ",".join(f"{k}={format_value(v)}" for k, v in changed.items())
        parts.append(f"{p.name}{{{body}}}" if body else p.name)
    return ",".join(parts)


def split_stages(pipeline: Sequence[tuple[GraphPass, Any]]) -> dict[str, list[tuple[GraphPass, Any]]]:
    """The pipeline's passes by stage, each in pipeline order: ``{"portable": [...], "target": [...]}``.
    Target passes always run after every portable one."""
    return {stage: [(p, o) for p, o in pipeline if p.stage == stage] for stage in STAGES}


def build_pipeline(
    passes: str | Sequence[str | GraphPass | tuple[GraphPass, Any]] | None = None,
    *,
    opt_level: int = 1,
    disable: Sequence[str] = (),
    extra: dict[str, GraphPass] | None = None,
) -> list[tuple[GraphPass, Any]]:
    """Resolve a pipeline to (pass, options) pairs.

    ``passes=None`` takes :func:`default_pipeline` filtered by ``opt_level`` (a pass runs when its
    ``level`` ≤ ``opt_level``); a string is a spec; a list may mix names, passes and (pass, options).
    ``disable`` removes passes by name; naming a pass that is not in the pipeline is an error.
    """
    resolved: list[tuple[GraphPass, Any]] = []
    if passes is None:
        for name in default_pipeline():
            p = get_pass(name, extra)
            if p.level <= opt_level:
                resolved.append((p, p.default_options()))
    elif isinstance(passes, str):
        for name, options in parse_spec(passes):
            p = get_pass(name, extra)
            try:
                resolved.append((p, p.make_options(**options)))
            except (TypeError, ValueError) as e:
                raise PipelineSpecError(f"bad options for pass {name!r}: {e}") from None
    else:
        for item in passes:
            if isinstance(item, str):
                p = get_pass(item, extra)
                resolved.append((p, p.default_options()))
            elif isinstance(item, GraphPass):
                resolved.append((item, item.default_options()))
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], GraphPass):
                resolved.append(item)
            else:
                raise PipelineSpecError(f"pipeline entries must be pass names, GraphPass objects or "
                                        f"(GraphPass, options) pairs; got {item!r}")
    names = {p.name for p, _ in resolved}
    unknown = [d for d in disable if d not in names]
    if unknown:
        raise PipelineSpecError(f"disable names passes that are not in the pipeline: {unknown}; "
                                f"the pipeline has {[p.name for p, _ in resolved]}")
    return [(p, o) for p, o in resolved if p.name not in set(disable)]


def with_options(pipeline: Sequence[tuple[GraphPass, Any]], name: str, **changes) -> list[tuple[GraphPass, Any]]:
    """``pipeline`` with ``changes`` made to the options of the pass ``name`` (unchanged where it is absent)."""
    import dataclasses

    return [(p, dataclasses.replace(o, **changes) if p.name == name else o) for p, o in pipeline]
