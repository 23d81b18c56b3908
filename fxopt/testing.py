"""Helpers for testing passes: ``check_pass`` and FileCheck-style assertions on the printed graph.

    result = check_pass("fuse-rms-norm", model, x)
    assert result.stats["fuse-rms-norm"] == 2
    filecheck(result.after, '''
        CHECK: aten.rms_norm
        CHECK-NOT: aten.rsqrt
    ''')

A pass's docstring shows its effect as ``Before::``/``After::`` blocks of printed graph lines;
``check_docstring(result, pass_module.__doc__)`` fails when they are no longer what the printer emits, and
``graph_change(result)`` gives the lines to put there.
"""
from __future__ import annotations

import difflib
import inspect
import re
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
    (or the end). Matching is substring matching. A check that cannot apply is an error, never a silent pass:
    an empty pattern, a ``CHECK-NEXT`` with no match before it, and a ``CHECK-NOT`` just before a
    ``CHECK-NEXT`` (no line lies between the two matches, so it would check nothing)."""
    lines = text.splitlines()
    pos = 0  # the line after the last match
    pending_not: list[str] = []
    matched_any = False

    def fail(directive, pattern, where):
        window = "\n".join(lines[max(0, where - 2): where + 3])
        raise FileCheckError(f"{directive}: {pattern!r} failed near line {where + 1}:\n{window}")

    for raw in checks.strip().splitlines():
        raw = raw.strip()
        if not raw:
            continue
        directive, _, pattern = raw.partition(":")
        pattern = pattern.strip()
        if not pattern:
            raise FileCheckError(f"{raw!r}: empty pattern")
        if directive == "CHECK-NEXT" and pending_not:
            raise FileCheckError(f"CHECK-NOT: {pending_not[-1]!r} is just before CHECK-NEXT: {pattern!r}, so it checks "
                                 "nothing (no line lies between the two matches); move it after, or assert on the "
                                 "whole text")
        if directive == "CHECK-NEXT" and not matched_any:
            raise FileCheckError(f"CHECK-NEXT: {pattern!r} has no CHECK before it to be next to")
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
        matched_any = True
    for bad in pending_not:
        hit = next((i for i in range(pos, len(lines)) if bad in lines[i]), None)
        if hit is not None:
            fail("CHECK-NOT", bad, hit)


_BLOCK_HEAD = re.compile(r"^(Before|After)\b.*::\s*$")


def docstring_graphs(doc: str) -> dict[str, list[str]]:
    """The graph lines of a pass docstring's ``Before…::`` and ``After::`` blocks, by block (``before``,
    ``after``); a line ``...`` marks lines left out and is not returned."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in (doc or "").splitlines():
        head = _BLOCK_HEAD.match(line.strip())
        if head and not line.startswith(" "):
            current = head.group(1).lower()
            blocks[current] = []
        elif current is not None and (line.startswith("    ") or not line.strip()):
            if line.strip() and line.strip() != "...":
                blocks[current].append(line.strip())
        else:
            current = None
    return blocks


def check_docstring(result: CheckResult, doc: str) -> None:
    """Every graph line of ``doc``'s Before/After blocks is a line the printer emitted for the graph before /
    after the pass, in order (so a docstring cannot drift from what the pass does). ``...`` inside a line
    stands for any text (``const : f32[...]`` for a size that depends on the machine)."""
    blocks = docstring_graphs(doc)
    if not blocks.get("before") or not blocks.get("after"):
        raise FileCheckError("the docstring has no Before::/After:: blocks of graph lines")
    for which, lines in blocks.items():
        printed = getattr(result, which).splitlines()
        pos = 0
        for line in lines:
            pattern = re.compile(".*".join(re.escape(part) for part in line.split("...")))
            found = next((i for i in range(pos, len(printed)) if pattern.fullmatch(printed[i])), None)
            if found is None:
                raise FileCheckError(f"docstring {which.title()} line not printed (in this order):\n  {line}\n"
                                     f"printed {which}:\n  " + "\n  ".join(printed))
            pos = found + 1


def graph_change(result: CheckResult, limit: int = 12) -> dict[str, list[str]]:
    """The lines the pass removed (``before``) and added (``after``): what a docstring's blocks should show.
    Longer blocks are cut at ``limit`` lines and end with ``...``."""
    before, after = result.before.splitlines(), result.after.splitlines()
    removed, added = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += before[i1:i2]
            added += after[j1:j2]
    return {k: v[:limit] + (["..."] if len(v) > limit else []) for k, v in (("before", removed), ("after", added))}
