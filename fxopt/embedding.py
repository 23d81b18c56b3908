"""Sentence embeddings from a saved encoder artifact: the batch job behind ``fxopt embed``.

:class:`Embedder` loads the artifact once (its saved tokenizer included) and turns a list of texts into
L2-normalized mean-pooled embeddings, the way sentence-transformers pools all-MiniLM-L6-v2. The same class runs
in this process (:func:`embed_texts`) and as a Ray Data actor (:mod:`fxopt.ray`), so both paths compute the same
numbers from the same batches.

    embedder = Embedder("minilm.fxopt", threads=2)
    vectors = embedder(["A first sentence.", "Another one."])     # float32 [2, 384], unit length
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from fxopt.errors import ArtifactError, InputError
from fxopt.metrics import pooled

#: Texts longer than this many tokens are truncated (MiniLM was trained on 128-token inputs).
DEFAULT_MAX_LENGTH = 128
DEFAULT_BATCH_SIZE = 64


class Embedder:
    """One loaded artifact and its tokenizer; call it with texts (see the module docstring)."""

    def __init__(self, artifact: str | Path, *, threads: int | None = None, max_length: int = DEFAULT_MAX_LENGTH):
        import fxopt

        if threads is not None:
            torch.set_num_threads(threads)
        self.model = fxopt.load(artifact)
        self.tokenizer = self.model.tokenizer
        if self.tokenizer is None:
            raise ArtifactError(f"the artifact {artifact} was saved without a tokenizer; save it with "
                                "fxopt optimize MODEL --save PATH, or fxopt.save(compiled, path, tokenizer=tokenizer)")
        dims = self.model.contract.call.dims
        self.max_batch = dims["batch"].max if "batch" in dims else 1
        self.max_length = min(max_length, dims["seq"].max) if "seq" in dims else max_length

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) > self.max_batch:
            raise InputError(f"{len(texts)} texts in one batch; the artifact was compiled for batches up to "
                             f"{self.max_batch}: use a smaller batch size")
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        inputs = {k: v for k, v in encoded.items() if k in self.model.contract.top_keys}
        hidden = self.model(**inputs)[0]
        vectors = torch.nn.functional.normalize(pooled(hidden, encoded["attention_mask"]), dim=-1)
        return vectors.numpy().astype(np.float32, copy=False)


def read_lines(path: str | Path) -> list[str]:
    """The documents of a text file, one per line; blank lines are skipped (as Ray Data's ``read_text`` does)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no input file {path}; give a text file with one document per line")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def batches(texts: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(texts), size):
        yield texts[start:start + size]


def embed_texts(artifact: str | Path, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
                threads: int | None = None, max_length: int = DEFAULT_MAX_LENGTH, progress=None) -> np.ndarray:
    """Embeddings of ``texts`` in this process: float32 ``[len(texts), dim]``, rows in input order."""
    embedder = Embedder(artifact, threads=threads, max_length=max_length)
    out = []
    for chunk in batches(texts, batch_size):
        out.append(embedder(chunk))
        if progress is not None:
            progress(sum(len(o) for o in out), len(texts))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def write_embeddings(vectors: np.ndarray, path: str | Path) -> Path:
    """``.npy`` (NumPy) or ``.parquet`` (one ``embedding`` list column; pyarrow comes with the ray extra)."""
    path = Path(path)
    if path.suffix == ".npy":
        np.save(path, vectors)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"embedding": list(vectors)}), path)
    else:
        raise InputError(f"cannot write {path}: the output must end in .npy or .parquet")
    return path
