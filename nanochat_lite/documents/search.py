"""Hybrid search over chunks, in memory: vectors and BM25, fused by a weighted sum.

    vectors = VectorIndex(dim=384); vectors.add(ids, embedder.embed(texts).vectors)
    words = BM25Index(); words.add(ids, texts)
    hits = HybridSearch(vectors, words).search(query, embedder.embed([query]).vectors[0], k=5)

Two halves, each giving its own ranking of chunk ids:
- `VectorIndex`: the chunks' L2-normalised float32 vectors as one (n, dim) matrix; a query
  is one matrix-vector product (cosine, as the vectors are unit length) and an
  argpartition for the top k. At 100k chunks x 384 dims that is 150 MB read per query.
- a `FullTextSearch`: anything that ranks chunk ids for a query string. `BM25Index` is
  the one here (Okapi BM25 over an inverted index, k1=1.2 and b=0.75 as SQLite FTS5's
  bm25() uses); a store's own full text (FTS5, tsvector) can stand in its place.

`HybridSearch` takes each half's top `candidates` (50) and fuses the two rankings. The
default is `convex(0.7)`: 0.7 x the vector score + 0.3 x the BM25 score, each min-max
normalised over its own candidates. The vectors to index come from `chunk_vectors`: each
chunk's own embedding blended with its section heading's (0.7 : 0.3). Last, `spread` lets
at most one chunk of a section into the first 10 places (the rest wait their turn).

Measured on Python's own documentation (bench/retrieval.py: 3 question sets x 4
phrasings, 79-168 questions each, 892 chunks), mean recall@5:
- with each chunk's own vector: convex 0.7 0.801, against 0.783 for reciprocal rank
  fusion at k=10, 0.774 for an even convex sum, 0.758 for RRF k=60 with the vectors'
  ranks counted twice and 0.744 for RRF at the customary k=60 (Cormack et al. 2009),
  which fell below vector search alone (0.788): there BM25 (0.573) is the weak half, and
  RRF at k=60 gives its ranks as much say as the vectors'. `rrf()` stays here for a
  full-text half whose scores do not normalise well.
- with heading-blended vectors: vector alone 0.837, convex 0.7 0.847 (0.8: 0.845); spread
  by section (one chunk of a section among the first 10) 0.870. The
  blend weight was chosen on half of the questions (split by a hash of the question)
  and checked on the other: hybrid 0.811 -> 0.869 on the tuning half, 0.791 -> 0.826 on
  the held-out half. The misses left are mostly pydoc's own labels: help("lists") is
  the mutable-sequence table, not the "Lists" section that comes back first;
  help("elif"), help("in") ask with one short word.
Measures that did not help there (mean recall@5 of the hybrid on own vectors, a side
run on the same sets): stop words (0.799); Porter stemming as FTS5's porter tokenizer
stems (0.801; BM25 alone fell to 0.541); the heading counted three times in BM25 (0.804,
BM25 alone 0.600); 100 candidates per half instead of 50 (0.800).

Why our own BM25 rather than a library: it is ~100 lines on numpy; it keeps FTS5's
parameters and nearly its tokenisation (runs of letters and digits, case-folded, as
FTS5's unicode61 tokenizer cuts them; unicode61 also folds diacritics by default, this
does not), so the measured half behaves like the one the SQLite store will run; and it
adds and removes single chunks, which index-once libraries (rank_bm25, bm25s) do not.
A store standing in must OR the query's terms: FTS5's MATCH on bare words ANDs them.

Not handled: stemming and stop words (FTS5's default has neither); phrase or boolean
queries (every query is a bag of words, any word may match); filtering by owner or
collection (keep one index per collection, or filter the ids the store gives).
"""

from __future__ import annotations

import math
import re
import threading
from array import array
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import numpy as np

RRF_K = 60
DEFAULT_VECTOR_WEIGHT = 0.7  # of the convex fusion, the default (measured: see above)
HEADING_BLEND = 0.7  # of a chunk's own vector against its heading's, in `chunk_vectors` (measured: see above)
DEFAULT_CANDIDATES = 50  # each half's top-N that goes into the fusion
SECTION_CAP = 1  # chunks of one section among the first SPREAD_PLACES results (measured: see above)
SPREAD_PLACES = 10
BM25_K1 = 1.2
BM25_B = 0.75
_TERM = re.compile(r"[^\W_]+")

