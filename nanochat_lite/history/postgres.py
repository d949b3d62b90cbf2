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
from .postgres_schema import _TS_CONFIG, _WORD_CHARS, SCHEMA_VERSION, _migrate
from .postgres_text import _dec, _enc, _prefix_query
from .postgres_connect import _first_line, connect, redact
from .text import MAX_QUERY_TERMS, _clean, _clean_title, make_title

_HEADLINE = f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=16, MinWords=6, ShortWord=0"


_CONVERSATION_SELECT = """
    SELECT c.id, c.title, c.system, c.created_at, c.updated_at,
           (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id), c.owner
    FROM conversations c"""
_MESSAGE_COLUMNS = """id, conversation_id, role, content, status, created_at, prompt_tokens, completion_tokens,
    ttft_ms, duration_ms, model, params, client_id, answer_id, citations"""


def _owned(owner: str | None, column: str = "c.owner", joiner: str = "AND") -> tuple[str, tuple[str, ...]]:
    """The SQL that limits a query to `owner`'s rows ("" for None: every owner's).
    _owned("alice") -> (" AND c.owner = %s", ("alice",)); _owned(None) -> ("", ())"""
    checked = check_owner(owner, any_allowed=True)
    return ("", ()) if checked is None else (f" {joiner} {column} = %s", (checked,))


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
        return connect(self.url)

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
        owner: str = LOCAL_OWNER,
    ) -> Conversation:
        """A new, empty conversation of `owner`. Same contract as the SQLite store's create."""
        cid = check_conversation_id(uuid.uuid4().hex if conversation_id is None else conversation_id)
        check_owner(owner)
        clean_title = _clean_title(title or "")
        clean_system = None if system is None else _clean(system)
        try:
            with self._write() as conn:
                now = self._now()
                conn.execute(
                    "INSERT INTO conversations (id, title, system, created_at, updated_at, owner)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (cid, clean_title, _enc(clean_system), now, now, owner),
                )
        except pg_errors.UniqueViolation as e:
            raise AlreadyExists(f"conversation {cid} already exists") from e
        return Conversation(cid, clean_title, clean_system, now, now, 0, owner)

    def get(self, conversation_id: str, *, owner: str | None = LOCAL_OWNER) -> Conversation | None:
        with self._read() as conn:
            return _get(conn, conversation_id, owner)

    def list(self, *, limit: int = 20, offset: int = 0,
             owner: str | None = LOCAL_OWNER) -> tuple[builtins.list[Conversation], int]:
        """One page of `owner`'s conversations (None: everyone's), most recently updated
        first, and the total count."""
        check_page(limit, offset)
        where, args = _owned(owner, joiner="WHERE")
        with self._read() as conn:
            rows = conn.execute(
                _CONVERSATION_SELECT + where + " ORDER BY c.updated_at DESC, c.seq DESC LIMIT %s OFFSET %s",
                (*args, limit, offset),
            ).fetchall()
            (total,) = conn.execute("SELECT COUNT(*) FROM conversations c" + where, args).fetchone() or (0,)
        return [_conversation(row) for row in rows], total

    def rename(self, conversation_id: str, title: str, *, owner: str = LOCAL_OWNER) -> Conversation:
        """Set the title (one line; "" lets the next user message name it again)."""
        clean_title = _clean_title(title)
        check_owner(owner)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE conversations SET title = %s WHERE id = %s AND owner = %s",
                (clean_title, conversation_id, owner)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no conversation {conversation_id}")
            conversation = _get(conn, conversation_id, owner)
        assert conversation is not None
        return conversation

    def set_system(self, conversation_id: str, system: str | None, *, owner: str = LOCAL_OWNER) -> None:
        """Set or (with None) clear the system prompt. Raises NotFound."""
        check_owner(owner)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE conversations SET system = %s WHERE id = %s AND owner = %s",
                (None if system is None else _enc(_clean(system)), conversation_id, owner),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no conversation {conversation_id}")

    def delete(self, conversation_id: str, *, owner: str = LOCAL_OWNER) -> bool:
        """Delete a conversation and its messages; False if there was none."""
        check_owner(owner)
        with self._write() as conn:
            cur = conn.execute("DELETE FROM conversations WHERE id = %s AND owner = %s", (conversation_id, owner))
            return cur.rowcount > 0

    # -- messages --------------------------------------------------------------------

    def messages(self, conversation_id: str, *, owner: str | None = LOCAL_OWNER) -> builtins.list[Message]:
        """All messages, oldest first. Raises NotFound."""
        where, args = _owned(owner, "owner")
        with self._read() as conn:
            if conn.execute(
                "SELECT 1 FROM conversations WHERE id = %s" + where, (conversation_id, *args)
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
        owner: str = LOCAL_OWNER,
        citations: builtins.list[dict[str, Any]] | None = None,
        documents_mode: str | None = None,
    ) -> Message:
        """Append a message to `owner`'s conversation and commit. Same contract as the
        SQLite store's add_message."""
        check_message(role, status, content)
        check_owner(owner)
        check_client_id(client_id)
        check_client_id(answer_id, "answer_id")
        content = _clean(content)
        params_json = None if params is None else json.dumps(params, ensure_ascii=False)
        cited = encode_citations(citations, documents_mode)
        with self._write() as conn:
            # FOR UPDATE: another replica appending to this conversation waits, so the
            # first user message names it exactly once.
            row = conn.execute(
                "SELECT title FROM conversations WHERE id = %s AND owner = %s FOR UPDATE", (conversation_id, owner)
            ).fetchone()
            if row is None:
                raise NotFound(f"no conversation {conversation_id}")
            now = self._now()
            try:
                with conn.transaction():  # a savepoint: a taken client_id leaves the rest usable
                    inserted = conn.execute(
                        "INSERT INTO messages (conversation_id, role, content, status, created_at,"
                        " prompt_tokens, completion_tokens, ttft_ms, duration_ms, model, params,"
                        " client_id, answer_id, owner, citations)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                        (conversation_id, role, _enc(content), status, now, prompt_tokens,
                         completion_tokens, ttft_ms, duration_ms, _enc(model), params_json, client_id,
                         answer_id, owner, cited),
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

    def message_by_client_id(self, client_id: str, *, owner: str = LOCAL_OWNER) -> Message | None:
        """`owner`'s message stored with this client_id, if any."""
        check_owner(owner)
        with self._read() as conn:
            row = conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE owner = %s AND client_id = %s",
                               (owner, client_id)).fetchone()
        return None if row is None else _message(row)

    def answer_message(self, answer_id: str, *, owner: str = LOCAL_OWNER) -> Message | None:
        """`owner`'s assistant message stored with this answer_id, if any."""
        check_owner(owner)
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE answer_id = %s AND role = 'assistant' AND owner = %s",
                (answer_id, owner)).fetchone()
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

    def search(self, query: str, *, limit: int = 20, owner: str | None = LOCAL_OWNER) -> builtins.list[dict[str, Any]]:
        """`owner`'s messages (and conversation titles) containing every word of `query`, best
        first; the same hits, shape and rules as the SQLite store's search (score: ts_rank)."""
        where, args = _owned(owner, "c.owner")
        owned = where.replace("%s", "%(owner)s")
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
                          WHERE m.tsv @@ %(q)s::tsquery {owned}
                          ORDER BY score DESC, m.id LIMIT %(limit)s) r
                    ORDER BY r.score DESC, r.id""",
                {"q": tsquery, "opts": _HEADLINE, "limit": limit, "owner": args[0] if args else None},
            ).fetchall()
            title_rows = conn.execute(
                f"""SELECT c.id, c.title, NULL, NULL,
                           ts_headline('{_TS_CONFIG}', c.title, %(q)s::tsquery, %(opts)s),
                           c.created_at, ts_rank(c.tsv, %(q)s::tsquery) AS score
                    FROM conversations c WHERE c.tsv @@ %(q)s::tsquery {owned}
                    ORDER BY score DESC, c.seq LIMIT %(limit)s""",
                {"q": tsquery, "opts": f"StartSel={MARK_START}, StopSel={MARK_END}, HighlightAll=true",
                 "limit": limit, "owner": args[0] if args else None},
            ).fetchall()
        message_hits = [dict(zip(HIT_KEYS, (*row[:4], _dec(row[4]), *row[5:]))) for row in message_rows]
        return merge_hits(message_hits, [dict(zip(HIT_KEYS, row)) for row in title_rows], limit)

    def unembedded(self, model: str, *, limit: int,
                   owner: str | None = LOCAL_OWNER) -> builtins.list[tuple[int, str]]:
        """(message id, content) of `owner`'s messages with no vector from `model` yet, oldest first."""
        where, args = _owned(owner, "m.owner")
        with self._read() as conn:
            rows = conn.execute(
                """SELECT m.id, m.content FROM messages m
                   LEFT JOIN message_vectors v ON v.message_id = m.id AND v.model = %s
                   WHERE v.message_id IS NULL AND m.content != ''""" + where + " ORDER BY m.id LIMIT %s",
                (model, *args, limit),
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

    def vectors(self, model: str, *, owner: str | None = LOCAL_OWNER) -> builtins.list[tuple[dict[str, Any], bytes]]:
        """Every stored vector of `model` on `owner`'s messages, with its message as a
        search hit (no score yet)."""
        where, args = _owned(owner)
        with self._read() as conn:
            rows = conn.execute(
                """SELECT m.conversation_id, c.title, m.id, m.role, m.content, m.created_at, v.vector
                   FROM message_vectors v JOIN messages m ON m.id = v.message_id
                   JOIN conversations c ON c.id = m.conversation_id WHERE v.model = %s""" + where + " ORDER BY m.id",
                (model, *args),
            ).fetchall()
        keys = HIT_KEYS[:6]
        return [(dict(zip(keys, (*row[:4], _dec(row[4]), row[5]))), bytes(row[6])) for row in rows]

    def export(self, conversation_id: str, fmt: str, *, owner: str | None = LOCAL_OWNER) -> str:
        """The conversation as "json" or "markdown" (see store.render_export).
        Raises NotFound, or ValueError for another fmt."""
        check_export_format(fmt)
        with self._read() as conn:
            conversation = _get(conn, conversation_id, owner)
            if conversation is None:
                raise NotFound(f"no conversation {conversation_id}")
            messages = _messages(conn, conversation_id)
        return render_export(conversation, messages, fmt)

    # -- tokens per owner and day ------------------------------------------------------

    def reserve_usage(self, owner: str, day: str, want: int, *, quota: int, minimum: int = 1) -> int:
        """Same contract as the SQLite store's. The day's row is locked (FOR UPDATE) for the
        transaction, so replicas reserving at once take turns and never both spend the rest."""
        check_usage(owner, day, want, quota, minimum)
        with self._write() as conn:
            conn.execute("INSERT INTO usage (owner, day) VALUES (%s, %s) ON CONFLICT DO NOTHING", (owner, day))
            row = conn.execute("SELECT prompt_tokens + completion_tokens + reserved_tokens FROM usage"
                               " WHERE owner = %s AND day = %s FOR UPDATE", (owner, day)).fetchone()
            left = quota - (row[0] if row else 0)
            if left < max(minimum, 1):
                return 0
            grant = min(want, left)
            conn.execute("UPDATE usage SET reserved_tokens = reserved_tokens + %s WHERE owner = %s AND day = %s",
                         (grant, owner, day))
        return grant

    def settle_usage(self, owner: str, day: str, *, reserved: int, prompt_tokens: int,
                     completion_tokens: int, requests: int = 1) -> None:
        """Same contract as the SQLite store's: one statement."""
        check_usage(owner, day, reserved, prompt_tokens, completion_tokens, requests)
        with self._write() as conn:
            conn.execute(
                """INSERT INTO usage (owner, day, prompt_tokens, completion_tokens, requests)
                   VALUES (%s, %s, %s, %s, %s) ON CONFLICT (owner, day) DO UPDATE SET
                       prompt_tokens = usage.prompt_tokens + EXCLUDED.prompt_tokens,
                       completion_tokens = usage.completion_tokens + EXCLUDED.completion_tokens,
                       reserved_tokens = GREATEST(0, usage.reserved_tokens - %s),
                       requests = usage.requests + EXCLUDED.requests""",
                (owner, day, prompt_tokens, completion_tokens, requests, reserved))

    def usage(self, *, owner: str | None = None, day: str | None = None) -> builtins.list[Usage]:
        """Token counts per owner and day (`owner`/`day` None: all of them), oldest day first."""
        where, args = _owned(owner, "owner")
        if day is not None:
            where, args = where + " AND day = %s", (*args, day)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT owner, day, prompt_tokens, completion_tokens, reserved_tokens, requests FROM usage"
                " WHERE TRUE" + where + " ORDER BY day, owner", args).fetchall()
        return [Usage(*row) for row in rows]

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


def _get(conn: psycopg.Connection[Any], conversation_id: str, owner: str | None) -> Conversation | None:
    where, args = _owned(owner)
    row = conn.execute(_CONVERSATION_SELECT + " WHERE c.id = %s" + where, (conversation_id, *args)).fetchone()
    return None if row is None else _conversation(row)


def _messages(conn: psycopg.Connection[Any], conversation_id: str) -> builtins.list[Message]:
    rows = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = %s ORDER BY id",
        (conversation_id,),
    ).fetchall()
    return [_message(row) for row in rows]


def _conversation(row: tuple[Any, ...]) -> Conversation:
    cid, title, system, created_at, updated_at, count, owner = row
    return Conversation(cid, title, _dec(system), created_at, updated_at, count, owner)


def _message(row: tuple[Any, ...]) -> Message:
    mid, cid, role, content, status, created_at, pt, ct, ttft, dur, model, params, client_id, answer_id, cited = row
    return Message(mid, cid, role, _dec(content) or "", status, created_at, pt, ct, ttft, dur, _dec(model),
                   None if params is None else json.loads(params), client_id, answer_id, *decode_citations(cited))
