"""Numeric-check verdicts remembered across processes: a second compile of the same model on the same machine
skips the eager runs that would only repeat them.

:class:`fxopt.pass_manager.NumericCheck` runs the graph on the example inputs before the pipeline and after every
pass that changed it; for SmolLM2 at 1 × 256 that is 13 of the 45 s a second compile took. The outcome of an
exact pass's check is a function of what was run: the captured graph and the values of its weights, the example
inputs, each graph the passes produced (its printed form: ops, arguments, constants' shapes), the tolerance and
the machine. :class:`CheckChain` hashes exactly that, one link per pass:

    start  = H(fxopt, torch, machine, rtol, printed captured graph, every constant's bytes, every input's bytes)
    link_i = H(link_{i-1}, pass name, its options, hash of the printed graph after the pass)

and :class:`VerdictCache` stores, under a link, the errors the check measured when it accepted the pass. When
every link of a compile is found, the eager runs are not made; at the first link not found, the check runs the
graph (and, if it had skipped it, the captured graph for the reference) as it always does. A pass whose choice
depends on a measurement (``select-gemm-backend``) changes the printed graph when it chooses differently, so it
is checked again. The chain stops at the first lossy pass: its constants depend on calibration data the key does
not hold, so it and every pass after it are always run.

Hashing the weights costs about a second per GB here; the file is ``$XDG_CACHE_HOME/fxopt/checks-<machine>.json``
(at most :data:`MAX_ENTRIES`, oldest dropped), listed and cleared by ``fxopt cache``. ``FXOPT_CHECK_CACHE=0``
turns it off.

The deep verification at the end of the pipeline (:class:`fxopt.pass_manager.Verify`) is remembered the same way
(:func:`verified_graphs`): it re-runs fake-tensor propagation on every node and compares with the node's recorded
type, an outcome fixed by the printed graph (ops, arguments, every node's type) and the fxopt and torch versions.
A graph printed identically to one that passed is not propagated again (SmolLM2: about 5 s of a warm compile).
"""
from __future__ import annotations

import hashlib
import json
import operator
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.fx

from fxopt.ir.printer import format_graph
from fxopt.machine import cache_dir, machine_key

#: Verdicts kept per machine; the oldest go first.
MAX_ENTRIES = 4096
ENV = "FXOPT_CHECK_CACHE"


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_path() -> Path:
    return cache_dir() / f"checks-{machine_key().digest()}.json"


def tensor_digest(h, tensor: torch.Tensor) -> None:
    """Feed ``tensor``'s dtype, shape and bytes to the hash ``h``."""
    h.update(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    t = tensor.detach()
    try:
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    except (RuntimeError, TypeError, NotImplementedError):  # mkldnn, sparse, quantized, meta: no bytes to read
        h.update(f"<{t.layout}:{t.device.type}:{id(t)}:{os.getpid()}>".encode())  # never matches another compile


def graph_digest(h, gm: torch.fx.GraphModule, input_sets: Sequence[Sequence[Any]]) -> None:
    """Feed ``h`` what a run of ``gm`` computes from: its printed graph, every constant's bytes, and every input's
    bytes in each of ``input_sets``."""
    h.update(format_graph(gm).encode())
    for node in gm.graph.find_nodes(op="get_attr"):
        value = operator.attrgetter(node.target)(gm)
        h.update(node.target.encode())
        if isinstance(value, torch.Tensor):
            tensor_digest(h, value)
    for inputs in input_sets:
        h.update(b"|inputs|")
        for value in inputs:
            if isinstance(value, torch.Tensor):
                tensor_digest(h, value)
            else:
                h.update(repr(value).encode())


class CheckChain:
    """The key of each check, from the captured graph on (see the module docstring)."""

    def __init__(self, gm: torch.fx.GraphModule, inputs: Sequence[Any], rtol: float):
        from fxopt import __version__

        h = hashlib.blake2b(digest_size=20)
        h.update(f"{__version__}|{torch.__version__}|{machine_key().digest()}|{rtol!r}|".encode())
        graph_digest(h, gm, [inputs])
        self.key: str | None = h.hexdigest()

    def advance(self, pass_name: str, options: Any, graph_fingerprint: str, *, lossy: bool) -> str | None:
        """The key of the check after ``pass_name``, given the fingerprint of the printed graph it produced
        (:func:`fxopt.pass_manager.fingerprint`); None from the first lossy pass on."""
        if self.key is None or lossy:
            self.key = None
            return None
        self.key = hashlib.blake2b(f"{self.key}|{pass_name}|{options!r}|{graph_fingerprint}".encode(),
                                   digest_size=20).hexdigest()
        return self.key


class VerdictCache:
    """Accepted checks' errors by chain key, in one JSON file per machine (at most ``max_entries``, the oldest
    dropped). :mod:`fxopt.plan_cache` keeps precision plans in one too."""

    def __init__(self, path: Path | None = None, max_entries: int = MAX_ENTRIES):
        self.path = path or cache_path()
        self.max_entries = max_entries
        self.entries: dict[str, dict[str, float]] = {}
        self.new: dict[str, dict[str, float]] = {}
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                self.entries = {k: v for k, v in loaded.items() if isinstance(v, dict)}
        except (OSError, ValueError):
            pass  # no cache yet, or an unreadable one: it is rewritten

    def get(self, key: str | None) -> dict[str, Any] | None:
        return self.entries.get(key) if key else None

    def put(self, key: str | None, verdict: dict[str, Any]) -> None:
        if key:
            self.new[key] = verdict

    def save(self) -> None:
        """Merge this compile's verdicts into the file (atomically; a failure to write only loses the cache)."""
        if not self.new:
            return
        try:
            current = VerdictCache(self.path).entries
            current.update(self.new)
            kept = dict(list(current.items())[-self.max_entries:])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".checks-")
            with os.fdopen(fd, "w") as f:
                json.dump(kept, f)
            os.replace(tmp, self.path)
            self.new = {}
        except OSError:
            pass


def verified_graphs() -> VerdictCache:
    """Keys of final graphs whose deep verification passed (``verified-<machine>.json``)."""
    return VerdictCache(cache_dir() / f"verified-{machine_key().digest()}.json")


def graph_key(gm: torch.fx.GraphModule) -> str:
    """What a deep verification's outcome depends on: the printed graph and the fxopt and torch versions."""
    from fxopt import __version__

    return hashlib.blake2b(f"{__version__}|{torch.__version__}|{format_graph(gm)}".encode(),
                           digest_size=20).hexdigest()
