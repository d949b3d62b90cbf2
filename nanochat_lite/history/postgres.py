"""The PostgreSQL conversation store: the same answers as the SQLite store, for several
server processes (replicas) sharing one database.

One `PostgresStore` owns one connection (psycopg 3, autocommit, explicit transactions),
used under a lock, so the server may call it from any worker thread. Each write is one
transaction committed with `synchronous_commit = on` before the method returns: whatever
the server acknowledged is in PostgreSQL's WAL on disk, so killing a server process (or
the database server) loses nothing acknowledged. A broken connection is reopened on the
next call.

Full-text search uses PostgreSQL's own machinery: a stored, generated `tsvector` column
(GIN-indexed) built with the `nanochat_lite` text-search configuration (the `simple`
dictionary behind `unaccent`, so "cafe" finds "café"), and queries built word by word
with `websearch_to_tsquery`, each word quoted (no operators reach the parser) and every
lexeme made a prefix (`deplo` finds "deployment"), all words required, as in SQLite.

Differences from SQLite a user could notice, and why:
- PostgreSQL text cannot hold NUL. A NUL is stored as `_ESC + "0"` (and `_ESC` itself
  as `_ESC + "1"`) and decoded on the way out, so content round-trips exactly.
- Emoji and CJK are words only when the database's LC_CTYPE is C (the parser then takes
  every non-ASCII character as a letter); under other locales symbols separate words.
  Create the database with `createdb --locale=C --template=template0 -E UTF8` for
  SQLite's behaviour.
- Only the first `_INDEX_CHARS` characters of a message are indexed, and a run of more
  than `_WORD_CHARS` non-space characters is indexed by its start (a tsvector holds at
  most 1 MB and a lexeme at most 2 KB).
- Scores are `ts_rank` (higher is better), not bm25: the order of hits is the same kind
  of order, the numbers differ.

Not handled here: connection pooling (one connection per process is enough for a
chat front; PostgreSQL's own max_connections bounds the replicas), creating the database
or the role (the URL names existing ones).
"""

from __future__ import annotations

import builtins
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from .store import (
    HIT_KEYS,
    MARK_END,
    MARK_START,
    AlreadyExists,
    Conversation,
    Message,
    NotFound,
    StorageUnavailable,
    StoreError,
    check_client_id,
    check_conversation_id,
    check_export_format,
    check_message,
    check_page,
    merge_hits,
    render_export,
)
from .postgres_schema import _TS_CONFIG, _WORD_CHARS, SCHEMA_VERSION, _migrate
from .text import MAX_QUERY_TERMS, _clean, _clean_title, make_title

CONNECT_TIMEOUT_S = 5  # an unreachable server must not hang start-up
_ESC = "\U0010fffd"  # a private-use character: the escape for NUL (see the module docstring)
_HEADLINE = f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=16, MinWords=6, ShortWord=0"


_CONVERSATION_SELECT = """
    SELECT c.id, c.title, c.system, c.created_at, c.updated_at,
           (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id)
    FROM conversations c"""
_MESSAGE_COLUMNS = """id, conversation_id, role, content, status, created_at,
    prompt_tokens, completion_tokens, ttft_ms, duration_ms, model, params, client_id, answer_id"""
# A write waiting this long for another transaction's row lock gives up (StorageUnavailable),
# as SQLite's busy timeout does: a client hears back instead of hanging.
LOCK_TIMEOUT_MS = 5000
_TSQUERY_LEXEME = re.compile(r"'(?:[^'\\]|''|\\.)*'")


