"""When ``torch.export`` cannot keep a dimension dynamic, capture again with that dimension static.

fxopt makes ``batch`` (and, for Hugging Face models, ``seq``) dynamic, so one compiled artifact serves every
size. Some models fix a size in their code: a local-attention decoder whose windowing needs ``seq`` to be a
multiple of the window, a vision model whose ``seq`` axis is its channels. Export then fails with
``Constraints violated (seq)`` or "specialized it to be a constant". Rather than fail, capture retries with
the named dimensions static and says so in the compile report::

    seq is static (9): torch.export could not keep it dynamic for this model (Constraints violated (seq)! …);
    the compiled model accepts only that size

:func:`export_with_fallback` runs the attempts; :func:`violated_dims` reads which dimensions an export error
blames. An error that blames no dimension is raised as it is (capture explains it).
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from typing import Callable, TypeVar

from fxopt.errors import CaptureError

T = TypeVar("T")

#: torch's loggers that print export's internals (guards, the graph) when an export fails or specializes.
_NOISY_LOGGERS = ("torch", "torch._export", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes",
                  "torch._export.non_strict_utils", "torch.fx.experimental.recording",
                  "torch.fx.experimental.proxy_tensor", "torch._subclasses.fake_tensor")

_CONSTRAINT_WORDS = ("Constraints violated", "specialized", "ConstraintViolation", "not in range",
                     "marked as dynamic", "dynamic_shapes")


def violated_dims(error: Exception, candidates: set[str]) -> set[str]:
    """The dynamic dimensions (of ``candidates``) an export error says cannot stay dynamic; empty when the
    error is not about a dimension."""
    text = f"{type(error).__name__}: {error}"
    if not any(word in text for word in _CONSTRAINT_WORDS):
        return set()
    named = set()
    for group in re.findall(r"Constraints violated \(([^)]*)\)", text):
        named |= {name.strip() for name in group.split(",")}
    named |= {name for name in candidates if re.search(rf"\b{re.escape(name)}\b", text)}
    return (named & candidates) or set(candidates)


def export_with_fallback(attempt: Callable[[frozenset[str]], T], dynamic: set[str], sizes: dict[str, int],
                         notes: list[str]) -> T:
    """``attempt(static)`` exports with the dimensions in ``static`` made static. Start with none; while an
    attempt fails on dimensions of ``dynamic`` that are still dynamic, make them static and try again (noting
    each in ``notes``). Any other failure is raised."""
    static: frozenset[str] = frozenset()
    while True:
        try:
            with quiet_export():
                return attempt(static)
        except CaptureError:
            raise  # fxopt's own, already clear
        except Exception as e:  # noqa: BLE001 - only dimension failures are retried; the rest re-raised
            blamed = violated_dims(e, set(dynamic) - static)
            if not blamed:
                raise
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            first = first.split(" For more information")[0]  # torch's pointer to its own logs
            for name in sorted(blamed):
                notes.append(f"{name} is static ({sizes.get(name, '?')}): torch.export could not keep it dynamic "
                             f"for this model ({first[:160]}); the compiled model accepts only that size")
            static = static | frozenset(blamed)


@contextlib.contextmanager
def quiet_export():
    """Keep torch.export's own warnings and log lines (guards, graphs) off the user's screen: capture reports
    what went wrong in a few lines of its own."""
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        # export prints the partial graph itself (twice) when it meets data-dependent control flow
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
