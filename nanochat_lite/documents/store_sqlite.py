"""The document store in the conversations' SQLite file (its own connection, WAL).

Full text is an FTS5 table over each chunk's heading and text (rowid = the chunk's id),
written and deleted in the same transactions as the chunks. Queries OR their words
(FTS5's bare words would AND them), each quoted so no FTS5 syntax gets through, and
rank by bm25() (negated: higher is better here).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..history import StorageUnavailable, StoreError
from .chunk import Chunk
from .search import terms
from .store import (
    DOC_COLUMNS,
    GENERATION_SCHEMA,
    MAX_FULLTEXT_TERMS,
    SCHEMA_VERSION,
    ChunkHit,
    SharedSQL,
    Document,
    Ranking,
    chunk_rows,
    in_order,
    pick_terms,
    tag,
)

BUSY_TIMEOUT_MS = 5000
MAX_CACHED_TERMS = 50_000  # term counts kept between writes (fulltext); past this the cache starts again
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS documents (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, collection TEXT NOT NULL, name TEXT NOT NULL,
        kind TEXT NOT NULL, bytes INTEGER NOT NULL, pages INTEGER,
        status TEXT NOT NULL CHECK (status IN ('indexing', 'ready', 'error')),
        error_code TEXT, error TEXT, chunks INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS documents_by_owner ON documents(owner, collection, created_at)",
    """CREATE TABLE IF NOT EXISTS chunks (
        id INTEGER PRIMARY KEY, document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        owner TEXT NOT NULL, position INTEGER NOT NULL, page INTEGER, heading TEXT, text TEXT NOT NULL,
        vector BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id)",
    # Diacritics kept, as search.terms() keeps them: the query's terms are looked up as they are.
    # `tags`: the owner's and the collection's tokens (store.tag), so that FTS5 itself keeps
    # to one owner's chunks (a join to chunks for the owner cost 3x the search at 10k rows).
    """CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(body, tags,
        tokenize = 'unicode61 remove_diacritics 0')""",
    # Each term's count of chunks, read from the index itself (no writes of its own): pick_terms.
    "CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts_terms USING fts5vocab(chunks_fts, 'row')",
    # The cascade removes chunks; this removes their full-text rows in the same statement.
    """CREATE TRIGGER IF NOT EXISTS chunks_fts_delete AFTER DELETE ON chunks BEGIN
        DELETE FROM chunks_fts WHERE rowid = old.id; END""",
    # Several processes on one file keep their vectors in step through these (store.py).
    *GENERATION_SCHEMA,
    """CREATE TABLE IF NOT EXISTS document_changes (generation INTEGER PRIMARY KEY, document_id TEXT NOT NULL,
        owner TEXT NOT NULL, removed BLOB)""",
)
_UNAVAILABLE_CODES = frozenset({5, 6, 8, 10, 13, 14})  # BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN


def match_expression(words: list[str]) -> str | None:
    """An FTS5 query that matches any of the words: ['deploy', 'srv'] -> '"deploy" OR "srv"'."""
    return " OR ".join(f'"{w}"' for w in words) or None


