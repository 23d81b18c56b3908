"""The default pipeline, top to bottom, and the text spec that names a custom one.

Spec syntax (API and CLI alike)::

    eliminate-dead-nodes,fold-constants,insert-quant{mode=int8,skip=lm_head}

Each entry is a pass name, optionally with ``{option=value,...}`` for the pass's options dataclass.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from fxopt.errors import PipelineSpecError
from fxopt.graph_pass import GraphPass
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
    "fuse-sibling-linears",            # q/k/v and gate/up projections → one linear + split
    "select-gemm-backend",             # each linear on the GEMM library measured fastest here (oneDNN or MKL)
)

_ENTRY = re.compile(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def parse_spec(spec: str) -> list[tuple[str, dict[str, str]]]:
    """``"a,b{x=1,y=two}"`` → ``[("a", {}), ("b", {"x": "1", "y": "two"})]``."""
    entries: list[tuple[str, dict[str, str]]] = []
    pos = 0
    spec = spec.strip()
    while pos < len(spec):
        m = _ENTRY.match(spec, pos)
        if not m or m.end() == pos:
            raise PipelineSpecError(f"cannot parse pipeline spec {spec!r} at position {pos}: "
                                    f"{spec[pos:pos + 20]!r} (expected name or name{{key=value,...}})")
        name, body = m.group(1), m.group(2)
        options: dict[str, str] = {}
        for item in filter(None, (s.strip() for s in (body or "").split(","))):
            if "=" not in item:
                raise PipelineSpecError(f"option {item!r} of pass {name!r} is not key=value")
            key, value = (s.strip() for s in item.split("=", 1))
            options[key] = value
        entries.append((name, options))
        pos = m.end()
    return entries


def build_pipeline(
    passes: str | Sequence[str | GraphPass | tuple[GraphPass, Any]] | None = None,
    *,
    opt_level: int = 1,
    disable: Sequence[str] = (),
    extra: dict[str, GraphPass] | None = None,
) -> list[tuple[GraphPass, Any]]:
    """Resolve a pipeline to (pass, options) pairs.

    ``passes=None`` takes :data:`DEFAULT_PIPELINE` filtered by ``opt_level`` (a pass runs when its
    ``level`` ≤ ``opt_level``); a string is a spec; a list may mix names, passes and (pass, options).
    ``disable`` removes passes by name; naming a pass that is not in the pipeline is an error.
    """
    resolved: list[tuple[GraphPass, Any]] = []
    if passes is None:
        for name in DEFAULT_PIPELINE:
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
