"""The document store: documents and their chunks (text, page, heading, vector) in the
conversation store's own database, beside the conversations.

    store = open_document_store(spec)   # service.py; the same spec as history.open_store
    doc = store.add("alice", "default", "report.pdf", "pdf", 123_456)   # status 'indexing'
    ids = store.finish(doc.id, pages=12, chunks=chunks, vectors=vectors)  # one transaction
    store.fulltext("alice", "deploy the server", 50)  -> [(chunk id, score), ...]

Two tables, created with IF NOT EXISTS and versioned by a row of their own
(`documents_schema`), so the conversation store's migrations never see them:
documents(id, owner, collection, name, kind, bytes, pages, status, error_code, error,
chunks, created_at) and chunks(id, document_id, owner, position, page, heading, text,
vector). A vector is the embedder's float32 row, little-endian, as a BLOB / bytea.

Every read and write names its owner: another owner's document id answers exactly as a
missing one (None / False). A document's chunks are written in the same transaction
that marks it 'ready', so a failed or interrupted one has none; deleting a document
deletes its chunks (ON DELETE CASCADE, and the full-text rows with them).

Replicas (several processes on one PostgreSQL database, or on one SQLite file): every
write that adds or removes searchable chunks (`finish`, `delete`, a `fail` that dropped
any) bumps the one row of `documents_generation` and writes a row of `document_changes`
(the new generation, the document, its owner, and for a removal the chunk ids gone) in
its own transaction, as its last statements. The bump's row lock holds until commit, so
generations commit in order: a reader that sees generation G sees every change up to G.
A library reads the generation before each search (one tiny query) and, when it moved,
replays `changes_since` its last one (library.py). The log keeps the last
KEPT_CHANGES rows; a replica further behind reloads every vector.

Not handled here: parsing, chunking, embedding (indexer.py), the in-memory vector
matrix (library.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # numpy loads with the vectors, not with the web stack (cold start)
    import numpy as np

    from .chunk import Chunk

SCHEMA_VERSION = 2  # 2: documents_generation and document_changes (replicas keep their vectors in step)
STATUSES = ("indexing", "ready", "error")
DEFAULT_COLLECTION = "default"  # where an upload without a collection goes; chat's `documents: true`
MAX_COLLECTION_CHARS = 64
MAX_FULLTEXT_TERMS = 32  # of a query: more words add little and cost a scan each
FULLTEXT_ROW_BUDGET = 20_000  # chunks the full-text half may score for one query (pick_terms)
FULLTEXT_MIN_ROWS = 1_000  # a term in fewer chunks than this is never too common to rank by
VECTOR_DTYPE = "<f4"  # little-endian float32, 4 bytes a number
ID_DTYPE = "<i8"  # a removal's chunk ids in document_changes: little-endian int64
KEPT_CHANGES = 10_000  # rows of document_changes kept; a replica further behind reloads every vector
MAX_REPLAYED = 1_000  # changes replayed at once; past this a reload costs about the same
# A document left 'indexing' by a server that stopped: its bytes are gone, so it cannot resume.
INTERRUPTED = ("interrupted", "the server stopped while this document was being indexed; upload it again")

Ranking = list[tuple[int, float]]  # (chunk id, score), best first


@dataclass(frozen=True)
class Document:
    id: str
    owner: str
    collection: str
    name: str
    kind: str  # parse.KINDS
    bytes: int
    pages: int | None  # PDFs only
    status: str  # STATUSES
    error_code: str | None
    error: str | None
    chunks: int
    created_at: float  # seconds since the epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ChunkHit:
    """A stored chunk as a search result shows it."""

    id: int
    document_id: str
    name: str
    page: int | None
    heading: str | None
    text: str


@dataclass(frozen=True)
class VectorBlock:
    """All stored vectors of one owner's collection: ids (n,), vectors (n, dim)."""

    owner: str
    collection: str
    ids: np.ndarray
    vectors: np.ndarray


