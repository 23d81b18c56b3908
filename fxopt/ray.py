"""Batch embedding on Ray (the optional extra ``pip install "fxopt[ray]"``): an existing distributed engine runs
the job, fxopt supplies the per-actor work.

    vectors = fxopt.ray.embed_file("minilm.fxopt", "docs.txt", actors=2, threads=1)

The driver reads the file (one document per line, blank lines dropped) and cuts it into batches exactly as the
single-process path does; Ray Data maps them through an actor pool (``map_batches`` with an
``ActorPoolStrategy`` of ``actors``): each actor is an :class:`fxopt.embedding.Embedder` that loads the artifact
ONCE, with ``threads`` intra-op threads, and embeds batch after batch. Rows come back in input order, and
bit-identical to :func:`fxopt.embedding.embed_texts` with the same batch size (padding depends on the batch). On a cluster (``address="ray://head:10001"`` or ``"auto"``) nothing is compiled on the workers: each
actor maps the artifact's packages from ``artifact``, a path every node must see (shared storage, or a copy at
the same path), and the checks of :func:`fxopt.load` (versions, ISA, checksums) run on every node.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from fxopt.embedding import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH, Embedder, batches, read_lines
from fxopt.errors import InputError


class EmbedActor:
    """A Ray Data callable class: rows ``{"start": i, "texts": [batch of lines]}`` → ``{"start", "embedding"}``
    (one float32 ``[n, dim]`` array per row)."""

    def __init__(self, artifact: str, threads: int, max_length: int):
        self.embedder = Embedder(artifact, threads=threads, max_length=max_length)

    def __call__(self, rows: dict) -> dict:
        return {"start": rows["start"],
                "embedding": [self.embedder([str(t) for t in texts]) for texts in rows["texts"]]}


def start(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to the cluster at ``address``, or start a local Ray (quiet, no dashboard). True if this call
    started or connected it (and the caller should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = {"address": address} if address else {"num_cpus": num_cpus or os.cpu_count()}
    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False, **kwargs)
    return True


def embed_file(artifact: str | Path, input_path: str | Path, *, actors: int = 2, threads: int = 1,
               batch_size: int = DEFAULT_BATCH_SIZE, max_length: int = DEFAULT_MAX_LENGTH,
               address: str | None = None, progress: bool = True) -> np.ndarray:
    """Embeddings of every line of ``input_path`` through ``actors`` Ray actors of ``threads`` threads each:
    float32 ``[lines, dim]`` in input order."""
    import ray
    import ray.data

    input_path, artifact = Path(input_path), Path(artifact)
    if actors < 1 or threads < 1:
        raise InputError(f"actors and threads must be at least 1, got {actors} and {threads}")
    texts = read_lines(input_path)
    # Batches are cut here, as the single-process path cuts them: padding depends on a batch's longest
    # document, so the same batches give bit-identical vectors (Ray Data's own batching follows its blocks).
    items = [{"start": start, "texts": list(chunk)} for start, chunk in
             zip(range(0, len(texts), batch_size), batches(texts, batch_size))]
    # a local Ray gets one logical CPU beyond the actors' for Ray Data's own tasks
    started = start(address, num_cpus=max(os.cpu_count() or 1, actors * threads) + 1)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = progress
        dataset = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * actors) or 1)
        dataset = dataset.map_batches(
            EmbedActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads,
            batch_format="numpy",
            fn_constructor_kwargs={"artifact": str(artifact.resolve()), "threads": threads, "max_length": max_length})
        parts = {int(start): vectors for batch in dataset.iter_batches(batch_size=None, batch_format="numpy")
                 for start, vectors in zip(batch["start"], batch["embedding"])}
        ordered = [parts[k] for k in sorted(parts)]
        return np.concatenate(ordered).astype(np.float32, copy=False) if ordered else np.zeros((0, 0), np.float32)
    finally:
        if started:
            ray.shutdown()
