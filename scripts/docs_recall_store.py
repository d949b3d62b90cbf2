#!/usr/bin/env python3
"""recall@5 through the server's own search path: the pydoc QA set of bench/retrieval.py
stored in a real SQLite (or PostgreSQL) document store (each topic a document, its chunks
with the heading-blended vectors the indexer stores) and searched with
documents.library.Library, whose full-text half is the store's FTS5 or tsvector (not
retrieval.py's in-memory BM25), for each fusion. Section-heading questions search a second store of the chunks without headings,
as retrieval.py does.

    .venv/bin/python scripts/docs_recall_store.py [--postgres]

Prints recall@5 per question set and phrasing, and the mean. Takes a minute or two (the
vectors come from retrieval.py's cache in the temp folder once it has run). `--postgres`:
the same through the PostgreSQL store (tsvector, ts_rank) in a throwaway cluster
(bench/pgtemp.py) instead of SQLite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from nanochat_lite.bench import pgtemp
from nanochat_lite.bench import retrieval as r
from nanochat_lite.documents.chunk import chunk_blocks, minilm_spans
from nanochat_lite.documents.library import Library
from nanochat_lite.documents.parse import parse
from nanochat_lite.documents.search import DEFAULT_VECTOR_WEIGHT, chunk_vectors, convex, rrf
from nanochat_lite.documents.service import open_document_store
from nanochat_lite.embeddings import Embedder

FUSIONS = {"rrf k=60": rrf(60), f"convex {DEFAULT_VECTOR_WEIGHT} (the server's)": convex(DEFAULT_VECTOR_WEIGHT),
           "convex 0.8": convex(0.8), "convex 0.6": convex(0.6)}


def main(postgres: bool) -> None:
    with contextlib.ExitStack() as stack:
        if postgres:
            cluster = stack.enter_context(pgtemp.TempCluster.start())
            print(f"through PostgreSQL: {cluster.version()}", flush=True)
            measure(lambda which: cluster.create_database(f"recall_{which}"))
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nanochat-recall-")))
            print("through SQLite", flush=True)
            measure(lambda which: str(folder / f"{which}.db"))


def measure(database: Callable[[str], str]) -> None:
    """recall@5 through stores opened on `database("with")` and `database("without")`."""
    model_dir = r._model_dir()
    embedder = Embedder(model_dir)
    topics, sets, _ = r.qa_set()
    labels = sorted(topics)
    spans = minilm_spans(model_dir)
    per = {label: list(chunk_blocks(parse(topics[label].encode(), f"{label}.txt"), spans)) for label in labels}
    chunks = [c for label in labels for c in per[label]]

    def embed(batch: list[str]):  # noqa: ANN202
        return embedder.embed(batch).vectors

    def cached(batch: list[str]):  # noqa: ANN202
        return r._embed_cached(embed, model_dir, batch)

    texts = [c.embed_text for c in chunks]
    vectors = {"with": chunk_vectors(cached, texts, [c.heading for c in chunks]),
               "without": cached([c.text for c in chunks])}
    libraries = {}
    for which, vecs in vectors.items():
        store = open_document_store(database(which))
        i = 0
        for label in labels:
            mine = [dataclasses.replace(c, heading=None) if which == "without" else c for c in per[label]]
            doc = store.add("owner", "default", f"{label}.txt", "txt", 1)
            store.finish(doc.id, pages=None, chunks=mine, vectors=vecs[i:i + len(mine)])
            i += len(mine)
        libraries[which] = Library(store, dim=vecs.shape[1])
    under = {}
    for c in chunks:
        under.setdefault(c.heading, set()).add(c.text)
    sets["section headings"] = [r.Question(h, h) for h in sorted(h for h in under if h)]
    recall: dict[str, list[float]] = {f: [] for f in FUSIONS}
    for set_name, questions in sets.items():
        library = libraries["without" if set_name == "section headings" else "with"]
        for template in r.TEMPLATES:
            queries = [template.format(name=q.name) for q in questions]
            query_vectors = embed(queries)
            for name, fusion in FUSIONS.items():
                library._fuse = fusion
                hits = 0
                for q, text, vector in zip(questions, queries, query_vectors):
                    got = library.search("owner", text, vector, r.K)
                    if set_name == "section headings":
                        hits += any(g.text in under[q.label] for g in got)
                    else:
                        hits += any(g.name == f"{q.label}.txt" for g in got)
                recall[name].append(hits / len(questions))
            print(f"{set_name:<17} {len(questions):>4}  {template:<55}"
                  + "".join(f"{recall[f][-1]:>8.3f}" for f in FUSIONS), flush=True)
    print("mean" + " " * 73 + "".join(f"{statistics.mean(v):>8.3f}" for v in recall.values()))
    print("columns: " + ", ".join(FUSIONS))


if __name__ == "__main__":
    if sys.argv[1:] not in ([], ["--postgres"]):
        sys.exit("usage: docs_recall_store.py [--postgres]")
    main(postgres=sys.argv[1:] == ["--postgres"])
