"""Helpers for testing passes: ``check_pass`` and FileCheck-style assertions on the printed graph.

    result = check_pass("fuse-rms-norm", model, x)
    assert result.stats["fuse-rms-norm"] == 2
    filecheck(result.after, '''
        CHECK: aten.rms_norm
        CHECK-NOT: aten.rsqrt
    ''')
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from fxopt.graph_pass import GraphPass, PassContext
from fxopt.ir.capture import capture
from fxopt.ir.printer import format_graph
from fxopt.ir.verifier import verify
from fxopt.pass_manager import relative_error
from fxopt.registry import get_pass


#: The passes that bring a captured graph to the form every other pass (and pattern) expects.
CANONICAL_FORM = ("eliminate-dead-nodes", "canonicalize")


class FileCheckError(AssertionError):
    """A CHECK line did not hold; the message shows the line and where the search was."""


@dataclass
class CheckResult:
    before: str
    after: str
    stats: dict[str, Any]
    changed: bool
    max_rel_error: float
    diagnostics: list[str]


def _as_module(fn_or_model) -> torch.nn.Module:
    if isinstance(fn_or_model, torch.nn.Module):
        return fn_or_model.eval()

    class Wrapped(torch.nn.Module):
        def forward(self, *args, **kwargs):
            return fn_or_model(*args, **kwargs)

    # Expose the function's own parameters, so inputs are named (and printed) as the function names them.
    params = list(inspect.signature(fn_or_model).parameters.values())
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    Wrapped.forward.__signature__ = inspect.Signature([self_param, *params])
    return Wrapped()


def check_pass(pass_or_name: GraphPass | str, fn_or_model: Callable | torch.nn.Module, *inputs,
               options=None, rtol: float = 1e-5, dynamic: bool = True, dims: dict | None = None,
               canonicalize: bool = True, **kwargs) -> CheckResult:
    """Capture ``fn_or_model`` on ``inputs``, verify, run the pass, verify again and check the outputs
    against eager within ``rtol``. Returns the printed graph before/after, the stats and the error.

    ``dynamic``/``dims`` are :func:`fxopt.compile`'s (``dims={"seq": (1, 64)}`` makes dim 1 dynamic too).
    ``canonicalize`` first runs the passes of :data:`CANONICAL_FORM` (as the default pipeline does before
    any other pass), so patterns see graphs without no-op casts, views and dropout, with one spelling per op."""
    p = get_pass(pass_or_name) if isinstance(pass_or_name, str) else pass_or_name
    model = _as_module(fn_or_model)
    captured = capture(model, inputs, kwargs, dynamic=dynamic, dims=dims)
    gm = captured.graph_module
    if canonicalize:
        for name in CANONICAL_FORM:
            if p.name != name:
                get_pass(name)(gm)
    verify(gm, context="before the pass")
    before = format_graph(gm)
    ctx = PassContext(example_inputs=captured.example_inputs,
                      options=options if options is not None else p.default_options())
    result = p(gm, ctx)
    verify(gm, context=f"after pass {p.name!r}", deep=True)  # also re-propagates shapes: no stale metadata
    after = format_graph(gm)
    # Eager runs on exactly the inputs the graph sees (capture may widen a batch of 1 to 2 for tracing).
    tensors = iter(captured.example_inputs)
    leaves = [next(tensors) if slot.is_tensor else slot.value for slot in captured.slots]
    _, named = torch.utils._pytree.tree_unflatten(leaves, captured.in_spec)
    with torch.no_grad():
        expected = model(**named)
        actual = gm(*captured.example_inputs)
    expected_flat = [t for t in torch.utils._pytree.tree_leaves(expected) if isinstance(t, torch.Tensor)]
    errors = [relative_error(a, e) for a, e in zip(actual, expected_flat)]
    worst = max(errors, default=0.0)
    if worst > rtol:
        raise AssertionError(f"pass {p.name!r} changed the outputs by {worst:.3g} relative (rtol {rtol:g})\n"
                             f"after:\n{after}")
    return CheckResult(before, after, dict(result.stats), before != after, worst, ctx.diagnostics)


def filecheck(text: str, checks: str) -> None:
    """LLVM FileCheck's core on ``text``: ``CHECK:`` finds a line at or after the last match,
    ``CHECK-NEXT:`` must be the very next line, ``CHECK-NOT:`` must not appear before the next match
    (or the end). Matching is substring matching."""
    lines = text.splitlines()
    pos = 0  # the line after the last match
    pending_not: list[str] = []

    def fail(directive, pattern, where):
        window = "\n".join(lines[max(0, where - 2): where + 3])
        raise FileCheckError(f"{directive}: {pattern!r} failed near line {where + 1}:\n{window}")

    for raw in checks.strip().splitlines():
        raw = raw.strip()
        if not raw:
            continue
        directive, _, pattern = raw.partition(":")
        pattern = pattern.strip()
        if directive == "CHECK-NOT":
            pending_not.append(pattern)
            continue
        if directive == "CHECK":
            found = next((i for i in range(pos, len(lines)) if pattern in lines[i]), None)
        elif directive == "CHECK-NEXT":
            found = pos if pos < len(lines) and pattern in lines[pos] else None
        else:
            raise ValueError(f"unknown FileCheck directive {directive!r} (use CHECK, CHECK-NEXT, CHECK-NOT)")
        if found is None:
            fail(directive, pattern, pos)
        for bad in pending_not:
            hit = next((i for i in range(pos, found) if bad in lines[i]), None)
            if hit is not None:
                fail("CHECK-NOT", bad, hit)
        pending_not = []
        pos = found + 1
    for bad in pending_not:
        hit = next((i for i in range(pos, len(lines)) if bad in lines[i]), None)
        if hit is not None:
            fail("CHECK-NOT", bad, hit)
