"""The document store in the conversations' PostgreSQL database (its own connection).

Full text without an extension: each chunk's heading and text as a `tsvector` column
(the `simple` configuration: no stemming, no stop words, as FTS5's default), GIN-indexed,
written with the chunk; a query ORs its words (`'deploy' | 'server'`), each quoted, so
no tsquery syntax gets through, ranked by ts_rank. Vectors are bytea of float32 rows.

Tables are created under an advisory lock, so replicas starting together do not race.
A broken connection (a database restart) is reopened on the next call; the call that
saw it break answers StorageUnavailable (503).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np
import psycopg
from psycopg import errors as pg_errors

from ..history import StorageUnavailable, StoreError
from ..history.postgres_connect import connect, redact
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
)

log = logging.getLogger("nanochat_lite")
_SCHEMA_LOCK = 0x6E63_646F  # pg_advisory_xact_lock key: "ncdo"
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS documents (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, collection TEXT NOT NULL, name TEXT NOT NULL,
        kind TEXT NOT NULL, bytes BIGINT NOT NULL, pages INTEGER,
        status TEXT NOT NULL CHECK (status IN ('indexing', 'ready', 'error')),
        error_code TEXT, error TEXT, chunks INTEGER NOT NULL DEFAULT 0, created_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS documents_by_owner ON documents(owner, collection, created_at)",
    """CREATE TABLE IF NOT EXISTS chunks (
        id BIGSERIAL PRIMARY KEY, document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        owner TEXT NOT NULL, position INTEGER NOT NULL, page INTEGER, heading TEXT, text TEXT NOT NULL,
        vector BYTEA NOT NULL, body tsvector NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id)",
    # No index on chunks(owner), on purpose: before the table's first ANALYZE the planner
    # took it over the GIN index and ranked every chunk of the owner (70 ms at 10k chunks
    # instead of 10). The GIN index finds the matching chunks; the owner filters those.
    "CREATE INDEX IF NOT EXISTS chunks_body ON chunks USING GIN (body)",
    "CREATE TABLE IF NOT EXISTS chunk_terms (term TEXT PRIMARY KEY, chunks BIGINT NOT NULL)",
    # Replicas keep their vectors in step through these (store.py).
    *GENERATION_SCHEMA,
    """CREATE TABLE IF NOT EXISTS document_changes (generation BIGINT PRIMARY KEY, document_id TEXT NOT NULL,
        owner TEXT NOT NULL, removed BYTEA)""",
)
# A chunk's row (text ~1 KB, vector 1.5 KB, tsvector ~1.7 KB) is over PostgreSQL's 2 KB
# TOAST target, and by default the tsvector went out of line with the others: ts_rank then
# fetched every matching chunk's tsvector through the TOAST index (100k chunks, a query
# matching 4-6k of them: p50 81 ms at load 9 on 2 cores). MAIN keeps it in the row
# (compressed if need be) and moves the text and the vector out instead: 32 ms, the same
# ranking. Rows written before keep their layout until their document is stored again.
_BODY_INLINE = ("SELECT attstorage FROM pg_attribute WHERE attrelid = 'chunks'::regclass AND attname = 'body'",
                "ALTER TABLE chunks ALTER COLUMN body SET STORAGE MAIN")


def tsquery(words: list[str]) -> str | None:
    """A tsquery text matching any word: ['deploy', 'srv'] -> "'deploy' | 'srv'"."""
    return " | ".join("'" + w.replace("'", "''") + "'" for w in words) or None


# Each lexeme's count of chunks (pick_terms), kept in step with the chunks in the same
# transactions: counting through the GIN index at query time cost 10k heap reads for a
# common word at 100k chunks. ts_stat reads a document's tsvectors in C.
_TERMS = """INSERT INTO chunk_terms (term, chunks)
    SELECT word, %s * ndoc FROM ts_stat(format('SELECT body FROM chunks WHERE document_id = %%L', %s::text))
    ORDER BY word
    ON CONFLICT (term) DO UPDATE SET chunks = chunk_terms.chunks + excluded.chunks"""
# (sign, document id): +1 after a document's chunks are written, -1 before they are deleted.
# One statement both ways, rows taken in term order: two replicas storing documents at
# once lock the shared terms in the same order, so they wait for each other, never deadlock.