Ranking = list[tuple[int, float]]  # (chunk id, score), best first
T = TypeVar("T")
Mode = Literal["hybrid", "vector", "fulltext"]


def terms(text: str) -> list[str]:
    """Full-text terms: runs of letters and digits, case-folded.

    'The "assert_stmt" Statement' -> ['the', 'assert', 'stmt', 'statement']
    """
    return _TERM.findall(text.casefold())


def chunk_vectors(embed: Callable[[list[str]], np.ndarray], texts: Sequence[str], headings: Sequence[str | None],
                  *, blend: float = HEADING_BLEND) -> np.ndarray:
    """The vectors to index for chunks: each chunk's embedding (`texts`: its heading and
    text, `Chunk.embed_text`) blended with its section heading's own embedding,
    blend x chunk + (1 - blend) x heading, L2-normalised; a chunk without a heading
    keeps its own vector. Each distinct heading is embedded once.

    Why: a section's title says what every chunk under it is about, but inside a
    200-piece chunk it is one line among many and its weight in the chunk's vector is
    small; a chunk deep in "Arithmetic conversions" or "Emulating container types" rarely
    mentions the words of its title again. `embed` is e.g. `lambda b: embedder.embed(b).vectors`.
    """
    if len(texts) != len(headings):
        raise ValueError(f"{len(texts)} texts for {len(headings)} headings")
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"blend must be within 0..1, got {blend}")
    vectors = np.asarray(embed(list(texts)), np.float32)  # (n, dim)
    distinct = sorted({h for h in headings if h})
    if not distinct or blend == 1.0:
        return vectors
    by_heading = dict(zip(distinct, np.asarray(embed(distinct), np.float32)))
    mixed = np.array([blend * v + (1.0 - blend) * by_heading[h] if h else v for v, h in zip(vectors, headings)],
                     np.float32).reshape(vectors.shape)
    mixed /= np.maximum(np.linalg.norm(mixed, axis=1, keepdims=True), 1e-12)
    return mixed


class FullTextSearch(Protocol):
    """The full-text half: the best `k` chunk ids for a query, with scores (higher is better)."""

    def search(self, query: str, k: int) -> Ranking: ...


class VectorIndex:
    """Unit vectors by chunk id; cosine top-k with one matrix-vector product.

    Searches read a snapshot without locking: the (matrix, ids, rows) triple is published
    as one tuple. `add` writes rows past the published end (or into a new matrix) before
    publishing; `remove` builds a new matrix. Writers take a lock among themselves.
    """

    def __init__(self, dim: int, *, capacity: int = 1024) -> None:
        self.dim = dim
        capacity = max(1, capacity)
        # (matrix (capacity, dim), ids (capacity,), rows in use): replaced whole, never mutated below `rows`
        self._view: tuple[np.ndarray, np.ndarray, int] = (
            np.empty((capacity, dim), np.float32), np.empty(capacity, np.int64), 0)
        self._known: set[int] = set()
        self._write = threading.Lock()

    def __len__(self) -> int:
        return self._view[2]

    def add(self, ids: Sequence[int], vectors: np.ndarray, *, new_only: bool = False) -> None:
        """Add rows; `vectors` is (len(ids), dim), rows of L2 norm 1 (the embedder's).
        `new_only`: skip the ids already in (a replica catching up with the store meets
        chunks it added itself) instead of raising."""
        vectors = np.asarray(vectors, np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"vectors have shape {vectors.shape}, expected ({len(ids)}, {self.dim})")
        with self._write:
            repeated = self._known.intersection(ids)
            if new_only and repeated:
                keep = [i for i, chunk_id in enumerate(ids) if chunk_id not in repeated]
                ids, vectors, repeated = [ids[i] for i in keep], vectors[keep], set()
            if repeated or len(set(ids)) != len(ids):
                raise ValueError(f"chunk ids already in the index or repeated: {sorted(repeated)[:5]}")
            if not ids:
                return
            matrix, id_array, n = self._view
            m = len(ids)
            if n + m > matrix.shape[0]:  # grow by doubling: amortised O(1) a row
                capacity = max(n + m, 2 * matrix.shape[0])
                grown = np.empty((capacity, self.dim), np.float32)
                grown[:n] = matrix[:n]
                grown_ids = np.empty(capacity, np.int64)
                grown_ids[:n] = id_array[:n]
                matrix, id_array = grown, grown_ids
            matrix[n : n + m] = vectors  # past every published snapshot's end
            id_array[n : n + m] = ids
            self._view = (matrix, id_array, n + m)
            self._known.update(ids)

    def holds_any(self, ids: Iterable[int]) -> bool:
        """Whether any of these chunk ids is in the index."""
        with self._write:
            return not self._known.isdisjoint(ids)

    def remove(self, ids: Iterable[int]) -> int:
        """Drop these chunk ids (unknown ones are ignored); returns how many were dropped."""
        with self._write:
            gone = self._known.intersection(ids)
            if not gone:
                return 0
            matrix, id_array, n = self._view
            keep = ~np.isin(id_array[:n], np.fromiter(gone, np.int64, len(gone)))
            kept = int(keep.sum())
            new_matrix = np.empty((matrix.shape[0], self.dim), np.float32)
            new_ids = np.empty(matrix.shape[0], np.int64)
            new_matrix[:kept] = matrix[:n][keep]
            new_ids[:kept] = id_array[:n][keep]
            self._view = (new_matrix, new_ids, kept)
            self._known -= gone
            return len(gone)

    def search(self, query: np.ndarray, k: int) -> Ranking:
        """The k chunk ids whose vectors have the highest cosine with `query` (unit length)."""
        matrix, ids, n = self._view  # one consistent snapshot
        if n == 0 or k <= 0:
            return []
        # einsum's own loop, not BLAS: the product is memory-bound, and waking BLAS's threads
        # on a busy 2-core machine cost more than it gave (100k rows, load 10: p50 49 ms with
        # BLAS's threads, 41 ms with one, 23 ms with einsum).
        scores = np.einsum("ij,j->i", matrix[:n], np.asarray(query, np.float32))  # (n,) cosines
        return _top(scores, ids[:n], k)


