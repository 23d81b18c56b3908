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

from fxopt.pass_options import convert, option_hints


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
    "why didn't this fuse" that end up in the compile report and the debug output. A long pass reports how it
    is getting on with ``ctx.progress("…")``: a live line with ``verbose=True`` (the ``Timing`` instrument
    sets ``progress_stream``), nothing otherwise.
    """

    example_inputs: list[torch.Tensor] = field(default_factory=list)
    options: Any = None
    diagnostics: list[str] = field(default_factory=list)
    progress_stream: Any = None  # a text stream for live progress lines (None: silent)
    pass_name: str = ""

    def note(self, message: str) -> None:
        self.diagnostics.append(message)

    def progress(self, message: str) -> None:
        """One live progress line (``[fxopt]     <pass>: message``), where progress is shown."""
        if self.progress_stream is not None:
            print(f"[fxopt]     {self.pass_name}: {message}", file=self.progress_stream, flush=True)


#: Stages of the pipeline. ``portable`` passes rewrite the graph the same way on every machine (an artifact can
#: keep their result); ``target`` passes make choices measured on this machine (GEMM library, kernels), are run
#: after every portable pass, and are recorded with the machine key they used.
STAGES = ("portable", "target")

#: A pass's numerics contract (``GraphPass.tolerance``): ``"exact"`` keeps the outputs within the pipeline's
#: ``numeric_rtol`` of the reference; a float is a lossy pass's own bound on the relative change it may make
#: to the outputs of the graph before it; ``"budget"`` defers a lossy pass to the accuracy budget measured end
#: to end (the per-pass check then only requires finite outputs). After a lossy pass the numeric check takes
#: its outputs as the new reference, so later exact passes are held to the usual tolerance.
TOLERANCES = ("exact", "budget")


@dataclass(frozen=True)
class GraphPass:
    """A pass: a name, a function, an options dataclass, an optimization level, ordering constraints, the
    stage it belongs to and its numerics contract."""

    name: str
    fn: Callable[[torch.fx.GraphModule, PassContext], PassResult | None]
    options: type | None = None
    level: int = 1
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    stage: str = "portable"
    tolerance: float | str = "exact"

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"pass {self.name!r}: stage must be one of {STAGES}, got {self.stage!r}")
        if not (self.tolerance in TOLERANCES or (isinstance(self.tolerance, float) and self.tolerance > 0)):
            raise ValueError(f"pass {self.name!r}: tolerance must be 'exact', 'budget' or a positive float, "
                             f"got {self.tolerance!r}")

    @property
    def lossy(self) -> bool:
        return self.tolerance != "exact"

    @property
    def summary(self) -> str:
        doc = (self.fn.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def default_options(self):
        return self.options() if self.options is not None else None

    def make_options(self, **values):
        """Options from keyword values; strings and lists of strings (from text specs) are converted to each
        field's type hint (see :mod:`fxopt.pass_options`)."""
        if self.options is None:
            if values:
                raise TypeError(f"pass {self.name!r} takes no options, got {sorted(values)}")
            return None
        hints = option_hints(self.options)
        unknown = set(values) - set(hints)
        if unknown:
            raise TypeError(f"pass {self.name!r} has no option {', '.join(sorted(unknown))}; "
                            f"its options are {', '.join(hints) or 'none'}")
        converted = {k: convert(v, hints[k], where=f"option {k!r}") for k, v in values.items()}
        return self.options(**converted)

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
        """Run the pass alone (no instruments); returns its :class:`PassResult`."""
        ctx = ctx or PassContext(options=self.default_options())
        if ctx.options is None:
            ctx.options = self.default_options()
        result = self.fn(gm, ctx)
        return result if isinstance(result, PassResult) else PassResult()


def graph_pass(name: str, *, options: type | None = None, level: int = 1,
               after: tuple[str, ...] = (), before: tuple[str, ...] = (), stage: str = "portable",
               tolerance: float | str = "exact"):
    """Decorator: turn ``fn(gm, ctx) -> PassResult | None`` into a :class:`GraphPass`.

    ``level`` is the lowest optimization level that runs the pass by default (``opt_level=0`` runs none);
    ``after``/``before`` name passes this one must follow or precede when both are in a pipeline;
    ``stage`` is ``"portable"`` or ``"target"`` (machine-specific choices, see :data:`STAGES`);
    ``tolerance`` is the numerics contract (see :data:`TOLERANCES`).
    """
    if options is not None and not dataclasses.is_dataclass(options):
        raise TypeError(f"options of pass {name!r} must be a dataclass type, got {options!r}")

    def wrap(fn) -> GraphPass:
        return GraphPass(name=name, fn=fn, options=options, level=level, after=tuple(after), before=tuple(before),
                         stage=stage, tolerance=tolerance)

    return wrap