class SQLiteDocuments(SharedSQL):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # Each term's count of chunks, as chunks_fts_terms gives it, until the next commit: that
        # count reads the term's whole doclist (a word in most of 100k chunks: ~5 ms a query).
        # Cleared by this connection's writes and by another's (`PRAGMA data_version` moves).
        self._term_counts: dict[str, int] = {}
        self._counts_version = -1
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                     timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._create()
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise StoreError(f"{self.path}: cannot open the document tables ({e}). Check that this is a "
                             "Nanochat-Lite database, readable and writable, or use another --db.") from e

    def _create(self) -> None:
        with self._write():
            self._conn.execute("CREATE TABLE IF NOT EXISTS documents_schema (version INTEGER NOT NULL)")
            version = self._conn.execute("SELECT MAX(version) FROM documents_schema").fetchone()[0] or 0
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: the document tables have version {version}; this Nanochat-Lite "
                                 f"knows up to {SCHEMA_VERSION}. Upgrade it, or use another --db.")
            for statement in _SCHEMA:
                self._conn.execute(statement)
            if version < SCHEMA_VERSION:
                self._conn.execute("INSERT INTO documents_schema (version) VALUES (?)", (SCHEMA_VERSION,))

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                self._term_counts.clear()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self._conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as e:  # locked, full, read-only: "not now", a 503
            if getattr(e, "sqlite_errorcode", 0) & 0xFF in _UNAVAILABLE_CODES:
                raise StorageUnavailable(f"the document store: {e}") from e
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- writes ----------------------------------------------------------------------------
    def add(self, owner: str, collection: str, name: str, kind: str, size: int) -> Document:
        doc = Document(uuid.uuid4().hex, owner, collection, name, kind, size, None, "indexing", None, None, 0,
                       time.time())
        with self._write() as db:
            db.execute(f"INSERT INTO documents ({DOC_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                       (doc.id, doc.owner, doc.collection, doc.name, doc.kind, doc.bytes, doc.pages, doc.status,
                        doc.error_code, doc.error, doc.chunks, doc.created_at))
        return doc

    def finish(self, doc_id: str, *, pages: int | None, chunks: Sequence[Chunk],
               vectors: np.ndarray) -> list[int] | None:
        """Store the chunks and mark the document ready, all or nothing; their ids in order.
        None when the document was deleted meanwhile (nothing stored)."""
        with self._write() as db:
            row = db.execute("SELECT owner, collection FROM documents WHERE id = ? AND status = 'indexing'",
                             (doc_id,)).fetchone()
            if row is None:
                return None
            tags = f"{tag(row[0])} {tag(row[0], row[1])}"
            ids = []
            for *values, body in chunk_rows(doc_id, row[0], chunks, vectors):
                cur = db.execute("INSERT INTO chunks (document_id, owner, position, page, heading, text, vector) "
                                 "VALUES (?,?,?,?,?,?,?)", values)
                assert cur.lastrowid is not None
                db.execute("INSERT INTO chunks_fts (rowid, body, tags) VALUES (?, ?, ?)", (cur.lastrowid, body, tags))
                ids.append(cur.lastrowid)
            db.execute("UPDATE documents SET status = 'ready', pages = ?, chunks = ? WHERE id = ?",
                       (pages, len(ids), doc_id))
            self._changed(db, doc_id, row[0], None)
            return ids

    def fail(self, doc_id: str, code: str, message: str) -> None:
        with self._write() as db:
            row = db.execute("SELECT owner FROM documents WHERE id = ?", (doc_id,)).fetchone()
            gone = [r[0] for r in db.execute("DELETE FROM chunks WHERE document_id = ? RETURNING id", (doc_id,))]
            db.execute("UPDATE documents SET status = 'error', error_code = ?, error = ?, chunks = 0 WHERE id = ?",
                       (code, message, doc_id))
            if gone and row is not None:  # a ready document's chunks were searchable somewhere
                self._changed(db, doc_id, row[0], gone)

    def delete(self, doc_id: str, *, owner: str) -> list[int] | None:
        """Delete the owner's document with its chunks; the chunk ids gone, None if no such document."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM documents WHERE id = ? AND owner = ?", (doc_id, owner)).fetchone() is None:
                return None
            ids = [r[0] for r in db.execute("SELECT id FROM chunks WHERE document_id = ?", (doc_id,))]
            db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
            if ids:
                self._changed(db, doc_id, owner, ids)
            return ids

    # -- reads -----------------------------------------------------------------------------
    def fulltext(self, owner: str, query: str, k: int, *, collection: str | None = None,
                 total: int = 0) -> Ranking:
        """The owner's best k chunks by bm25 over the query's useful terms (store.pick_terms);
        `total` is the owner's chunk count (the library knows it)."""
        words = list(dict.fromkeys(terms(query)))[:MAX_FULLTEXT_TERMS]
        if not words or k <= 0:
            return []
        scope = tag(owner) if collection is None else tag(owner, collection)
        with self._read() as db:
            expression = match_expression(pick_terms(self._counts(db, words), total))
            if expression is None:
                return []
            rows = db.execute("SELECT rowid, -bm25(chunks_fts, 1.0, 0.0) AS score FROM chunks_fts "
                              "WHERE chunks_fts MATCH ? ORDER BY score DESC, rowid LIMIT ?",
                              (f'tags : "{scope}" AND body : ({expression})', k)).fetchall()
        return [(int(i), float(s)) for i, s in rows]

    def _counts(self, db: sqlite3.Connection, words: list[str]) -> dict[str, int]:
        """{term: chunks holding it} for each of `words` (0: in none); under the lock."""
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._counts_version or len(self._term_counts) > MAX_CACHED_TERMS:
            self._term_counts.clear()
            self._counts_version = version
        unknown = [w for w in words if w not in self._term_counts]
        if unknown:
            found = dict(db.execute(f"SELECT term, doc FROM chunks_fts_terms WHERE term IN "
                                    f"({','.join('?' * len(unknown))})", unknown).fetchall())
            self._term_counts.update((w, int(found.get(w, 0))) for w in unknown)
        return {w: self._term_counts[w] for w in words}

    def chunk_hits(self, ids: Sequence[int], *, owner: str | None = None) -> dict[int, ChunkHit]:
        """The chunks among `ids` that exist (and are `owner`'s, when given: SQLite may give a
        deleted chunk's id to a new one, another owner's, before a replica's vectors catch up)."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        mine, args = ("", list(ids)) if owner is None else (" AND c.owner = ?", [*ids, owner])
        with self._read() as db:
            rows = db.execute(f"SELECT c.id, c.document_id, d.name, c.page, c.heading, c.text FROM chunks c "
                              f"JOIN documents d ON d.id = c.document_id WHERE c.id IN ({marks}){mine}", args).fetchall()
        return {r[0]: ChunkHit(*r) for r in rows}

    def document_chunks(self, doc_ids: Sequence[str], *, owner: str) -> list[ChunkHit]:
        """Every chunk of `owner`'s documents `doc_ids`, each document in its own order
        (another owner's document gives none)."""
        if not doc_ids:
            return []
        marks = ",".join("?" * len(doc_ids))
        with self._read() as db:
            rows = db.execute(f"SELECT c.id, c.document_id, d.name, c.page, c.heading, c.text, c.position "
                              f"FROM chunks c JOIN documents d ON d.id = c.document_id "
                              f"WHERE c.document_id IN ({marks}) AND d.owner = ?", [*doc_ids, owner]).fetchall()
        return in_order([ChunkHit(*r[:6]) for r in rows], {r[0]: r[6] for r in rows}, doc_ids)
