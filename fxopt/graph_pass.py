"""What a pass is: a named function ``(graph_module, ctx) -> PassResult`` with options and a place.

A pass is a plain function wrapped by :func:`graph_pass`; nothing is registered anywhere at import time.
Pipelines are built from pass objects (or names looked up in :mod:`fxopt.registry`)::

    @graph_pass("remove-identity-views", after=("eliminate-dead-nodes",))
    def remove_identity_views(gm, ctx):
        ...
        return PassResult(stats={"removed": n})

The pass manager does not trust ``changed``: it fingerprints the printed graph before and after, and
raises :class:`fxopt.PassError` when a pass says "unchanged" but changed the graph.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class PassResult:
    """What one pass did. ``changed=None`` lets the pass manager find out from the graph itself."""

    changed: bool | None = None
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """What a pass may read besides the graph.

    ``example_inputs`` are real tensors in placeholder order (passes may run the graph on them);
    ``options`` is the pass's options dataclass instance; ``diagnostics`` collects lines such as
    "why didn't this fuse" that end up in the compile report and the debug output.
    """

    example_inputs: list[torch.Tensor] = field(default_factory=list)
    options: Any = None
    diagnostics: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        self.diagnostics.append(message)


@dataclass(frozen=True)
class GraphPass:
    """A pass: a name, a function, an options dataclass, an optimization level and ordering constraints."""

    name: str
    fn: Callable[[torch.fx.GraphModule, PassContext], PassResult | None]
    options: type | None = None
    level: int = 1
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        doc = (self.fn.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def default_options(self):
        return self.options() if self.options is not None else None

    def make_options(self, **values):
        """Options from keyword values (strings are converted to the field's type, for text specs)."""
        if self.options is None:
            if values:
                raise TypeError(f"pass {self.name!r} takes no options, got {sorted(values)}")
            return None
        fields = {f.name: f for f in dataclasses.fields(self.options)}
        unknown = set(values) - set(fields)
        if unknown:
            raise TypeError(f"pass {self.name!r} has no option {', '.join(sorted(unknown))}; "
                            f"its options are {', '.join(fields) or 'none'}")
        converted = {k: _convert(v, fields[k].type, self.options) for k, v in values.items()}
        return self.options(**converted)

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
        """Run the pass alone (no instruments); returns its :class:`PassResult`."""
        ctx = ctx or PassContext(options=self.default_options())
        if ctx.options is None:
            ctx.options = self.default_options()
        result = self.fn(gm, ctx)
        return result if isinstance(result, PassResult) else PassResult()


def graph_pass(name: str, *, options: type | None = None, level: int = 1,
               after: tuple[str, ...] = (), before: tuple[str, ...] = ()):
    """Decorator: turn ``fn(gm, ctx) -> PassResult | None`` into a :class:`GraphPass`.

    ``level`` is the lowest optimization level that runs the pass by default (``opt_level=0`` runs none);
    ``after``/``before`` name passes this one must follow or precede when both are in a pipeline.
    """
    if options is not None and not dataclasses.is_dataclass(options):
        raise TypeError(f"options of pass {name!r} must be a dataclass type, got {options!r}")

    def wrap(fn) -> GraphPass:
        return GraphPass(name=name, fn=fn, options=options, level=level, after=tuple(after), before=tuple(before))

    return wrap


def _convert(value, annotation, owner):
    if not isinstance(value, str):
        return value
    hint = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    hint = hint.split("|")[0].strip()
    if hint == "bool":
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{value!r} is not a boolean (use true/false)")
    if hint == "int":
        return int(value)
    if hint == "float":
        return float(value)
    return value
