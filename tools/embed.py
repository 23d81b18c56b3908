"""``fxopt embed``: sentence embeddings of a text file (one document per line) from a saved encoder artifact.

    fxopt optimize minilm --save minilm.fxopt               # compile once (saves the tokenizer too)
    fxopt embed minilm.fxopt docs.txt --out docs.npy        # this process, all cores
    fxopt embed minilm.fxopt docs.txt --out docs.parquet --ray --actors 2 --threads 1   # a local Ray
    fxopt embed minilm.fxopt docs.txt --out docs.npy --ray --address auto               # an existing cluster

Prints documents/s at the end (the artifact's load time included, as a batch job pays it).
"""
from __future__ import annotations

import argparse
import sys
import time

from fxopt.embedding import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH
from fxopt.tools.bench import positive_int


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fxopt embed", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", help="an encoder artifact folder (fxopt optimize minilm --save PATH)")
    p.add_argument("input", help="a UTF-8 text file, one document per line (blank lines are skipped)")
    p.add_argument("--out", required=True, help="where to write the embeddings: .npy or .parquet")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help=f"default {DEFAULT_BATCH_SIZE}")
    p.add_argument("--max-length", type=positive_int, default=DEFAULT_MAX_LENGTH,
                   help=f"tokens per document; longer ones are truncated (default {DEFAULT_MAX_LENGTH})")
    p.add_argument("--ray", action="store_true", help="run on Ray Data with an actor pool (pip install 'fxopt[ray]')")
    p.add_argument("--actors", type=positive_int, default=None,
                   help="with --ray: actors, each loading the artifact once (default 2)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="intra-op threads per actor (--ray, default 1) or for this process (default: all cores)")
    p.add_argument("--address", default=None, help="with --ray: an existing cluster ('auto', 'ray://host:10001'); "
                                                   "default: start a local Ray for this job")
    return p


def main(argv: list[str]) -> int:
    from fxopt.artifact import read_manifest
    from fxopt.errors import FxoptError
    from fxopt.machine import writable_output

    p = parser()
    args = p.parse_args(argv)
    if not args.out.endswith((".npy", ".parquet")):
        p.error(f"--out must end in .npy or .parquet, got {args.out}")
    if writable_output(args.out):
        p.error(f"--out: {writable_output(args.out)}")
    if not args.ray and (args.address or args.actors):
        p.error("--actors and --address need --ray")
    try:
        read_manifest(args.artifact)  # a bad artifact is one line before Ray starts
        if args.ray:
            try:
                import ray  # noqa: F401
            except ImportError:
                p.error("--ray needs Ray: pip install 'fxopt[ray]'")
        return _run(args)
    except FxoptError as e:
        print(f"fxopt: error: {e}", file=sys.stderr)
        return 1


def _run(args) -> int:
    from fxopt.embedding import embed_texts, read_lines, write_embeddings

    start = time.perf_counter()
    if args.ray:
        from fxopt.ray import embed_file

        threads, actors = args.threads or 1, args.actors or 2
        where = args.address or "a local Ray"
        print(f"[fxopt] embedding {args.input} on {where}: {actors} actor(s) × {threads} thread(s)",
              file=sys.stderr, flush=True)
        vectors = embed_file(args.artifact, args.input, actors=actors, threads=threads,
                             batch_size=args.batch_size, max_length=args.max_length, address=args.address)
    else:
        texts = read_lines(args.input)

        def progress(done: int, total: int) -> None:
            print(f"\r[fxopt] {done}/{total} documents", end="" if done < total else "\n", file=sys.stderr,
                  flush=True)

        vectors = embed_texts(args.artifact, texts, batch_size=args.batch_size, threads=args.threads,
                              max_length=args.max_length, progress=progress)
    seconds = time.perf_counter() - start
    write_embeddings(vectors, args.out)
    rate = len(vectors) / seconds if seconds else float("inf")
    print(f"[fxopt] {len(vectors)} embeddings ({vectors.shape[1] if vectors.ndim == 2 else 0} dims) → {args.out} "
          f"in {seconds:.1f} s: {rate:.0f} documents/s", file=sys.stderr)
    return 0