@dataclass(frozen=True)
class Changes:
    """What other writers changed since a generation (DocumentStore.changes_since): the
    chunk ids removed, per owner, and the vectors of the documents made ready since."""

    generation: int  # the store's generation these changes bring a reader to
    removed: list[tuple[str, np.ndarray]]  # (owner, chunk ids (n,) int64)
    added: list[VectorBlock]


class DocumentStore(Protocol):
    """What both backends answer. Every method blocks: call it from a worker thread."""

    def add(self, owner: str, collection: str, name: str, kind: str, size: int) -> Document: ...

    def finish(self, doc_id: str, *, pages: int | None, chunks: Sequence[Chunk],
               vectors: np.ndarray) -> list[int] | None: ...

    def fail(self, doc_id: str, code: str, message: str) -> None: ...

    def get(self, doc_id: str, *, owner: str) -> Document | None: ...

    def of_owner(self, *, owner: str, collection: str | None = None) -> list[Document]: ...

    def delete(self, doc_id: str, *, owner: str) -> list[int] | None: ...

    def vector_blocks(self) -> Iterator[VectorBlock]: ...

    def fulltext(self, owner: str, query: str, k: int, *, collection: str | None = None,
                 total: int = 0) -> Ranking: ...

    def chunk_hits(self, ids: Sequence[int], *, owner: str | None = None) -> dict[int, ChunkHit]: ...

    def generation(self) -> int: ...

    def changes_since(self, generation: int, *, loaded: AbstractSet[str] = frozenset()) -> Changes | None: ...

    def document_chunks(self, doc_ids: Sequence[str], *, owner: str) -> list[ChunkHit]: ...

    def interrupt_indexing(self) -> int: ...

    def close(self) -> None: ...


def collection_name(raw: object) -> str | None:
    """The collection `raw` names, stripped, or None when it is not 1 to
    MAX_COLLECTION_CHARS printable characters (the upload's field and chat's `documents`
    take the same names): "  work " -> "work"; "" -> None; 7 -> None."""
    if not isinstance(raw, str):
        return None
    name = raw.strip()
    return name if 0 < len(name) <= MAX_COLLECTION_CHARS and name.isprintable() else None


def final_event(doc: Document) -> dict[str, Any] | None:
    """The final event of a finished stored document (None while it is indexing)."""
    if doc.status == "ready":
        return {"type": "ready", "chunks": doc.chunks}
    if doc.status == "error":
        return {"type": "error", "code": doc.error_code or "unreadable", "message": doc.error or ""}
    return None


# -- what both SQL stores do alike ---------------------------------------------------------
DOC_COLUMNS = "id, owner, collection, name, kind, bytes, pages, status, error_code, error, chunks, created_at"