def redact(url: str) -> str:
    """The URL without its password: `postgresql://u:secret@h/db` -> `postgresql://u:***@h/db`."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


class PostgresStore:
    """Conversations and messages in the PostgreSQL database at `url`
    (``postgresql://user[:password]@host[:port]/database``).

    Connects, checks the database and migrates the schema forward. Raises StoreError,
    naming the problem and the fix, if the server cannot be reached, the URL is wrong,
    or the schema was written by a newer Nanochat-Lite.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._last_time = 0.0
        self._conn = self._connect()
        try:
            _migrate(self._conn, url=redact(url))
        except psycopg.Error as e:
            self._conn.close()
            raise StoreError(
                f"{redact(url)}: cannot prepare the conversation tables ({_first_line(e)}). The "
                "role needs CREATE on the database, and PostgreSQL's unaccent extension must be "
                "available (Debian: the postgresql package; or run CREATE EXTENSION unaccent as "
                "the database owner)."
            ) from e
        except BaseException:
            self._conn.close()
            raise

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.ProgrammingError as e:  # the URL itself is malformed
            raise StoreError(
                f"{redact(self.url)}: not a usable PostgreSQL URL ({_first_line(e)}). Expected "
                "postgresql://user[:password]@host[:port]/database."
            ) from e
        except psycopg.OperationalError as e:
            raise StoreError(
                f"{redact(self.url)}: cannot connect to PostgreSQL ({_first_line(e)}). Check that the "
                "server is running and reachable, that the user and database in the URL exist "
                "(createdb NAME), and the password; or use a SQLite file with --db PATH."
            ) from e
        try:
            encoding = conn.execute("SHOW server_encoding").fetchone()
            if encoding is None or encoding[0] != "UTF8":
                raise StoreError(
                    f"{redact(self.url)}: the database's encoding is {encoding and encoding[0]}, "
                    "but conversations need UTF8. Create it with "
                    "`createdb --locale=C --template=template0 -E UTF8 NAME`."
                )
            # Durability does not depend on the server's default: every commit waits for
            # its WAL to reach disk.
            conn.execute("SET synchronous_commit = on")
            conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PostgresStore:
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
    ) -> Conversation:
        """A new, empty conversation. Raises AlreadyExists if conversation_id is taken,
        ValueError if it is not 1-64 characters of [0-9A-Za-z_-]."""
        cid = check_conversation_id(uuid.uuid4().hex if conversation_id is None else conversation_id)
        clean_title = _clean_title(title or "")
        clean_system = None if system is None else _clean(system)
        try:
            with self._write() as conn:
                now = self._now()
                conn.execute(
                    "INSERT INTO conversations (id, title, system, created_at, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (cid, clean_title, _enc(clean_system), now, now),
                )
        except pg_errors.UniqueViolation as e:
            raise AlreadyExists(f"conversation {cid} already exists") from e
        return Conversation(cid, clean_title, clean_system, now, now, 0)

    def get(self, conversation_id: str) -> Conversation | None:
        with self._read() as conn:
            return _get(conn, conversation_id)

    def list(self, *, limit: int = 20, offset: int = 0) -> tuple[builtins.list[Conversation], int]:
        """One page of conversations, most recently updated first, and the total count."""
        check_page(limit, offset)
        with self._read() as conn:
            rows = conn.execute(
                _CONVERSATION_SELECT + " ORDER BY c.updated_at DESC, c.seq DESC LIMIT %s OFFSET %s",
                (limit, offset),
            ).fetchall()
            (total,) = conn.execute("SELECT COUNT(*) FROM conversations").fetchone() or (0,)
        return [_conversation(row) for row in rows], total

    def rename(self, conversation_id: str, title: str) -> Conversation:
        """Set the title (one line; "" lets the next user message name it again)."""
        clean_title = _clean_title(title)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE conversations SET title = %s WHERE id = %s", (clean_title, conversation_id)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no conversation {conversation_id}")
            conversation = _get(conn, conversation_id)
        assert conversation is not None
        return conversation

    def set_system(self, conversation_id: str, system: str | None) -> None:
        """Set or (with None) clear the system prompt. Raises NotFound."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE conversations SET system = %s WHERE id = %s",
                (None if system is None else _enc(_clean(system)), conversation_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no conversation {conversation_id}")

    def delete(self, conversation_id: str) -> bool:
        """Delete a conversation and its messages; False if there was none."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM conversations WHERE id = %s", (conversation_id,))
            return cur.rowcount > 0

    # -- messages --------------------------------------------------------------------

    def messages(self, conversation_id: str) -> builtins.list[Message]:
        """All messages, oldest first. Raises NotFound."""
        with self._read() as conn:
            if conn.execute(
                "SELECT 1 FROM conversations WHERE id = %s", (conversation_id,)
            ).fetchone() is None:
                raise NotFound(f"no conversation {conversation_id}")
            return _messages(conn, conversation_id)

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
    ) -> Message:
        """Append a message and commit. Same contract as the SQLite store's add_message."""
        check_message(role, status, content)
        check_client_id(client_id)
        check_client_id(answer_id, "answer_id")
        content = _clean(content)
        params_json = None if params is None else json.dumps(params, ensure_ascii=False)
        with self._write() as conn:
            # FOR UPDATE: another replica appending to this conversation waits, so the
            # first user message names it exactly once.
            row = conn.execute(
                "SELECT title FROM conversations WHERE id = %s FOR UPDATE", (conversation_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no conversation {conversation_id}")
            now = self._now()
            try:
                with conn.transaction():  # a savepoint: a taken client_id leaves the rest usable
                    inserted = conn.execute(
                        "INSERT INTO messages (conversation_id, role, content, status, created_at,"
                        " prompt_tokens, completion_tokens, ttft_ms, duration_ms, model, params,"
                        " client_id, answer_id)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                        (conversation_id, role, _enc(content), status, now, prompt_tokens,
                         completion_tokens, ttft_ms, duration_ms, _enc(model), params_json, client_id,
                         answer_id),
                    ).fetchone()
            except pg_errors.UniqueViolation as e:
                raise AlreadyExists(f"a message with client_id {client_id!r} is already stored") from e
            title = row[0] or (make_title(content) if role == "user" else "")
            conn.execute(
                "UPDATE conversations SET updated_at = %s, title = %s WHERE id = %s",
                (now, title, conversation_id),
            )
        assert inserted is not None
        return Message(
            inserted[0], conversation_id, role, content, status, now, prompt_tokens,
            completion_tokens, ttft_ms, duration_ms, model,
            None if params_json is None else json.loads(params_json), client_id, answer_id,
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
        """Replace a message's text and status. Same contract as the SQLite store's."""
        check_message("assistant", status, content)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE messages SET content = %s, status = %s,"
                " prompt_tokens = COALESCE(%s, prompt_tokens), completion_tokens = COALESCE(%s, completion_tokens),"
                " ttft_ms = COALESCE(%s, ttft_ms), duration_ms = COALESCE(%s, duration_ms) WHERE id = %s",
                (_enc(_clean(content)), status, prompt_tokens, completion_tokens, ttft_ms, duration_ms, message_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no message {message_id}")

    def message_by_client_id(self, client_id: str) -> Message | None:
        """The message stored with this client_id, if any."""
        with self._read() as conn:
            row = conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE client_id = %s",
                               (client_id,)).fetchone()
        return None if row is None else _message(row)

    def answer_message(self, answer_id: str) -> Message | None:
        """The assistant message stored with this answer_id, if any."""
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE answer_id = %s AND role = 'assistant'",
                (answer_id,)).fetchone()
        return None if row is None else _message(row)

    def interrupt_streaming(self) -> int:
        """Mark answers left 'streaming' 'interrupted', keeping their text; how many.

        Replicas share the database: one starting marks the others' live answers too.
        Those are saved again (as 'streaming') within a second while they run, and
        finalized when they end, so the mark only lasts until their next save."""
        with self._write() as conn:
            cur = conn.execute("UPDATE messages SET status = 'interrupted' WHERE status = 'streaming'")
        return cur.rowcount

    # -- search, export, health --------------------------------------------------------

    def search(self, query: str, *, limit: int = 20) -> builtins.list[dict[str, Any]]:
        """Messages (and conversation titles) containing every word of `query`, best first;
        the same hits, shape and rules as the SQLite store's search (score: ts_rank)."""
        words = [w.replace('"', " ")[:_WORD_CHARS]
                 for w in _clean(query).replace("\x00", " ").split()[:MAX_QUERY_TERMS]]
        if not words or limit <= 0:
            return []
        with self._read() as conn:
            tsquery = _prefix_query(conn, words)
            if tsquery is None:
                return []
            message_rows = conn.execute(
                f"""SELECT r.conversation_id, r.title, r.id, r.role,
                           ts_headline('{_TS_CONFIG}', replace(r.content, U&'\\+10FFFD0', ' '),
                                       %(q)s::tsquery, %(opts)s),
                           r.created_at, r.score
                    FROM (SELECT m.conversation_id, c.title, m.id, m.role, m.content, m.created_at,
                                 ts_rank(m.tsv, %(q)s::tsquery) AS score
                          FROM messages m JOIN conversations c ON c.id = m.conversation_id
                          WHERE m.tsv @@ %(q)s::tsquery
                          ORDER BY score DESC, m.id LIMIT %(limit)s) r
                    ORDER BY r.score DESC, r.id""",
                {"q": tsquery, "opts": _HEADLINE, "limit": limit},
            ).fetchall()
            title_rows = conn.execute(
                f"""SELECT c.id, c.title, NULL, NULL,
                           ts_headline('{_TS_CONFIG}', c.title, %(q)s::tsquery, %(opts)s),
                           c.created_at, ts_rank(c.tsv, %(q)s::tsquery) AS score
                    FROM conversations c WHERE c.tsv @@ %(q)s::tsquery
                    ORDER BY score DESC, c.seq LIMIT %(limit)s""",
                {"q": tsquery, "opts": f"StartSel={MARK_START}, StopSel={MARK_END}, HighlightAll=true",
                 "limit": limit},
            ).fetchall()
        message_hits = [dict(zip(HIT_KEYS, (*row[:4], _dec(row[4]), *row[5:]))) for row in message_rows]
        return merge_hits(message_hits, [dict(zip(HIT_KEYS, row)) for row in title_rows], limit)

    def unembedded(self, model: str, *, limit: int) -> builtins.list[tuple[int, str]]:
        """(message id, content) of messages with no vector from `model` yet, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                """SELECT m.id, m.content FROM messages m
                   LEFT JOIN message_vectors v ON v.message_id = m.id AND v.model = %s
                   WHERE v.message_id IS NULL AND m.content != '' ORDER BY m.id LIMIT %s""",
                (model, limit),
            ).fetchall()
        return [(mid, _dec(content) or "") for mid, content in rows]

    def put_vectors(self, model: str, vectors: builtins.list[tuple[int, bytes]]) -> None:
        """Store embedding vectors (raw float32 bytes) for messages; ids deleted since are skipped."""
        if not vectors:
            return
        with self._write() as conn, conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO message_vectors (message_id, model, vector)
                   SELECT m.id, %s, %s FROM messages m WHERE m.id = %s
                   ON CONFLICT (message_id) DO UPDATE SET model = EXCLUDED.model, vector = EXCLUDED.vector""",
                [(model, blob, mid) for mid, blob in vectors],
            )

    def vectors(self, model: str) -> builtins.list[tuple[dict[str, Any], bytes]]:
        """Every stored vector of `model`, with its message as a search hit (no score yet)."""
        with self._read() as conn:
            rows = conn.execute(
                """SELECT m.conversation_id, c.title, m.id, m.role, m.content, m.created_at, v.vector
                   FROM message_vectors v JOIN messages m ON m.id = v.message_id
                   JOIN conversations c ON c.id = m.conversation_id WHERE v.model = %s
                   ORDER BY m.id""",
                (model,),
            ).fetchall()
        keys = HIT_KEYS[:6]
        return [(dict(zip(keys, (*row[:4], _dec(row[4]), row[5]))), bytes(row[6])) for row in rows]

    def export(self, conversation_id: str, fmt: str) -> str:
        """The conversation as "json" or "markdown" (see store.render_export).
        Raises NotFound, or ValueError for another fmt."""
        check_export_format(fmt)
        with self._read() as conn:
            conversation = _get(conn, conversation_id)
            if conversation is None:
                raise NotFound(f"no conversation {conversation_id}")
            messages = _messages(conn, conversation_id)
        return render_export(conversation, messages, fmt)

    def integrity_check(self) -> str:
        """"ok", or what is wrong: rows pointing at missing parents (the foreign keys
        forbid them) or a schema that is not this version's."""
        with self._read() as conn:
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                return f"schema_version: {row and row[0]}, expected {SCHEMA_VERSION}"
            (orphans,) = conn.execute(
                """SELECT (SELECT COUNT(*) FROM messages m WHERE NOT EXISTS
                               (SELECT 1 FROM conversations c WHERE c.id = m.conversation_id))
                        + (SELECT COUNT(*) FROM message_vectors v WHERE NOT EXISTS
                               (SELECT 1 FROM messages m WHERE m.id = v.message_id))"""
            ).fetchone() or (0,)
        return "ok" if orphans == 0 else f"{orphans} rows point at missing parents"

    # -- internals ---------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[psycopg.Connection[Any]]:
        """One snapshot for several SELECTs (a page and its total agree)."""
        with self._lock, _faults():
            conn = self._usable()
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield conn

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        """The one writer path: committed (WAL flushed) when the block exits."""
        with self._lock, _faults():
            conn = self._usable()
            with conn.transaction():
                yield conn

    def _usable(self) -> psycopg.Connection[Any]:
        # A connection broken by a database restart or a network cut is replaced; the
        # call that saw it break has already raised (nothing half-written was acknowledged).
        if self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _now(self) -> float:
        # Strictly increasing within this store, so "newest updated first" follows the
        # order of writes even when two land in the same clock tick.
        self._last_time = max(time.time(), self._last_time + 1e-6)
        return self._last_time