class PostgresDocuments(SharedSQL):
    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._conn = self._connect()
        try:
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                self._conn.execute("CREATE TABLE IF NOT EXISTS documents_schema (version INTEGER NOT NULL)")
                row = self._conn.execute("SELECT MAX(version) FROM documents_schema").fetchone()
                version = (row[0] if row else None) or 0
                if version > SCHEMA_VERSION:
                    raise StoreError(f"{redact(url)}: the document tables have version {version}; this "
                                     f"Nanochat-Lite knows up to {SCHEMA_VERSION}. Upgrade it.")
                for statement in _SCHEMA:
                    self._conn.execute(statement)
                self._body_inline()
                if version < SCHEMA_VERSION:
                    self._conn.execute("INSERT INTO documents_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        except psycopg.Error as e:
            self._conn.close()
            raise StoreError(f"{redact(url)}: cannot create the document tables ({str(e).splitlines()[0]}). "
                             "The role needs CREATE on the database.") from e
        except BaseException:
            self._conn.close()
            raise

    def _body_inline(self) -> None:
        """Set the tsvector's storage to MAIN, once (ALTER TABLE takes the table's lock). A
        table busy past the lock timeout (other replicas searching) is left for the next start:
        its searches are slower, not wrong."""
        storage = self._conn.execute(_BODY_INLINE[0]).fetchone()
        if storage is None or storage[0] == "m":
            return
        try:
            with self._conn.transaction():  # a savepoint: a timeout here leaves the schema's transaction usable
                self._conn.execute(_BODY_INLINE[1])
        except pg_errors.LockNotAvailable:
            log.warning("documents: the chunks table was busy; its full-text column stays out of line until "
                        "the next start")

    def _connect(self) -> psycopg.Connection[Any]:
        return connect(self.url, what="documents")

    _MARK = "%s"  # psycopg's placeholder, for the statements SharedSQL writes with ?

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection inside a transaction block (committed at the end, rolled back on error)."""
        with self._query() as conn, conn.transaction():
            yield conn

    @contextmanager
    def _query(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection for single-statement reads, outside a transaction block: one round
        trip a statement (autocommit) instead of three with BEGIN and COMMIT."""
        with self._lock:
            try:
                if self._conn.closed:
                    self._conn = self._connect()
                yield self._conn
            except (psycopg.OperationalError, pg_errors.DiskFull, pg_errors.ReadOnlySqlTransaction) as e:
                raise StorageUnavailable(f"the document store cannot be used right now "
                                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
            except StoreError as e:  # could not reconnect
                raise StorageUnavailable(str(e)) from e

    def _read(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self._query()

    def _write(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self._tx()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- writes ----------------------------------------------------------------------------
    def add(self, owner: str, collection: str, name: str, kind: str, size: int) -> Document:
        doc = Document(uuid.uuid4().hex, owner, collection, name, kind, size, None, "indexing", None, None, 0,
                       time.time())
        with self._tx() as db:
            db.execute(f"INSERT INTO documents ({DOC_COLUMNS}) VALUES ({','.join(['%s'] * 12)})",
                       (doc.id, doc.owner, doc.collection, doc.name, doc.kind, doc.bytes, doc.pages, doc.status,
                        doc.error_code, doc.error, doc.chunks, doc.created_at))
        return doc

    def finish(self, doc_id: str, *, pages: int | None, chunks: Sequence[Chunk],
               vectors: np.ndarray) -> list[int] | None:
        with self._tx() as db:
            row = db.execute("SELECT owner FROM documents WHERE id = %s AND status = 'indexing' FOR UPDATE",
                             (doc_id,)).fetchone()
            if row is None:
                return None
            ids: list[int] = []
            with db.cursor() as cur:
                for values in chunk_rows(doc_id, row[0], chunks, vectors):
                    cur.execute("INSERT INTO chunks (document_id, owner, position, page, heading, text, vector, body) "
                                "VALUES (%s,%s,%s,%s,%s,%s,%s, to_tsvector('simple', %s)) RETURNING id", values)
                    got = cur.fetchone()
                    assert got is not None
                    ids.append(int(got[0]))
            db.execute(_TERMS, (1, doc_id))
            db.execute("UPDATE documents SET status = 'ready', pages = %s, chunks = %s WHERE id = %s",
                       (pages, len(ids), doc_id))
            self._changed(db, doc_id, row[0], None)  # last: its row lock is held until commit
            return ids

    def fail(self, doc_id: str, code: str, message: str) -> None:
        with self._tx() as db:
            row = db.execute("SELECT owner FROM documents WHERE id = %s", (doc_id,)).fetchone()
            db.execute(_TERMS, (-1, doc_id))
            gone = [int(r[0]) for r in db.execute("DELETE FROM chunks WHERE document_id = %s RETURNING id", (doc_id,))]
            db.execute("UPDATE documents SET status = 'error', error_code = %s, error = %s, chunks = 0 WHERE id = %s",
                       (code, message.replace("\x00", ""), doc_id))
            if gone and row is not None:  # a ready document's chunks were searchable somewhere
                self._changed(db, doc_id, row[0], gone)

    def delete(self, doc_id: str, *, owner: str) -> list[int] | None:
        with self._tx() as db:
            row = db.execute("SELECT 1 FROM documents WHERE id = %s AND owner = %s FOR UPDATE",
                             (doc_id, owner)).fetchone()
            if row is None:
                return None
            ids = [int(r[0]) for r in db.execute("SELECT id FROM chunks WHERE document_id = %s", (doc_id,))]
            db.execute(_TERMS, (-1, doc_id))
            db.execute("DELETE FROM documents WHERE id = %s", (doc_id,))
            if ids:
                self._changed(db, doc_id, owner, ids)  # last: its row lock is held until commit
            return ids

    # -- reads -----------------------------------------------------------------------------
    def fulltext(self, owner: str, query: str, k: int, *, collection: str | None = None,
                 total: int = 0) -> Ranking:
        words = list(dict.fromkeys(terms(query)))[:MAX_FULLTEXT_TERMS]
        if not words or k <= 0:
            return []
        with self._query() as db:
            # A word the table does not hold (a lexeme PostgreSQL's parser cut differently) is
            # kept: the GIN index finds its chunks, if any, at no cost.
            counts = dict.fromkeys(words, 1)
            counts.update((str(t), int(n)) for t, n in db.execute(
                "SELECT term, chunks FROM chunk_terms WHERE term = ANY(%s)", (words,)))
        text = tsquery(pick_terms(counts, total))
        if text is None:
            return []
        sql = ("SELECT c.id, ts_rank(c.body, q) AS score FROM chunks c, to_tsquery('simple', %s) q "
               + "WHERE c.body @@ q AND c.owner = %s "
               + ("AND c.document_id IN (SELECT id FROM documents WHERE owner = %s AND collection = %s) "
                  if collection is not None else "")
               + "ORDER BY score DESC, c.id LIMIT %s")
        args: list[Any] = [text, owner] + ([owner, collection] if collection is not None else []) + [k]
        with self._query() as db:
            return [(int(i), float(s)) for i, s in db.execute(sql, args)]

    def chunk_hits(self, ids: Sequence[int], *, owner: str | None = None) -> dict[int, ChunkHit]:
        if not ids:
            return {}
        mine, args = ("", [list(ids)]) if owner is None else (" AND c.owner = %s", [list(ids), owner])
        with self._query() as db:
            rows = db.execute("SELECT c.id, c.document_id, d.name, c.page, c.heading, c.text FROM chunks c "
                              f"JOIN documents d ON d.id = c.document_id WHERE c.id = ANY(%s){mine}", args).fetchall()
        return {int(r[0]): ChunkHit(int(r[0]), *r[1:]) for r in rows}

    def document_chunks(self, doc_ids: Sequence[str], *, owner: str) -> list[ChunkHit]:
        """Every chunk of `owner`'s documents `doc_ids`, each document in its own order."""
        if not doc_ids:
            return []
        with self._query() as db:
            rows = db.execute("SELECT c.id, c.document_id, d.name, c.page, c.heading, c.text, c.position "
                              "FROM chunks c JOIN documents d ON d.id = c.document_id "
                              "WHERE c.document_id = ANY(%s) AND d.owner = %s", (list(doc_ids), owner)).fetchall()
        return in_order([ChunkHit(int(r[0]), *r[1:6]) for r in rows], {int(r[0]): r[6] for r in rows}, doc_ids)
