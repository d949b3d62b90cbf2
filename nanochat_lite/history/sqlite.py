"""The SQLite conversation store (the embedded default): conversations and their
messages in one file.

One `SQLiteStore` owns one connection, used under a lock, so the server may call
it from any worker thread (never from the event loop: every method blocks, and every
write waits for an fsync). Each write is one `BEGIN IMMEDIATE ... COMMIT` that has
finished before the method returns, so whatever the server acknowledged survives a
SIGKILL (and, with `synchronous=FULL`, a power cut).

Full-text search uses FTS5 indexes kept in step with the tables by triggers, inside the
same transactions. User text never reaches the MATCH syntax: each word becomes a quoted
prefix term (`deploy NEAR(srv*` -> `"deploy" * "NEAR(srv*" *`).

The schema moves forward only, through `_MIGRATIONS` (sqlite_schema.py); a file written by a newer
Nanochat-Lite is refused rather than guessed at.

Not handled here: limits on message size (the server checks them), the model,
computing embeddings (the server does; vectors are stored here), reading configuration
(the caller passes a path). The interface and records are in `store.py`.
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .store import (
    HIT_KEYS,
    LOCAL_OWNER,
    MARK_END,
    MARK_START,
    AlreadyExists,
    Conversation,
    Message,
    NotFound,
    StorageUnavailable,
    StoreError,
    Usage,
    check_client_id,
    check_conversation_id,
    check_export_format,
    check_message,
    check_owner,
    check_page,
    check_usage,
    decode_citations,
    encode_citations,
    merge_hits,
    render_export,
)
from .sqlite_schema import SCHEMA_VERSION, _migrate, _transaction
from .text import _clean, _clean_title, _match_expression, make_title

BUSY_TIMEOUT_MS = 5000  # another process (a CLI export) may hold the write lock briefly

_CONVERSATION_SELECT = """
    SELECT c.id, c.title, c.system, c.created_at, c.updated_at,
           (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id), c.owner
    FROM conversations c"""
_MESSAGE_COLUMNS = """id, conversation_id, role, content, status, created_at,
    prompt_tokens, completion_tokens, ttft_ms, duration_ms, model, params, client_id, answer_id,
    citations"""
# SQLite result codes (the low byte of sqlite_errorcode) that mean "not now", not "a bug":
# BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN.
_UNAVAILABLE_CODES = frozenset({5, 6, 8, 10, 13, 14})


__all__ = ["SCHEMA_VERSION", "SQLiteStore"]


def _owned(owner: str | None, column: str = "c.owner", joiner: str = "AND") -> tuple[str, tuple[str, ...]]:
    """The SQL that limits a query to `owner`'s rows ("" for None: every owner's).
    _owned("alice") -> (" AND c.owner = ?", ("alice",)); _owned(None) -> ("", ())"""
    checked = check_owner(owner, any_allowed=True)
    return ("", ()) if checked is None else (f" {joiner} {column} = ?", (checked,))


class SQLiteStore:
    """Conversations and messages in the SQLite file at `path` (":memory:" for tests).

    Creates the file and its folder if needed and migrates the schema forward.
    Raises StoreError if the file is not a database or was written by a newer version.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._last_time = 0.0
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; sqlite3's implicit
        # transactions would otherwise leave reads holding a snapshot open.
        self._conn = sqlite3.connect(
            self.path,
            check_same_thread=False,
            isolation_level=None,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            _migrate(self._conn, path=self.path)  # with foreign keys off (see migration 4)
            self._conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise StoreError(
                f"{self.path}: cannot open the conversation database ({e}). Check that "
                "this is a Nanochat-Lite history file, readable and writable, or use another path."
            ) from e
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- conversations ---------------------------------------------------------------

    def create(
        self,
        *,
        system: str | None = None,
        title: str | None = None,
        conversation_id: str | None = None,
        owner: str = LOCAL_OWNER,
    ) -> Conversation:
        """A new, empty conversation of `owner`. Raises AlreadyExists if conversation_id is
        taken (by anyone: ids are global), ValueError if it is not 1-64 characters of [0-9A-Za-z_-]."""
        cid = check_conversation_id(uuid.uuid4().hex if conversation_id is None else conversation_id)
        check_owner(owner)
        clean_title = _clean_title(title or "")
        clean_system = None if system is None else _clean(system)
        with self._write() as conn:
            now = self._now()
            try:
                conn.execute(
                    "INSERT INTO conversations (id, title, system, created_at, updated_at, owner)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (cid, clean_title, clean_system, now, now, owner),
                )
            except sqlite3.IntegrityError as e:
                raise AlreadyExists(f"conversation {cid} already exists") from e
        return Conversation(cid, clean_title, clean_system, now, now, 0, owner)

    def get(self, conversation_id: str, *, owner: str | None = LOCAL_OWNER) -> Conversation | None:
        with self._read() as conn:
            return self._get(conn, conversation_id, owner)

    def list(self, *, limit: int = 20, offset: int = 0,
             owner: str | None = LOCAL_OWNER) -> tuple[builtins.list[Conversation], int]:
        """One page of `owner`'s conversations (None: everyone's), most recently updated
        first, and the total count."""
        check_page(limit, offset)
        where, args = _owned(owner, joiner="WHERE")
        with self._read() as conn:
            rows = conn.execute(
                _CONVERSATION_SELECT + where + " ORDER BY c.updated_at DESC, c.seq DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            (total,) = conn.execute("SELECT COUNT(*) FROM conversations c" + where, args).fetchone()
        return [Conversation(*row) for row in rows], total

    def rename(self, conversation_id: str, title: str, *, owner: str = LOCAL_OWNER) -> Conversation:
        """Set the title (one line; "" lets the next user message name it again)."""
        clean_title = _clean_title(title)
        check_owner(owner)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE conversations SET title = ? WHERE id = ? AND owner = ?", (clean_title, conversation_id, owner)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no conversation {conversation_id}")
            conversation = self._get(conn, conversation_id, owner)
        assert conversation is not None
        return conversation

    def set_system(self, conversation_id: str, system: str | None, *, owner: str = LOCAL_OWNER) -> None:
        """Set or (with None) clear the system prompt. Raises NotFound."""
        check_owner(owner)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE conversations SET system = ? WHERE id = ? AND owner = ?",
                (None if system is None else _clean(system), conversation_id, owner),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no conversation {conversation_id}")

    def delete(self, conversation_id: str, *, owner: str = LOCAL_OWNER) -> bool:
        """Delete a conversation and its messages; False if there was none."""
        check_owner(owner)
        with self._write() as conn:
            cur = conn.execute("DELETE FROM conversations WHERE id = ? AND owner = ?", (conversation_id, owner))
        return cur.rowcount > 0

    # -- messages --------------------------------------------------------------------

    def messages(self, conversation_id: str, *, owner: str | None = LOCAL_OWNER) -> builtins.list[Message]:
        """All messages, oldest first. Raises NotFound."""
        where, args = _owned(owner, "owner")
        with self._read() as conn:
            if conn.execute(
                "SELECT 1 FROM conversations WHERE id = ?" + where, (conversation_id, *args)
            ).fetchone() is None:
                raise NotFound(f"no conversation {conversation_id}")
            return self._messages(conn, conversation_id)

    def add_message(
        self,
        conversation_id: str,
        role: str,
        content: str,
        *,
        status: str = "complete",
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        ttft_ms: float | None = None,
        duration_ms: float | None = None,
        model: str | None = None,
        params: dict[str, Any] | None = None,
        client_id: str | None = None,
        answer_id: str | None = None,
        owner: str = LOCAL_OWNER,
        citations: builtins.list[dict[str, Any]] | None = None,
        documents_mode: str | None = None,
    ) -> Message:
        """Append a message to `owner`'s conversation and commit. Raises NotFound, or
        ValueError for an unknown role/status. Bumps updated_at; an untitled conversation
        takes its title from its first user message (see make_title). Lone surrogates
        become U+FFFD. `client_id` (1-64 printable ASCII) is unique per owner: a second
        message of the owner with the same one raises AlreadyExists (see message_by_client_id)."""
        check_message(role, status, content)
        check_owner(owner)
        check_client_id(client_id)
        check_client_id(answer_id, "answer_id")
        content = _clean(content)
        params_json = None if params is None else json.dumps(params, ensure_ascii=False)
        cited = encode_citations(citations, documents_mode)
        with self._write() as conn:
            row = conn.execute(
                "SELECT title FROM conversations WHERE id = ? AND owner = ?", (conversation_id, owner)
            ).fetchone()
            if row is None:
                raise NotFound(f"no conversation {conversation_id}")
            now = self._now()
            try:
                cur = conn.execute(
                    "INSERT INTO messages (conversation_id, role, content, status, created_at,"
                    " prompt_tokens, completion_tokens, ttft_ms, duration_ms, model, params,"
                    " client_id, answer_id, owner, citations) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (conversation_id, role, content, status, now, prompt_tokens, completion_tokens, ttft_ms,
                     duration_ms, model, params_json, client_id, answer_id, owner, cited),
                )
            except sqlite3.IntegrityError as e:
                raise AlreadyExists(f"a message with client_id {client_id!r} is already stored") from e
            title = row[0] or (make_title(content) if role == "user" else "")
            conn.execute(
                "UPDATE conversations SET updated_at = ?, title = ? WHERE id = ?",
                (now, title, conversation_id),
            )
            message_id = cur.lastrowid
        assert message_id is not None
        return Message(
            message_id, conversation_id, role, content, status, now, prompt_tokens,
            completion_tokens, ttft_ms, duration_ms, model,
            None if params_json is None else json.loads(params_json), client_id, answer_id,
            *decode_citations(cited),
        )

    def update_message(
        self,
        message_id: int,
        content: str,
        *,
        status: str,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        ttft_ms: float | None = None,
        duration_ms: float | None = None,
    ) -> None:
        """Replace a message's text and status (an answer saved as it streams, then
        finalized); the figures given replace the stored ones, None keeps them. Raises
        NotFound when the message is gone (its conversation was deleted meanwhile)."""
        check_message("assistant", status, content)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE messages SET content = ?, status = ?,"
                " prompt_tokens = COALESCE(?, prompt_tokens), completion_tokens = COALESCE(?, completion_tokens),"
                " ttft_ms = COALESCE(?, ttft_ms), duration_ms = COALESCE(?, duration_ms) WHERE id = ?",
                (_clean(content), status, prompt_tokens, completion_tokens, ttft_ms, duration_ms, message_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no message {message_id}")

    def message_by_client_id(self, client_id: str, *, owner: str = LOCAL_OWNER) -> Message | None:
        """`owner`'s message stored with this client_id, if any."""
        check_owner(owner)
        with self._read() as conn:
            row = conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE owner = ? AND client_id = ?",
                               (owner, client_id)).fetchone()
        return None if row is None else _message(row)

    def answer_message(self, answer_id: str, *, owner: str = LOCAL_OWNER) -> Message | None:
        """`owner`'s assistant message stored with this answer_id, if any."""
        check_owner(owner)
        with self._read() as conn:
            row = conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE answer_id = ? AND role = 'assistant'"
                               " AND owner = ?", (answer_id, owner)).fetchone()
        return None if row is None else _message(row)

    def interrupt_streaming(self) -> int:
        """Mark answers left 'streaming' (by a server that stopped without finishing
        them) 'interrupted', keeping their text; how many. Call it when a server starts,
        before it streams anything."""
        with self._write() as conn:
            cur = conn.execute("UPDATE messages SET status = 'interrupted' WHERE status = 'streaming'")
        return cur.rowcount

    # -- search, export, health --------------------------------------------------------

    def search(self, query: str, *, limit: int = 20, owner: str | None = LOCAL_OWNER) -> builtins.list[dict[str, Any]]:
        """`owner`'s messages (and conversation titles) containing every word of `query`, best first.

        Each word also matches longer words it starts ("deplo" finds "deployment").
        Hits: {conversation_id, title, message_id, role, snippet, created_at, score};
        higher score is better (negated bm25); the snippet is plain text with matches
        between MARK_START and MARK_END. A conversation that matches by title only
        gives one hit with message_id and role None. Any input is safe; "" gives [].
        """
        expression = _match_expression(query)
        where, args = _owned(owner)
        if expression is None or limit <= 0:
            return []
        with self._read() as conn:
            message_rows = conn.execute(
                """SELECT m.conversation_id, c.title, m.id, m.role,
                          snippet(messages_fts, 0, ?, ?, '…', 16), m.created_at, -rank
                   FROM messages_fts
                   JOIN messages m ON m.id = messages_fts.rowid
                   JOIN conversations c ON c.id = m.conversation_id
                   WHERE messages_fts MATCH ?""" + where + " ORDER BY rank LIMIT ?",
                (MARK_START, MARK_END, expression, *args, limit),
            ).fetchall()
            title_rows = conn.execute(
                """SELECT c.id, c.title, NULL, NULL,
                          highlight(conversations_fts, 0, ?, ?), c.created_at, -rank
                   FROM conversations_fts
                   JOIN conversations c ON c.seq = conversations_fts.rowid
                   WHERE conversations_fts MATCH ?""" + where + " ORDER BY rank LIMIT ?",
                (MARK_START, MARK_END, expression, *args, limit),
            ).fetchall()
        return merge_hits([dict(zip(HIT_KEYS, row)) for row in message_rows],
                          [dict(zip(HIT_KEYS, row)) for row in title_rows], limit)

    def unembedded(self, model: str, *, limit: int,
                   owner: str | None = LOCAL_OWNER) -> builtins.list[tuple[int, str]]:
        """(message id, content) of `owner`'s messages with no vector from `model` yet, oldest first."""
        where, args = _owned(owner, "m.owner")
        with self._read() as conn:
            return conn.execute(
                """SELECT m.id, m.content FROM messages m
                   LEFT JOIN message_vectors v ON v.message_id = m.id AND v.model = ?
                   WHERE v.message_id IS NULL AND m.content != ''""" + where + " ORDER BY m.id LIMIT ?",
                (model, *args, limit),
            ).fetchall()

    def put_vectors(self, model: str, vectors: builtins.list[tuple[int, bytes]]) -> None:
        """Store embedding vectors (raw float32 bytes) for messages; ids deleted since are skipped."""
        with self._write() as conn:
            conn.executemany(
                """INSERT OR REPLACE INTO message_vectors (message_id, model, vector)
                   SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM messages WHERE id = ?)""",
                [(mid, model, blob, mid) for mid, blob in vectors],
            )

    def vectors(self, model: str, *, owner: str | None = LOCAL_OWNER) -> builtins.list[tuple[dict[str, Any], bytes]]:
        """Every stored vector of `model` on `owner`'s messages, with its message as a
        search hit (no score yet)."""
        where, args = _owned(owner)
        with self._read() as conn:
            rows = conn.execute(
                """SELECT m.conversation_id, c.title, m.id, m.role, m.content, m.created_at, v.vector
                   FROM message_vectors v JOIN messages m ON m.id = v.message_id
                   JOIN conversations c ON c.id = m.conversation_id WHERE v.model = ?""" + where,
                (model, *args),
            ).fetchall()
        keys = ("conversation_id", "title", "message_id", "role", "snippet", "created_at")
        return [(dict(zip(keys, row[:6])), row[6]) for row in rows]

    def export(self, conversation_id: str, fmt: str, *, owner: str | None = LOCAL_OWNER) -> str:
        """The conversation as "json" ({"conversation": ..., "messages": [...]}, indented)
        or "markdown" (title, then one bold-labelled section per message; a message that
        did not complete is marked, e.g. "**Assistant** _(stopped)_"). Raises NotFound,
        or ValueError for another fmt."""
        check_export_format(fmt)
        with self._read() as conn:
            conversation = self._get(conn, conversation_id, owner)
            if conversation is None:
                raise NotFound(f"no conversation {conversation_id}")
            messages = self._messages(conn, conversation_id)
        return render_export(conversation, messages, fmt)

    # -- tokens per owner and day ------------------------------------------------------

    def reserve_usage(self, owner: str, day: str, want: int, *, quota: int, minimum: int = 1) -> int:
        """Hold up to `want` of the tokens `owner` has left of `quota` on `day` (UTC),
        in one transaction: what is left (quota minus used and reserved) is granted,
        capped to `want`; 0, and nothing held, when less than `minimum` is left."""
        check_usage(owner, day, want, quota, minimum)
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO usage (owner, day) VALUES (?, ?)", (owner, day))
            (counted,) = conn.execute(
                "SELECT prompt_tokens + completion_tokens + reserved_tokens FROM usage WHERE owner = ? AND day = ?",
                (owner, day)).fetchone()
            left = quota - int(counted)
            if left < max(minimum, 1):
                return 0
            grant = min(want, left)
            conn.execute("UPDATE usage SET reserved_tokens = reserved_tokens + ? WHERE owner = ? AND day = ?",
                         (grant, owner, day))
        return grant

    def settle_usage(self, owner: str, day: str, *, reserved: int, prompt_tokens: int,
                     completion_tokens: int, requests: int = 1) -> None:
        """A request has ended: give back its `reserved` tokens and count what it used
        (one statement; the day's row is made if it has none). `requests=0`: a request
        refused after its reservation (a full queue) gives its tokens back uncounted."""
        check_usage(owner, day, reserved, prompt_tokens, completion_tokens, requests)
        with self._write() as conn:
            conn.execute(
                """INSERT INTO usage (owner, day, prompt_tokens, completion_tokens, requests) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (owner, day) DO UPDATE SET prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                       completion_tokens = completion_tokens + excluded.completion_tokens,
                       reserved_tokens = MAX(0, reserved_tokens - ?), requests = requests + excluded.requests""",
                (owner, day, prompt_tokens, completion_tokens, requests, reserved))

    def usage(self, *, owner: str | None = None, day: str | None = None) -> builtins.list[Usage]:
        """Token counts per owner and day (`owner`/`day` None: all of them), oldest day first."""
        where, args = _owned(owner, "owner")
        if day is not None:
            where, args = where + " AND day = ?", (*args, day)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT owner, day, prompt_tokens, completion_tokens, reserved_tokens, requests FROM usage"
                " WHERE 1 = 1" + where + " ORDER BY day, owner", args).fetchall()
        return [Usage(*row) for row in rows]

    def integrity_check(self) -> str:
        """"ok", or what is wrong: SQLite's integrity_check, then foreign keys and the
        search indexes (which PRAGMA integrity_check does not look at)."""
        with self._lock:
            conn = self._conn
            result = "\n".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
            if result != "ok":
                return result
            orphans = conn.execute("PRAGMA foreign_key_check").fetchall()
            if orphans:
                return f"foreign_key_check: {len(orphans)} rows point at missing parents"
            for table in ("messages_fts", "conversations_fts"):
                try:  # rank=1: also compare the index with its content table
                    conn.execute(f"INSERT INTO {table}({table}, rank) VALUES ('integrity-check', 1)")
                except sqlite3.DatabaseError as e:
                    return f"{table}: {e}"
            return "ok"

    # -- internals ---------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One snapshot for several SELECTs (a page and its total agree)."""
        with self._lock, self._faults(), _transaction(self._conn, "BEGIN") as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The one writer path: committed (and fsynced) when the block exits."""
        with self._lock, self._faults(), _transaction(self._conn, "BEGIN IMMEDIATE") as conn:
            yield conn

    @contextmanager
    def _faults(self) -> Iterator[None]:
        """A locked (past BUSY_TIMEOUT_MS), full, read-only or failing file raises
        StorageUnavailable; other SQLite errors (our bugs) pass unchanged."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            code = getattr(e, "sqlite_errorcode", None)
            if code is None or (code & 0xFF) not in _UNAVAILABLE_CODES:
                raise
            raise StorageUnavailable(
                f"the conversation database cannot be used right now ({e}); another program may "
                "hold it locked, or its disk is full or read-only. Retry in a moment."
            ) from e

    def _now(self) -> float:
        # Strictly increasing within this store, so "newest updated first" follows the
        # order of writes even when two land in the same clock tick.
        self._last_time = max(time.time(), self._last_time + 1e-6)
        return self._last_time

    @staticmethod
    def _messages(conn: sqlite3.Connection, conversation_id: str) -> builtins.list[Message]:
        rows = conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        ).fetchall()
        return [_message(row) for row in rows]

    @staticmethod
    def _get(conn: sqlite3.Connection, conversation_id: str, owner: str | None) -> Conversation | None:
        where, args = _owned(owner)
        row = conn.execute(_CONVERSATION_SELECT + " WHERE c.id = ?" + where, (conversation_id, *args)).fetchone()
        return None if row is None else Conversation(*row)


def _message(row: tuple[Any, ...]) -> Message:
    mid, cid, role, content, status, created_at, pt, ct, ttft, dur, model, params, client_id, answer_id, cited = row
    return Message(mid, cid, role, content, status, created_at, pt, ct, ttft, dur, model,
                   None if params is None else json.loads(params), client_id, answer_id,
                   *decode_citations(cited))
