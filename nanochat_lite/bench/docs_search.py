"""Document search latency at 1k, 10k and 100k stored chunks, on SQLite and PostgreSQL.

    run(sizes=(1000, 10000, 100000), queries=200) -> {"sqlite": {...}, "postgresql": {...} or why not}

What is timed: `Library.search` for one owner, as POST /api/documents/search runs it
after embedding the query: the store's full text (FTS5 / tsvector) for the top 50 and,
beside it in a second thread, the in-memory vectors for the top 50; the convex fusion
(0.7 vector, 0.3 text); reading the 5 winners' rows. Not timed: embedding the query
(the route keeps the last queries' embeddings) and HTTP.

The chunks are synthetic (embedding 100k real chunks would take most of an hour here):
~150 words each drawn from a Zipf-distributed vocabulary of 20,000 words, so common
words match many chunks as in real text, and random unit vectors of 384 dimensions
(the matrix product costs the same whatever the numbers are). Queries are 4 words, one
of them rare. PostgreSQL runs in a throwaway cluster (pgtemp.py) when its binaries and
psycopg are found, one fresh database per size; otherwise its entry says why not.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..documents.chunk import Chunk
from ..documents.library import Library
from ..documents.service import EMBEDDING_DIM, open_document_store
from ..documents.store import DocumentStore

DIM = EMBEDDING_DIM
CHUNK_WORDS = 150
PER_DOCUMENT = 1000  # chunks per stored document
SIZES = (1_000, 10_000, 100_000)
QUERIES = 200
K = 5


def _vocabulary(rng: np.random.Generator, n: int = 20_000) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, size=int(rng.integers(3, 10)))) for _ in range(n)]


def _fill(store: DocumentStore, n: int, rng: np.random.Generator, vocab: list[str]) -> None:
    weights = 1.0 / np.arange(1, len(vocab) + 1)  # Zipf: word r is 1/r as common as the first
    weights /= weights.sum()
    for start in range(0, n, PER_DOCUMENT):
        count = min(PER_DOCUMENT, n - start)
        words = rng.choice(len(vocab), size=(count, CHUNK_WORDS), p=weights)
        chunks = [Chunk(" ".join(vocab[w] for w in row), None, None, CHUNK_WORDS, i) for i, row in enumerate(words)]
        vectors = rng.standard_normal((count, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        doc = store.add("alice", "default", f"doc{start // PER_DOCUMENT}.txt", "text", 1)
        store.finish(doc.id, pages=None, chunks=chunks, vectors=vectors)


def _percentile(ordered: list[float], q: int) -> float:
    """Nearest rank: [1..20] at 95 -> 19."""
    return ordered[max(0, min(len(ordered) - 1, -(-q * len(ordered) // 100) - 1))]


def measure(spec: str, n: int, queries: int = QUERIES, seed: int = 0) -> dict[str, float]:
    """{"p50", "p95"} in ms over `queries` searches, "load_s" (the vectors read at
    start-up) and "fill_s" (storing the chunks), for `n` chunks in the store `spec`."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    store = open_document_store(spec)
    try:
        started = time.perf_counter()
        _fill(store, n, rng, vocab)
        fill_s = time.perf_counter() - started
        started = time.perf_counter()
        library = Library(store, dim=DIM)
        load_s = time.perf_counter() - started
        times = []
        for _ in range(queries):
            query = " ".join([vocab[int(rng.integers(0, 50))], vocab[int(rng.integers(0, 500))],
                              vocab[int(rng.integers(0, 5000))], vocab[int(rng.integers(5000, 20000))]])
            vector = rng.standard_normal(DIM).astype(np.float32)
            vector /= np.linalg.norm(vector)
            t = time.perf_counter()
            library.search("alice", query, vector, K)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        return {"p50": round(statistics.median(times), 2), "p95": round(_percentile(times, 95), 2),
                "load_s": round(load_s, 2), "fill_s": round(fill_s, 1)}
    finally:
        store.close()


def run(sizes: Sequence[int] = SIZES, queries: int = QUERIES, *, postgres: bool = True,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Both stores at each size; JSON-ready. `postgres=False` leaves PostgreSQL out on purpose."""
    from . import pgtemp

    out: dict[str, Any] = {"sizes": list(sizes), "queries": queries, "k": K, "chunk_words": CHUNK_WORDS,
                           "load_average_start": round(os.getloadavg()[0], 2), "sqlite": {}}
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out["sqlite"][str(n)] = row = measure(str(Path(tmp) / "h.db"), n, queries)
        log(f"  search, SQLite, {n:,} chunks: p50 {row['p50']} ms, p95 {row['p95']} ms")
    if not postgres:
        out["postgresql"] = "not measured (left out)"
    else:
        try:
            with pgtemp.TempCluster.start() as pg:
                out["postgresql_version"] = pg.version()
                out["postgresql"] = {}
                for n in sizes:
                    out["postgresql"][str(n)] = row = measure(pg.create_database(f"bench_{n}"), n, queries)
                    log(f"  search, PostgreSQL, {n:,} chunks: p50 {row['p50']} ms, p95 {row['p95']} ms")
        except pgtemp.PgUnavailable as e:
            out["postgresql"] = f"not measured: {e}"
    out["load_average_end"] = round(os.getloadavg()[0], 2)
    return out