@contextmanager
def _faults() -> Iterator[None]:
    """A lost connection, a lock wait past LOCK_TIMEOUT_MS, a full disk or a read-only
    server raises StorageUnavailable; other errors (our bugs, bad data) pass unchanged."""
    try:
        yield
    except (psycopg.OperationalError, pg_errors.DiskFull, pg_errors.ReadOnlySqlTransaction) as e:
        raise StorageUnavailable(
            f"the conversation database cannot be used right now ({_first_line(e)}); it may be "
            "unreachable, locked by a long transaction, full or read-only. Retry in a moment."
        ) from e
    except StoreError as e:  # _usable() could not reconnect
        raise StorageUnavailable(str(e)) from e


def _prefix_query(conn: psycopg.Connection[Any], words: builtins.list[str]) -> str | None:
    """A tsquery (as text) requiring every word, each lexeme a prefix; None if no word
    has a lexeme. Each word goes through websearch_to_tsquery in quotes, so operators
    ("or", "-", quotes) are plain words: `content:hello` -> `'content':* <-> 'hello':*`."""
    rows = conn.execute(
        f"""SELECT websearch_to_tsquery('{_TS_CONFIG}', '"' || w || '"')::text
            FROM unnest(%s::text[]) WITH ORDINALITY AS t(w, i) ORDER BY i""",
        (words,),
    ).fetchall()
    parts = [text for (text,) in rows if text]
    if not parts:
        return None
    prefixed = " & ".join("(" + _TSQUERY_LEXEME.sub(lambda m: m.group(0) + ":*", p) + ")" for p in parts)
    try:
        with conn.transaction():  # a savepoint: a surprise in the text must not end the search
            conn.execute("SELECT %s::tsquery", (prefixed,))
        return prefixed
    except psycopg.DataError:
        return " & ".join(f"({p})" for p in parts)