def _top(scores: np.ndarray, ids: np.ndarray, k: int, *, positive: bool = False) -> Ranking:
    """The k best (id, score), best first; ties broken by position, so results are stable."""
    k = min(k, scores.shape[0])
    if k < scores.shape[0]:
        picked = np.argpartition(-scores, k - 1)[:k]
    else:
        picked = np.arange(scores.shape[0])
    picked = picked[np.lexsort((picked, -scores[picked]))]
    if positive:
        picked = picked[scores[picked] > 0]
    return [(int(ids[i]), float(scores[i])) for i in picked]


class BM25Index:
    """Okapi BM25 over an inverted index held in arrays; a FullTextSearch.

    score(chunk, query) = sum over query terms t of
        idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / mean length)),
    idf(t) = ln(1 + (N - n_t + 0.5) / (n_t + 0.5)) (always positive, as Lucene's),
    N the chunks in the index, n_t those holding t. Removed chunks are skipped at query
    time (n_t and the mean length count only live ones) and their rows dropped once
    they are a quarter of the index.
    """

    def __init__(self, *, k1: float = BM25_K1, b: float = BM25_B,
                 tokenize: Callable[[str], list[str]] = terms) -> None:
        self.k1, self.b, self._tokenize = k1, b, tokenize
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._vocab: dict[str, int] = {}
        self._rows: list[array[int]] = []  # per term: the rows holding it, ascending
        self._tfs: list[array[float]] = []  # per term: its count in each of those rows
        self._lengths = array("f")  # per row: terms in the chunk
        self._ids = array("q")  # per row: the chunk id
        self._alive = bytearray()  # per row: 1 until removed
        self._row_of: dict[int, int] = {}
        self._texts_len = 0.0  # sum of live lengths
        self._dead = 0

    def __len__(self) -> int:
        return len(self._row_of)

    def add(self, ids: Sequence[int], texts: Sequence[str]) -> None:
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        with self._lock:
            repeated = [i for i in ids if i in self._row_of]
            if repeated or len(set(ids)) != len(ids):
                raise ValueError(f"chunk ids already in the index or repeated: {repeated[:5]}")
            for chunk_id, text in zip(ids, texts):
                self._add_one(chunk_id, text)

    def _add_one(self, chunk_id: int, text: str) -> None:
        row = len(self._ids)
        counts = Counter(self._tokenize(text))
        for term, tf in counts.items():
            t = self._vocab.get(term)
            if t is None:
                t = self._vocab[term] = len(self._rows)
                self._rows.append(array("i"))
                self._tfs.append(array("f"))
            self._rows[t].append(row)
            self._tfs[t].append(tf)
        length = sum(counts.values())
        self._lengths.append(length)
        self._ids.append(chunk_id)
        self._alive.append(1)
        self._row_of[chunk_id] = row
        self._texts_len += length

    def remove(self, ids: Iterable[int]) -> int:
        with self._lock:
            removed = 0
            for chunk_id in ids:
                row = self._row_of.pop(chunk_id, None)
                if row is not None:
                    self._alive[row] = 0
                    self._texts_len -= self._lengths[row]
                    self._dead += 1
                    removed += 1
            if self._dead > len(self._ids) // 4:
                self._compact()
            return removed

    def _compact(self) -> None:
        """Rebuild without the removed rows (their text is gone: rebuilt from the arrays)."""
        live = [r for r in range(len(self._ids)) if self._alive[r]]
        new_row = {r: i for i, r in enumerate(live)}
        rows, tfs = [], []
        for old_rows, old_tfs in zip(self._rows, self._tfs):
            pairs = [(new_row[r], tf) for r, tf in zip(old_rows, old_tfs) if r in new_row]
            rows.append(array("i", [r for r, _ in pairs]))
            tfs.append(array("f", [tf for _, tf in pairs]))
        self._rows, self._tfs = rows, tfs
        self._lengths = array("f", [self._lengths[r] for r in live])
        self._ids = array("q", [self._ids[r] for r in live])
        self._alive = bytearray([1]) * len(live)
        self._row_of = {chunk_id: i for i, chunk_id in enumerate(self._ids)}
        self._dead = 0

    def search(self, query: str, k: int) -> Ranking:
        """The k best-scoring chunk ids holding at least one query term."""
        wanted = Counter(self._tokenize(query))
        with self._lock:
            live = len(self._row_of)
            if live == 0 or k <= 0:
                return []
            lengths = np.frombuffer(self._lengths, np.float32)
            alive = np.frombuffer(self._alive, np.uint8) if self._dead else None
            mean_length = max(self._texts_len / live, 1e-9)
            scores = np.zeros(len(self._ids), np.float32)
            for term, query_tf in wanted.items():
                t = self._vocab.get(term)
                if t is None:
                    continue
                rows = np.frombuffer(self._rows[t], np.int32)
                tf = np.frombuffer(self._tfs[t], np.float32)
                if alive is not None:
                    mask = alive[rows].astype(bool)
                    rows, tf = rows[mask], tf[mask]
                if rows.size == 0:
                    continue
                idf = math.log(1.0 + (live - rows.size + 0.5) / (rows.size + 0.5))
                norm = self.k1 * (1.0 - self.b + self.b * lengths[rows] / mean_length)
                scores[rows] += np.float32(query_tf * idf) * tf * np.float32(self.k1 + 1.0) / (tf + norm)
            ids = np.frombuffer(self._ids, np.int64)
            return _top(scores, ids, k, positive=True)