class SharedSQL:
    """The statements the SQLite and PostgreSQL stores share, written once with `?` marks
    (`_MARK` is the driver's placeholder). A store gives `_read()` and `_write()`: context
    managers yielding something with `execute(sql, args)`."""

    _MARK = "?"

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _sql(self, text: str) -> str:
        return text if self._MARK == "?" else text.replace("?", self._MARK)

    def interrupt_indexing(self) -> int:
        with self._write() as db:
            return int(db.execute(self._sql("UPDATE documents SET status = 'error', error_code = ?, error = ? "
                                            "WHERE status = 'indexing'"), INTERRUPTED).rowcount)

    def get(self, doc_id: str, *, owner: str) -> Document | None:
        with self._read() as db:
            row = db.execute(self._sql(f"SELECT {DOC_COLUMNS} FROM documents WHERE id = ? AND owner = ?"),
                             (doc_id, owner)).fetchone()
        return Document(*row) if row else None

    def of_owner(self, *, owner: str, collection: str | None = None) -> list[Document]:
        where, args = ("owner = ?", [owner]) if collection is None else ("owner = ? AND collection = ?",
                                                                         [owner, collection])
        with self._read() as db:
            rows = db.execute(self._sql(f"SELECT {DOC_COLUMNS} FROM documents WHERE {where} "
                                        "ORDER BY created_at DESC, id"), args).fetchall()
        return [Document(*r) for r in rows]

    def vector_blocks(self) -> Iterator[VectorBlock]:
        with self._read() as db:
            rows = db.execute("SELECT c.id, d.owner, d.collection, c.vector FROM chunks c "
                              "JOIN documents d ON d.id = c.document_id ORDER BY d.owner, d.collection, c.id").fetchall()
        return group_vectors(iter(rows))

    # -- replicas: the generation and its log (see the module's docstring) -------------------
    def generation(self) -> int:
        """How many searchable changes the store has seen, all writers together."""
        with self._read() as db:
            row = db.execute("SELECT generation FROM documents_generation").fetchone()
        return int(row[0]) if row else 0

    def changes_since(self, generation: int, *, loaded: AbstractSet[str] = frozenset()) -> Changes | None:
        """The changes after `generation`, up to the store's current one (the vectors of the
        documents in `loaded` not read: the caller holds them already); None when they
        cannot be replayed (the log no longer reaches back, too many, or the store is older
        than `generation`: a restored database): then reload every vector.

        Each statement reads its own snapshot: the chunks of a document made ready may be
        gone by the time they are read (its removal is a later change, replayed next time),
        and replaying a change twice is harmless (known ids are skipped, unknown ones ignored)."""
        import numpy as np

        with self._read() as db:
            row = db.execute("SELECT generation FROM documents_generation").fetchone()
            now = int(row[0]) if row else 0
            if now == generation:
                return Changes(now, [], [])
            if now < generation or now - generation > MAX_REPLAYED:
                return None
            rows = db.execute(self._sql("SELECT generation, document_id, owner, removed FROM document_changes "
                                        "WHERE generation > ? AND generation <= ? ORDER BY generation"),
                              (generation, now)).fetchall()
            if len(rows) != now - generation:  # pruned past `generation`
                return None
            ready = [r[1] for r in rows if r[3] is None and r[1] not in loaded]
            added: list[tuple[int, str, str, bytes]] = []
            if ready:
                added = db.execute(self._sql(
                    "SELECT c.id, d.owner, d.collection, c.vector FROM chunks c JOIN documents d ON d.id = c.document_id "
                    f"WHERE c.document_id IN ({','.join('?' * len(ready))}) ORDER BY d.owner, d.collection, c.id"),
                    ready).fetchall()
        removed = [(str(r[2]), np.frombuffer(bytes(r[3]), ID_DTYPE).astype(np.int64)) for r in rows if r[3] is not None]
        return Changes(now, removed, list(group_vectors(iter(added))))

    def _changed(self, db: Any, doc_id: str, owner: str, removed: Sequence[int] | None) -> None:
        """Bump the generation and log this change, inside the writer's transaction and as
        its last statements: the row lock taken here is held until commit, so keep what
        follows it short. `removed`: the chunk ids gone, or None when the document became ready."""
        import numpy as np

        row = db.execute("UPDATE documents_generation SET generation = generation + 1 RETURNING generation").fetchone()
        if row is None:
            from ..history import StoreError

            raise StoreError("the documents_generation row is missing: reopen the store to recreate it")
        now = int(row[0])
        blob = None if removed is None else np.asarray(removed, ID_DTYPE).tobytes()
        db.execute(self._sql("INSERT INTO document_changes (generation, document_id, owner, removed) "
                             "VALUES (?, ?, ?, ?)"), (now, doc_id, owner, blob))
        if now > KEPT_CHANGES:
            db.execute(self._sql("DELETE FROM document_changes WHERE generation <= ?"), (now - KEPT_CHANGES,))


# Both stores' replica tables (store.py's docstring); `generation` starts at 0.
GENERATION_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS documents_generation (one INTEGER PRIMARY KEY CHECK (one = 1), "
    "generation BIGINT NOT NULL)",
    "INSERT INTO documents_generation (one, generation) VALUES (1, 0) ON CONFLICT (one) DO NOTHING",
)