def _get(conn: psycopg.Connection[Any], conversation_id: str) -> Conversation | None:
    row = conn.execute(_CONVERSATION_SELECT + " WHERE c.id = %s", (conversation_id,)).fetchone()
    return None if row is None else _conversation(row)


def _messages(conn: psycopg.Connection[Any], conversation_id: str) -> builtins.list[Message]:
    rows = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = %s ORDER BY id",
        (conversation_id,),
    ).fetchall()
    return [_message(row) for row in rows]


def _conversation(row: tuple[Any, ...]) -> Conversation:
    cid, title, system, created_at, updated_at, count = row
    return Conversation(cid, title, _dec(system), created_at, updated_at, count)


def _message(row: tuple[Any, ...]) -> Message:
    mid, cid, role, content, status, created_at, pt, ct, ttft, dur, model, params, client_id, answer_id = row
    return Message(mid, cid, role, _dec(content) or "", status, created_at, pt, ct, ttft, dur, _dec(model),
                   None if params is None else json.loads(params), client_id, answer_id)


def _enc(text: str | None) -> str | None:
    """Text PostgreSQL can store: `"a\\x00b"` -> `"a" + _ESC + "0b"` (reversible)."""
    if text is None or ("\x00" not in text and _ESC not in text):
        return text
    return text.replace(_ESC, _ESC + "1").replace("\x00", _ESC + "0")


def _dec(text: str | None) -> str | None:
    if text is None or _ESC not in text:
        return text
    return re.sub(_ESC + "([01])", lambda m: "\x00" if m.group(1) == "0" else _ESC, text)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