# -- fusion -----------------------------------------------------------------------------
Fusion = Callable[[Ranking, Ranking], Ranking]


def rrf(k: int = RRF_K, *, vector_weight: float = 1.0) -> Fusion:
    """Reciprocal rank fusion: score = w/(k + vector rank) + 1/(k + text rank), ranks from 1."""
    def fuse(by_vector: Ranking, by_text: Ranking) -> Ranking:
        scores: dict[int, float] = {}
        for weight, ranking in ((vector_weight, by_vector), (1.0, by_text)):
            for rank, (chunk_id, _) in enumerate(ranking, start=1):
                scores[chunk_id] = scores.get(chunk_id, 0.0) + weight / (k + rank)
        return sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return fuse


def convex(vector_weight: float = 0.5) -> Fusion:
    """w * vector score + (1 - w) * text score, each min-max normalised over its own
    candidates (a chunk missing from one list gets 0 there)."""
    def normalised(ranking: Ranking) -> dict[int, float]:
        if not ranking:
            return {}
        values = [s for _, s in ranking]
        low, high = min(values), max(values)
        span = high - low
        return {i: (s - low) / span if span > 0 else 1.0 for i, s in ranking}

    def fuse(by_vector: Ranking, by_text: Ranking) -> Ranking:
        v, t = normalised(by_vector), normalised(by_text)
        scores = {i: vector_weight * v.get(i, 0.0) + (1 - vector_weight) * t.get(i, 0.0) for i in v.keys() | t.keys()}
        return sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return fuse


