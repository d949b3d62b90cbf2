"""The stored documents and their vectors in memory: what the server searches.

    library = Library(open_document_store(spec), dim=384)   # vectors loaded from the store
    library.search("alice", "how do I deploy?", query_vector, k=5) -> [Result, ...]

One `VectorIndex` (search.py) per owner and collection, built at start-up from the
stored float32 rows and kept in step when a document is stored or deleted; another
owner's chunks are never in the matrices a search reads. The full-text half is the
store's own (FTS5 / tsvector), limited to the owner (and collection) in SQL.

Replicas: other processes on the same database store and delete documents too. Before
each search the library reads the store's generation (one one-row query; a writer bumps
it in the transaction that adds or removes chunks, store.py) and, when it moved, replays
the changes since the one it last saw: the removed chunk ids dropped, the new documents'
vectors loaded, nothing else re-read. So a search sees every document made ready or
deleted, through any replica, before it started. Why not LISTEN/NOTIFY: a notification
arrives after the commit, on its own connection, so a search just after another
replica's commit could miss it, and a dropped listener needs a poll behind it anyway;
SQLite has no such thing. The chunks' rows are read back by owner, so a vector a
replica has not dropped yet never shows a deleted chunk or another owner's.

Fusion: search.py's convex fusion at its default weight (0.7 vector, 0.3 text) of each
half's top `CANDIDATES`, each half's scores min-max normalised over its candidates (so the
stores' different full-text scales, bm25 and ts_rank, fuse alike). Measured through this
class on SQLite (scripts/docs_recall_store.py, pydoc QA set, 352 questions x 4
phrasings): recall@5 0.848, against 0.761 with reciprocal rank fusion (k=60), which it
used before. Then `search.spread`: at most one chunk of a section (document and heading)
among the first 10, the rest after them; measured the same way on 2026-12-08, recall@5
0.848 -> 0.864 on SQLite, 0.839 -> 0.862 on PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .search import DEFAULT_CANDIDATES, DEFAULT_VECTOR_WEIGHT, Ranking, VectorIndex, convex, section_key, spread
from .store import ChunkHit, DocumentStore, VectorBlock

CANDIDATES = DEFAULT_CANDIDATES  # each half's top-N that goes into the fusion


@dataclass(frozen=True)
class Result:
    score: float
    document_id: str
    name: str
    page: int | None
    heading: str | None
    text: str

    def to_dict(self) -> dict[str, object]:
        return {"score": self.score, "document_id": self.document_id, "name": self.name, "page": self.page,
                "heading": self.heading, "text": self.text}


class Library:
    """A DocumentStore plus its vectors in memory. Thread-safe; every method blocks."""

    def __init__(self, store: DocumentStore, *, dim: int = 384) -> None:
        self.store = store
        self.dim = dim
        self._indexes: dict[tuple[str, str], VectorIndex] = {}
        self._lock = threading.Lock()  # guards the dict; each VectorIndex guards itself
        self._fuse = convex(DEFAULT_VECTOR_WEIGHT)
        # The vector half runs here while the calling thread asks the store for the full text:
        # at 100k chunks each half takes 15-35 ms, and numpy's product and both database
        # drivers release the GIL, so on two cores a search takes the longer half, not the sum.
        self._vectors_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="library-vectors")
        self._seen = 0  # the store's generation the matrices are in step with
        # One thread replays the store's changes at a time, and `added` waits for it: a
        # document is in `_own` only while its vectors are in the indexes a catch-up keeps.
        self._catch_up = threading.Lock()
        # Documents this library added itself since its last catch-up (under `_catch_up`):
        # their vectors are not read back when their change is replayed (1000 chunks: ~120 ms
        # on PostgreSQL).
        self._own: set[str] = set()
        try:
            self._reload()
        except BaseException:
            self._vectors_pool.shutdown(wait=False)
            raise

    def _reload(self) -> None:
        """Every stored vector, read anew (start-up, or a replica too far behind to replay)."""
        seen = self.store.generation()  # before the rows: a change after it is replayed, harmlessly
        indexes: dict[tuple[str, str], VectorIndex] = {}
        for block in self.store.vector_blocks():
            self._check(block)
            index = indexes.setdefault((block.owner, block.collection), VectorIndex(self.dim))
            index.add(block.ids.tolist(), block.vectors)
        with self._lock:
            self._indexes = indexes
        self._own.clear()
        self._seen = seen

    def _check(self, block: VectorBlock) -> None:
        if block.vectors.shape[1] != self.dim:
            raise ValueError(f"stored vectors of {block.owner}/{block.collection} have "
                             f"{block.vectors.shape[1]} dimensions, the embedder gives {self.dim}")

    def refresh(self) -> None:
        """Bring the vectors in step with the store: what other replicas (or this one's own
        writes) changed since the last look. Costs one one-row query when nothing did."""
        if self.store.generation() == self._seen:
            return
        with self._catch_up:
            changes = self.store.changes_since(self._seen, loaded=frozenset(self._own))
            if changes is None:
                self._reload()
                return
            gone: dict[str, list[int]] = {}
            for owner, ids in changes.removed:
                gone.setdefault(owner, []).extend(ids.tolist())
            for owner, ids_gone in gone.items():  # removals first: SQLite may give a new chunk an old id
                self.removed(owner, ids_gone)
            for block in changes.added:
                self._check(block)
                self._index(block.owner, block.collection).add(block.ids.tolist(), block.vectors, new_only=True)
            self._own.clear()  # each was made ready at or before changes.generation: replayed now
            self._seen = changes.generation

    def _index(self, owner: str, collection: str) -> VectorIndex:
        with self._lock:
            index = self._indexes.get((owner, collection))
            if index is None:
                index = self._indexes[(owner, collection)] = VectorIndex(self.dim)
            return index

    def close(self) -> None:
        """Let the vector half's threads go (the store is closed by its opener)."""
        self._vectors_pool.shutdown(wait=False)

    def chunks_in_memory(self, owner: str | None = None) -> int:
        with self._lock:
            return sum(len(ix) for (o, _), ix in self._indexes.items() if owner is None or o == owner)

    def added(self, owner: str, collection: str, ids: Sequence[int], vectors: np.ndarray, *,
              document_id: str | None = None) -> None:
        """A document's chunks were stored: search them from now on (a search that caught
        up with the store meanwhile may have loaded them already: those are skipped).
        `document_id`: the document they are all of, whose vectors catching up then need
        not read back."""
        with self._catch_up:
            with self._lock:
                indexes = list(self._indexes.values())
            # On SQLite a new chunk may get the id of a deleted one whose vector a replica still
            # holds (in any of the owner's collections); the catch-up drops that id, and must
            # then read this document's vectors back: it is not counted as our own.
            stale = any(index.holds_any(ids) for index in indexes)
            if ids:
                self._index(owner, collection).add(list(ids), vectors, new_only=True)
            if document_id is not None and not stale:
                self._own.add(document_id)

    def removed(self, owner: str, ids: Sequence[int]) -> None:
        """A document's chunks were deleted: forget their vectors."""
        with self._lock:
            mine = [ix for (o, _), ix in self._indexes.items() if o == owner]
        gone = set(ids)
        for index in mine:
            index.remove(gone)

    def search(self, owner: str, query: str, query_vector: np.ndarray, k: int, *,
               collection: str | None = None, only: AbstractSet[int] | None = None) -> list[Result]:
        """The owner's k best chunks for `query` (hybrid), best first; `only`: among
        these chunk ids (a few chosen documents' chunks) and no others."""
        if k <= 0:
            return []
        self.refresh()
        wanted = max(k, CANDIDATES)
        total = self.chunks_in_memory(owner)
        # Limited to some chunks: each half ranks all it can, then keeps the allowed ones
        # (the vector half scores every row anyway; the text half at most its row budget).
        reach = wanted if only is None else max(wanted, total)
        vector_half = self._vectors_pool.submit(self._vector_search, owner, collection, query_vector, reach)
        by_text = self.store.fulltext(owner, query, reach, collection=collection, total=total)
        by_vector = vector_half.result()
        if only is not None:
            by_vector = [hit for hit in by_vector if hit[0] in only][:wanted]
            by_text = [hit for hit in by_text if hit[0] in only][:wanted]
        fused = self._fuse(by_vector, by_text)
        # Every candidate's row (at most 2 x CANDIDATES): spreading by section needs each one's
        # heading. A chunk deleted between the ranking and this read is skipped, not shown half.
        hits = self.store.chunk_hits([chunk_id for chunk_id, _ in fused], owner=owner)
        ranked = spread([(chunk_id, score) for chunk_id, score in fused if chunk_id in hits],
                        lambda item: _section(hits[item[0]]))
        return [_result(score, hits[chunk_id]) for chunk_id, score in ranked[:k]]

    def _vector_search(self, owner: str, collection: str | None, query_vector: np.ndarray, k: int) -> Ranking:
        with self._lock:
            indexes = [ix for (o, c), ix in self._indexes.items() if o == owner and collection in (None, c)]
        ranking: Ranking = []
        for index in indexes:
            ranking.extend(index.search(query_vector, k))
        ranking.sort(key=lambda item: (-item[1], item[0]))
        return ranking[:k]


def _section(hit: ChunkHit) -> object:
    return section_key(hit.id, hit.document_id, hit.heading, hit.page)


def _result(score: float, hit: ChunkHit) -> Result:
    return Result(round(score, 6), hit.document_id, hit.name, hit.page, hit.heading, hit.text)