# -- helpers both halves share ------------------------------------------------------------
def chunk_rows(doc_id: str, owner: str, chunks: Sequence[Chunk], vectors: np.ndarray) -> list[tuple[Any, ...]]:
    """(document_id, owner, position, page, heading, text, vector bytes, full-text body) per chunk."""
    if vectors.shape[0] != len(chunks):
        raise ValueError(f"{len(chunks)} chunks but {vectors.shape[0]} vectors")
    import numpy as np

    rows = []
    for chunk, vector in zip(chunks, np.asarray(vectors, VECTOR_DTYPE)):
        text = clean(chunk.text)
        heading = clean(chunk.heading) if chunk.heading else None
        body = f"{heading}\n{text}" if heading else text
        rows.append((doc_id, owner, chunk.position, chunk.page, heading, text, vector.tobytes(), body))
    return rows


def in_order(hits: Sequence[ChunkHit], positions: dict[int, int], doc_ids: Sequence[str]) -> list[ChunkHit]:
    """Chunks ordered by their document's place in `doc_ids`, then their own position
    in it (`positions`: chunk id -> position): a document reads in its own order."""
    rank = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    return sorted(hits, key=lambda h: (rank.get(h.document_id, len(rank)), positions[h.id]))


def term_cap(total: int, budget: int = FULLTEXT_ROW_BUDGET) -> int:
    """The most chunks a term may be in and still be ranked by (pick_terms): a store may
    stop counting a term's chunks one past this."""
    return min(budget, max(FULLTEXT_MIN_ROWS, total // 10))


def tag(*parts: str) -> str:
    """One full-text token standing for an owner (or an owner's collection), whatever
    characters its name has: tag("alice") -> "o3f1c...", tag("alice", "geo") -> "c9a0..."."""
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:20]
    return ("o" if len(parts) == 1 else "c") + digest


def clean(text: str) -> str:
    """Text a database takes: PostgreSQL text holds no NUL, UTF-8 no lone surrogate."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def stack_vectors(blobs: Sequence[bytes], dim: int | None = None) -> np.ndarray:
    """BLOBs of float32 rows -> (n, dim) float32."""
    import numpy as np

    if not blobs:
        return np.zeros((0, dim or 0), np.float32)
    joined = np.frombuffer(b"".join(blobs), VECTOR_DTYPE)
    width = dim or len(blobs[0]) // 4
    return joined.reshape(len(blobs), width).astype(np.float32, copy=False)


def group_vectors(rows: Iterator[tuple[int, str, str, bytes]]) -> Iterator[VectorBlock]:
    """(chunk id, owner, collection, blob) rows ordered by owner and collection -> blocks."""
    import numpy as np

    current: tuple[str, str] | None = None
    ids: list[int] = []
    blobs: list[bytes] = []
    for chunk_id, owner, collection, blob in rows:
        if current is not None and (owner, collection) != current:
            yield VectorBlock(current[0], current[1], np.asarray(ids, np.int64), stack_vectors(blobs))
            ids, blobs = [], []
        current = (owner, collection)
        ids.append(chunk_id)
        blobs.append(bytes(blob))
    if current is not None:
        yield VectorBlock(current[0], current[1], np.asarray(ids, np.int64), stack_vectors(blobs))


def pick_terms(document_counts: dict[str, int], total: int, budget: int = FULLTEXT_ROW_BUDGET) -> list[str]:
    """The query terms the full-text half ranks by: rarest first, while the chunks holding
    them add up to at most `budget`; terms in no chunk, and (past FULLTEXT_MIN_ROWS) terms
    in more than a tenth of the owner's `total` chunks, are left out.

    ({"the": 99_000, "knight": 40, "moves": 3_000}, 100_000) -> ["knight", "moves"]

    Why: scoring every chunk that holds a common word is what costs (measured at 100k
    chunks, a query with "the" in it: 400 ms on SQLite, most of it bm25() over every
    row), and such a word moves BM25 little (idf ln(1 + 1/99) ~ 0.01 against ~7.8 for a
    word in 40 chunks). A query of common words only leaves the ranking to the vectors.
    """
    common = term_cap(total, budget)
    chosen, rows = [], 0
    for term, count in sorted(document_counts.items(), key=lambda item: (item[1], item[0])):
        if count == 0:
            continue
        if rows + count > budget or count > common:
            break
        chosen.append(term)
        rows += count
    return chosen