def section_key(chunk_id: int, document: str, heading: str | None, page: int | None) -> Hashable:
    """What `spread` groups by: a chunk's document and section heading; without a heading,
    its page (PDFs); with neither, the chunk alone. Why not the whole document then: a text
    without headings would get only one chunk among the first places however many of its
    parts match; through the SQLite store with the headings left out, that cost the
    section-heading questions 0.84 -> 0.77 recall@5.

    section_key(7, "d1", "Lists", 3) -> ("d1", "Lists"); section_key(7, "d1", None, 3) -> ("d1", 3)
    """
    if heading:
        return (document, heading)
    return (document, page) if page is not None else chunk_id


def spread(order: Sequence[T], section: Callable[[T], Hashable], *, cap: int = SECTION_CAP,
           places: int = SPREAD_PLACES) -> list[T]:
    """`order` with at most `cap` items of a section among the first `places`: an item past
    its section's cap waits, in order, until those places are filled or nothing else is left.

    spread([0, 1, 2, 3], section=lambda i: "aaab"[i], places=2) -> [0, 3, 1, 2]

    Why: a section's neighbouring chunks share words and meaning (and 32 tokens of
    overlap), so they come back together and fill the first places with one section; the
    section asked about is then often the next one down. Measured on the pydoc QA set
    (bench/retrieval.py), hybrid recall@5 0.847 -> 0.870, up on both halves (0.869 -> 0.893
    on the tuning half, 0.826 -> 0.849 held out); in scripts/rerank_try.py's cases two per
    section gave 0.855 against 0.875 for one, and one per document 0.855. The cost: an answer
    spread over several chunks of one long section gets its first chunk among the first
    places and the rest after.
    """
    head: list[T] = []
    waiting: list[T] = []
    seen: Counter[Hashable] = Counter()
    for item in order:
        key = section(item)
        if len(head) < places and seen[key] < cap:
            seen[key] += 1
            head.append(item)
        else:
            waiting.append(item)
    return head + waiting


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    score: float  # the fused score (hybrid), or the half's own score
    vector_rank: int | None  # 1-based rank among the vector candidates; None when not among them
    text_rank: int | None


class HybridSearch:
    """Both halves' top `candidates`, fused (`convex(DEFAULT_VECTOR_WEIGHT)` unless told
    otherwise); given `section_of` (chunk id -> its `section_key`), the fused order is
    `spread` by section, as the documents library ranks."""

    def __init__(self, vectors: VectorIndex, fulltext: FullTextSearch, *, candidates: int = DEFAULT_CANDIDATES,
                 fusion: Fusion | None = None, section_of: Callable[[int], Hashable] | None = None) -> None:
        self.vectors = vectors
        self.fulltext = fulltext
        self.candidates = candidates
        self.fusion = fusion or convex(DEFAULT_VECTOR_WEIGHT)
        self.section_of = section_of

    def search(self, query: str, query_vector: np.ndarray, k: int, *, mode: Mode = "hybrid") -> list[Hit]:
        """The k best chunks for `query`; `query_vector` is the query's embedding (unused in
        'fulltext' mode, where it may be None)."""
        if k <= 0:
            return []
        wanted = max(k, self.candidates)
        by_vector = self.vectors.search(query_vector, wanted) if mode != "fulltext" else []
        by_text = self.fulltext.search(query, wanted) if mode != "vector" else []
        v_rank = {chunk_id: r for r, (chunk_id, _) in enumerate(by_vector, start=1)}
        t_rank = {chunk_id: r for r, (chunk_id, _) in enumerate(by_text, start=1)}
        ranking = by_vector if mode == "vector" else by_text if mode == "fulltext" else self.fusion(by_vector, by_text)
        if mode == "hybrid" and self.section_of is not None:
            section_of = self.section_of
            ranking = spread(ranking, lambda item: section_of(item[0]))
        return [Hit(chunk_id, score, v_rank.get(chunk_id), t_rank.get(chunk_id)) for chunk_id, score in ranking[:k]]
