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

Not handled here: parsing, chunking, embedding (indexer.py), the in-memory vector
matrix (library.py), several processes sharing one PostgreSQL database's vectors (each
builds its matrix at start-up and only sees its own additions after that).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from .chunk import Chunk

SCHEMA_VERSION = 1
STATUSES = ("indexing", "ready", "error")
MAX_FULLTEXT_TERMS = 32  # of a query: more words add little and cost a scan each
VECTOR_DTYPE = np.dtype("<f4")
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

    def fulltext(self, owner: str, query: str, k: int, *, collection: str | None = None) -> Ranking: ...

    def chunk_hits(self, ids: Sequence[int]) -> dict[int, ChunkHit]: ...

    def interrupt_indexing(self) -> int: ...

    def close(self) -> None: ...


# -- helpers both halves share ------------------------------------------------------------
def chunk_rows(doc_id: str, owner: str, chunks: Sequence[Chunk], vectors: np.ndarray) -> list[tuple[Any, ...]]:
    """(document_id, owner, position, page, heading, text, vector bytes, full-text body) per chunk."""
    if vectors.shape[0] != len(chunks):
        raise ValueError(f"{len(chunks)} chunks but {vectors.shape[0]} vectors")
    rows = []
    for chunk, vector in zip(chunks, np.asarray(vectors, VECTOR_DTYPE)):
        text = clean(chunk.text)
        heading = clean(chunk.heading) if chunk.heading else None
        body = f"{heading}\n{text}" if heading else text
        rows.append((doc_id, owner, chunk.position, chunk.page, heading, text, vector.tobytes(), body))
    return rows


def clean(text: str) -> str:
    """Text a database takes: PostgreSQL text holds no NUL, UTF-8 no lone surrogate."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def stack_vectors(blobs: Sequence[bytes], dim: int | None = None) -> np.ndarray:
    """BLOBs of float32 rows -> (n, dim) float32."""
    if not blobs:
        return np.zeros((0, dim or 0), np.float32)
    joined = np.frombuffer(b"".join(blobs), VECTOR_DTYPE)
    width = dim or len(blobs[0]) // VECTOR_DTYPE.itemsize
    return joined.reshape(len(blobs), width).astype(np.float32, copy=False)


def group_vectors(rows: Iterator[tuple[int, str, str, bytes]]) -> Iterator[VectorBlock]:
    """(chunk id, owner, collection, blob) rows ordered by owner and collection -> blocks."""
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
