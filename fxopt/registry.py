"""Finding passes by name: fxopt's own (``fxopt.passes.BUILTIN_PASSES``), passes registered in this process
with :func:`register_pass`, and third-party passes published through the ``fxopt.passes`` entry-point group::

    # a third-party package's pyproject.toml
    [project.entry-points."fxopt.passes"]
    fuse-swiglu = "my_package.swiglu:fuse_swiglu"

Where an extra pass lands in the default pipeline (:func:`fxopt.pipeline.default_pipeline`):

* ``register_pass(p, after="fuse-attention")`` puts ``p`` right after ``fuse-attention`` (and after every pass
  in ``p.after``, before every pass in ``p.before``); with no ordering at all, at the end of its stage;
  ``register_pass(p, default=False)`` only makes the name known (for specs and ``passes=[...]``);
* an entry-point pass joins the default pipeline when it declares its ordering (``after=``/``before=`` on
  ``@graph_pass``, ``@node_rewrite`` or ``pattern_pass``, which defaults to after the canonical form) and is
  known by name only otherwise. ``fxopt passes`` shows which passes are in the default pipeline.

Nothing is registered at import time; entry points are read when a name is first looked up.
"""
from __future__ import annotations

import difflib
from importlib import metadata
from typing import Sequence

from fxopt.errors import PipelineSpecError
from fxopt.graph_pass import GraphPass

ENTRY_POINT_GROUP = "fxopt.passes"

#: Passes registered in this process, by name, with the ordering that places them in the default pipeline
#: (``None``: known by name only).
_REGISTERED: dict[str, tuple[GraphPass, tuple[tuple[str, ...], tuple[str, ...]] | None]] = {}


def register_pass(p: GraphPass, *, after: str | Sequence[str] = (), before: str | Sequence[str] = (),
                  default: bool = True) -> GraphPass:
    """Make ``p`` known by name in this process and, with ``default``, part of the default pipeline, placed
    after ``after`` and before ``before`` (names; added to the pass's own constraints). Returns ``p``."""
    if not isinstance(p, GraphPass):
        raise PipelineSpecError(f"register_pass takes a GraphPass, got {type(p).__name__}: decorate it with "
                                "@fxopt.graph_pass, @fxopt.node_rewrite or make it with fxopt.pattern_pass")
    after = (after,) if isinstance(after, str) else tuple(after)
    before = (before,) if isinstance(before, str) else tuple(before)
    known = available_passes()
    taken = known.get(p.name)
    if taken is not None and taken is not p and p.name not in _REGISTERED:
        raise PipelineSpecError(f"a pass named {p.name!r} already exists; give yours another name")
    for other in (*after, *before):
        if other not in known and other != p.name:
            get_pass(other)  # raises with the closest names
    _REGISTERED[p.name] = (p, (tuple(dict.fromkeys((*p.after, *after))), tuple(dict.fromkeys((*p.before, *before))))
                           if default else None)
    return p


def unregister_pass(name: str) -> None:
    """Forget a pass registered with :func:`register_pass` (a no-op for other names)."""
    _REGISTERED.pop(name, None)


def extra_placements() -> list[tuple[GraphPass, tuple[str, ...], tuple[str, ...]]]:
    """The passes beyond fxopt's own that join the default pipeline, with their after/before constraints:
    registered ones first (in registration order), then entry-point passes that declare an ordering."""
    from fxopt.passes import BUILTIN_PASSES

    builtin = {p.name for p in BUILTIN_PASSES}
    out = [(p, *placement) for p, placement in _REGISTERED.values() if placement is not None]
    for name, p in available_passes().items():
        if name not in builtin and name not in _REGISTERED and (p.after or p.before):
            out.append((p, p.after, p.before))
    return out


def available_passes(*, include_plugins: bool = True) -> dict[str, GraphPass]:
    """Every pass known by name: fxopt's own first, then those from installed packages."""
    from fxopt.passes import BUILTIN_PASSES

    found = {p.name: p for p in BUILTIN_PASSES}
    found.update({name: p for name, (p, _) in _REGISTERED.items()})
    if include_plugins:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except Exception as e:  # noqa: BLE001 - name the broken plugin instead of failing obscurely
                raise PipelineSpecError(f"the fxopt pass plugin {ep.name!r} ({ep.value}) failed to load: {e}") from e
            if not isinstance(obj, GraphPass):
                raise PipelineSpecError(f"the fxopt pass plugin {ep.name!r} ({ep.value}) is not a GraphPass; "
                                        "decorate it with @fxopt.graph_pass, @fxopt.node_rewrite or fxopt.pattern_pass")
            if obj.name in found and found[obj.name] is not obj:
                raise PipelineSpecError(f"two passes are named {obj.name!r}: {ep.value} and another (fxopt's own "
                                        "or one registered in this process)")
            found[obj.name] = obj
    return found


def get_pass(name: str, extra: dict[str, GraphPass] | None = None) -> GraphPass:
    """The pass called ``name``; an unknown name raises with the closest known names."""
    passes = dict(extra or {})
    if name not in passes:
        passes = {**available_passes(), **passes}
    if name in passes:
        return passes[name]
    close = difflib.get_close_matches(name, list(passes), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise PipelineSpecError(f"unknown pass {name!r}{hint} (known: {', '.join(sorted(passes))})")
