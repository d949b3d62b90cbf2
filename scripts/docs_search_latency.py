"""Document search latency at 1k, 10k and 100k stored chunks, on SQLite and PostgreSQL.

    .venv/bin/python scripts/docs_search_latency.py [--sizes 1000,10000,100000] [--pg URL]

What is timed: `Library.search` for one owner, as POST /api/documents/search runs it
after embedding the query: the store's full text (FTS5 / tsvector) for the top 50, the
in-memory vectors for the top 50, reciprocal rank fusion, and reading the 5 winners'
rows. Not timed: embedding the query (a few milliseconds, printed once) and HTTP.

The chunks are synthetic (embedding 100k real chunks would take most of an hour here):
~150 words each drawn from a Zipf-distributed vocabulary of 20,000 words, so common
words match many chunks as in real text, and random unit vectors of 384 dimensions
(the matrix product costs the same whatever the numbers are). Queries are 4 words, one
of them rare. Prints p50/p95 in milliseconds and the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nanochat_lite.documents.chunk import Chunk
from nanochat_lite.documents.library import Library
from nanochat_lite.documents.service import open_document_store

DIM = 384
CHUNK_WORDS = 150
PER_DOCUMENT = 1000  # chunks per stored document
QUERIES = 200


def _vocabulary(rng: np.random.Generator, n: int = 20_000) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, size=int(rng.integers(3, 10)))) for _ in range(n)]


def _fill(store, n: int, rng: np.random.Generator, vocab: list[str]) -> None:  # type: ignore[no-untyped-def]
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()
    for start in range(0, n, PER_DOCUMENT):
        count = min(PER_DOCUMENT, n - start)
        words = rng.choice(len(vocab), size=(count, CHUNK_WORDS), p=weights)
        chunks = [Chunk(" ".join(vocab[w] for w in row), None, None, CHUNK_WORDS, i) for i, row in enumerate(words)]
        vectors = rng.standard_normal((count, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        doc = store.add("alice", "default", f"doc{start // PER_DOCUMENT}.txt", "text", 1)
        store.finish(doc.id, pages=None, chunks=chunks, vectors=vectors)


def measure(spec: str, n: int, seed: int = 0) -> tuple[float, float, float]:
    """(p50 ms, p95 ms, seconds to load the vectors at start-up) for `n` chunks."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    store = open_document_store(spec)
    try:
        _fill(store, n, rng, vocab)
        started = time.perf_counter()
        library = Library(store, dim=DIM)
        load_s = time.perf_counter() - started
        times = []
        for _ in range(QUERIES):
            query = " ".join([vocab[int(rng.integers(0, 50))], vocab[int(rng.integers(0, 500))],
                              vocab[int(rng.integers(0, 5000))], vocab[int(rng.integers(5000, 20000))]])
            vector = rng.standard_normal(DIM).astype(np.float32)
            vector /= np.linalg.norm(vector)
            t = time.perf_counter()
            library.search("alice", query, vector, 5)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        return statistics.median(times), times[int(0.95 * len(times)) - 1], load_s
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--pg", metavar="URL", help="an empty PostgreSQL database (each size gets fresh tables)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {os.cpu_count()} cores", flush=True)
    print(f"{'store':<10} {'chunks':>8} {'p50 ms':>8} {'p95 ms':>8} {'load s':>7}")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            p50, p95, load_s = measure(str(Path(tmp) / "h.db"), n)
        print(f"{'sqlite':<10} {n:>8} {p50:>8.1f} {p95:>8.1f} {load_s:>7.2f}", flush=True)
        if args.pg:
            _reset_postgres(args.pg)
            p50, p95, load_s = measure(args.pg, n)
            print(f"{'postgres':<10} {n:>8} {p50:>8.1f} {p95:>8.1f} {load_s:>7.2f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}", flush=True)
    return 0


def _reset_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS chunks, documents, documents_schema")


if __name__ == "__main__":
    sys.exit(main())
