"""Finding passes by name: fxopt's own (``fxopt.passes.BUILTIN_PASSES``) and third-party passes
published through the ``fxopt.passes`` entry-point group::

    # a third-party package's pyproject.toml
    [project.entry-points."fxopt.passes"]
    fuse-swiglu = "my_package.swiglu:fuse_swiglu"

Nothing is registered at import time; entry points are read when a name is first looked up.
"""
from __future__ import annotations

import difflib
from importlib import metadata

from fxopt.errors import PipelineSpecError
from fxopt.graph_pass import GraphPass

ENTRY_POINT_GROUP = "fxopt.passes"


def available_passes(*, include_plugins: bool = True) -> dict[str, GraphPass]:
    """Every pass known by name: fxopt's own first, then those from installed packages."""
    from fxopt.passes import BUILTIN_PASSES

    found = {p.name: p for p in BUILTIN_PASSES}
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
                raise PipelineSpecError(f"two passes are named {obj.name!r}: {ep.value} and fxopt's own")
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
