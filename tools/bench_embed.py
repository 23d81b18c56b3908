"""``fxopt bench --embed``: the batch-embedding job (``fxopt embed``) in one process and on a local Ray, side by side.

MiniLM is compiled and saved once; then the same file of documents (lines of the licenses Debian ships in
``/usr/share/common-licenses``, else Python's license) is embedded by this process, by 1 Ray actor × all threads
and by one actor per core × 1 thread. Each row is the whole job as a user runs it: Ray's start, every actor's
load of the artifact, reading, embedding and collecting. Every row's embeddings are compared with the
single-process ones.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate


def documents(n: int) -> list[str]:
    """``n`` lines of real English text (repeated when the sources have fewer)."""
    folder = Path("/usr/share/common-licenses")
    lines = []
    if folder.is_dir():
        for f in sorted(folder.iterdir()):
            if f.is_file():
                lines += [l.strip() for l in f.read_text(errors="ignore").splitlines() if len(l.split()) >= 4]
    if not lines:
        from fxopt.metrics import evaluation_text
        lines = [l.strip() for l in evaluation_text().splitlines() if len(l.split()) >= 4]
    return [lines[i % len(lines)] for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    import fxopt
    from fxopt import models
    from fxopt.embedding import embed_texts
    from fxopt.tools.bench import machine_header

    parser = argparse.ArgumentParser(prog="fxopt bench --embed", description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=8192, help="documents to embed (default 8192)")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    args = parser.parse_args(argv)
    try:
        from fxopt.ray import embed_file
    except ImportError:
        parser.error("the Ray rows need Ray: pip install 'fxopt[ray]'")
    cores = os.cpu_count() or 1
    print(f"[bench] {machine_header()}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as folder:
        real = models.load("minilm")
        print("[bench] compiling and saving MiniLM …", file=sys.stderr, flush=True)
        compiled = fxopt.compile(real.model, real.inputs(8, 128))
        artifact = fxopt.save(compiled, Path(folder) / "minilm.fxopt", tokenizer=real.tokenizer, verbose=False)
        del compiled
        texts = documents(args.docs)
        source = Path(folder) / "docs.txt"
        source.write_text("\n".join(texts) + "\n")
        rows, reference = [], None
        configs = [("this process", None, cores), ("Ray", 1, cores), ("Ray", cores, 1)]
        for where, actors, threads in configs:
            label = f"{where}, {actors} actor(s) × {threads} thread(s)" if actors else f"{where}, {threads} threads"
            print(f"[bench] {label} …", file=sys.stderr, flush=True)
            start = time.perf_counter()
            if actors is None:
                vectors = embed_texts(artifact, texts, batch_size=args.batch_size, threads=threads)
            else:
                vectors = embed_file(artifact, source, actors=actors, threads=threads, batch_size=args.batch_size,
                                     progress=False)
            seconds = time.perf_counter() - start
            if reference is None:
                reference, same = vectors, "reference"
            else:
                same = "identical" if np.array_equal(vectors, reference) else \
                    f"max |diff| {np.abs(vectors - reference).max():.1e}"
            rows.append([label, f"{seconds:.1f}", f"{len(vectors) / seconds:.0f}", same])
    print(f"\nMiniLM embeddings of {args.docs} documents (batches of {args.batch_size}, up to 128 tokens)\n")
    print(tabulate(rows, headers=["where", "job s", "documents/s", "vs this process"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
