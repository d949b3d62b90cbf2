"""The SQLite store's schema: its migrations, one transaction each, and how they run.

Each entry of `_MIGRATIONS` is one schema version; `_migrate` applies those after the
file's version, each in its own transaction with the version bump, so a crash
mid-migration leaves the previous version intact, and a second process migrating the
same file at the same time runs each step once. Not here: reading or writing
conversations (sqlite.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from .store import StoreError

# unicode61 with "So" added so emoji are words; remove_diacritics 2 lets "cafe" find "café".
_TOKENIZE = "unicode61 remove_diacritics 2 categories 'L* N* Co So'"

# The three triggers that keep messages_fts in step with messages: created with the index
# (2) and again whenever the messages table is rebuilt (4, 6), since DROP TABLE drops them.
_MESSAGES_FTS_TRIGGERS = (
    """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
    END""",
    """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content)
            VALUES ('delete', old.id, old.content);
    END""",
    """CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content)
            VALUES ('delete', old.id, old.content);
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
    END""",
)


def _swap_messages(new: str) -> tuple[str, ...]:
    """Put the rebuilt table `new` in the place of messages. AUTOINCREMENT's high-water
    mark moves over: ids of deleted messages stay unused."""
    return (
        f"DELETE FROM sqlite_sequence WHERE name = '{new}'",
        f"INSERT INTO sqlite_sequence (name, seq) SELECT '{new}', seq FROM sqlite_sequence WHERE name = 'messages'",
        "DROP TABLE messages",
        f"ALTER TABLE {new} RENAME TO messages",
    )


# Each entry is one schema version: its statements run in one transaction, together with
# the version bump, so a crash mid-migration leaves the previous version intact.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: conversations and messages.
    (
        # `seq` is an explicit integer key because the FTS index refers to rows by rowid,
        # and VACUUM may renumber an implicit rowid.
        """CREATE TABLE conversations (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            title TEXT NOT NULL DEFAULT '',
            system TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX conversations_recent ON conversations(updated_at DESC, seq DESC)",
        # AUTOINCREMENT: a deleted message's id is never reused, so ids held elsewhere
        # (URLs, embedding vectors) cannot come to point at a different message.
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'complete'
                CHECK (status IN ('complete', 'stopped', 'failed', 'interrupted')),
            created_at REAL NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            ttft_ms REAL,
            duration_ms REAL,
            model TEXT,
            params TEXT
        )""",
        "CREATE INDEX messages_by_conversation ON messages(conversation_id, id)",
    ),
    # 2: full-text search over message content and titles (backfilled for old rows).
    (
        f"""CREATE VIRTUAL TABLE messages_fts USING fts5(
            content, content='messages', content_rowid='id', tokenize="{_TOKENIZE}")""",
        *_MESSAGES_FTS_TRIGGERS,
        f"""CREATE VIRTUAL TABLE conversations_fts USING fts5(
            title, content='conversations', content_rowid='seq', tokenize="{_TOKENIZE}")""",
        """CREATE TRIGGER conversations_fts_insert AFTER INSERT ON conversations BEGIN
            INSERT INTO conversations_fts(rowid, title) VALUES (new.seq, new.title);
        END""",
        """CREATE TRIGGER conversations_fts_delete AFTER DELETE ON conversations BEGIN
            INSERT INTO conversations_fts(conversations_fts, rowid, title)
                VALUES ('delete', old.seq, old.title);
        END""",
        """CREATE TRIGGER conversations_fts_update AFTER UPDATE OF title ON conversations
        BEGIN
            INSERT INTO conversations_fts(conversations_fts, rowid, title)
                VALUES ('delete', old.seq, old.title);
            INSERT INTO conversations_fts(rowid, title) VALUES (new.seq, new.title);
        END""",
        "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
        "INSERT INTO conversations_fts(conversations_fts) VALUES ('rebuild')",
    ),
    # 3: embedding vectors of messages, for semantic search (filled lazily, per model).
    (
        """CREATE TABLE message_vectors (
            message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            vector BLOB NOT NULL
        )""",
    ),
    # 4: answers saved as they stream (status 'streaming'), a client's id on a user
    # message (sent twice, stored once) and the answer's id. SQLite cannot change a
    # CHECK constraint, so the table is rebuilt (its ids kept: the FTS index and the
    # vectors refer to them; _migrate turns foreign keys off around it, so dropping the
    # old table cascades nowhere).
    (
        """CREATE TABLE messages_v4 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'complete'
                CHECK (status IN ('complete', 'stopped', 'failed', 'interrupted', 'streaming')),
            created_at REAL NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            ttft_ms REAL,
            duration_ms REAL,
            model TEXT,
            params TEXT,
            client_id TEXT,
            answer_id TEXT
        )""",
        """INSERT INTO messages_v4 (id, conversation_id, role, content, status, created_at,
               prompt_tokens, completion_tokens, ttft_ms, duration_ms, model, params)
           SELECT id, conversation_id, role, content, status, created_at,
               prompt_tokens, completion_tokens, ttft_ms, duration_ms, model, params FROM messages""",
        *_swap_messages("messages_v4"),
        "CREATE INDEX messages_by_conversation ON messages(conversation_id, id)",
        "CREATE UNIQUE INDEX messages_client_id ON messages(client_id) WHERE client_id IS NOT NULL",
        "CREATE INDEX messages_answer_id ON messages(answer_id) WHERE answer_id IS NOT NULL",
        "CREATE INDEX messages_streaming ON messages(status) WHERE status = 'streaming'",
        *_MESSAGES_FTS_TRIGGERS,
    ),
    # 5: owners (the API key's name; rows from before keys were named are 'local') on
    # conversations and, copied from their conversation, messages: a client_id is then
    # unique per owner (another owner's id must not collide, or its existence would
    # show); and tokens per owner and UTC day, for quotas shared by every process.
    (
        "ALTER TABLE conversations ADD COLUMN owner TEXT NOT NULL DEFAULT 'local'",
        "ALTER TABLE messages ADD COLUMN owner TEXT NOT NULL DEFAULT 'local'",
        "CREATE INDEX conversations_by_owner ON conversations(owner, updated_at DESC, seq DESC)",
        "DROP INDEX messages_client_id",
        "CREATE UNIQUE INDEX messages_client_id ON messages(owner, client_id) WHERE client_id IS NOT NULL",
        """CREATE TABLE usage (
            owner TEXT NOT NULL,
            day TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            reserved_tokens INTEGER NOT NULL DEFAULT 0,
            requests INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (owner, day)
        )""",
    ),
    # 6: status 'length': an answer cut by max_tokens or the owner's quota is told apart
    # from one the model ended. The table is rebuilt as in 4 (ids, owners and the
    # AUTOINCREMENT high-water mark kept; indexes and FTS triggers recreated).
    (
        """CREATE TABLE messages_v6 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'complete'
                CHECK (status IN ('complete', 'length', 'stopped', 'failed', 'interrupted', 'streaming')),
            created_at REAL NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            ttft_ms REAL,
            duration_ms REAL,
            model TEXT,
            params TEXT,
            client_id TEXT,
            answer_id TEXT,
            owner TEXT NOT NULL DEFAULT 'local'
        )""",
        """INSERT INTO messages_v6 (id, conversation_id, role, content, status, created_at,
               prompt_tokens, completion_tokens, ttft_ms, duration_ms, model, params,
               client_id, answer_id, owner)
           SELECT id, conversation_id, role, content, status, created_at,
               prompt_tokens, completion_tokens, ttft_ms, duration_ms, model, params,
               client_id, answer_id, owner FROM messages""",
        *_swap_messages("messages_v6"),
        "CREATE INDEX messages_by_conversation ON messages(conversation_id, id)",
        "CREATE UNIQUE INDEX messages_client_id ON messages(owner, client_id) WHERE client_id IS NOT NULL",
        "CREATE INDEX messages_answer_id ON messages(answer_id) WHERE answer_id IS NOT NULL",
        "CREATE INDEX messages_streaming ON messages(status) WHERE status = 'streaming'",
        *_MESSAGES_FTS_TRIGGERS,
    ),
    # 7: an answer grounded in the owner's documents keeps the sources its prompt
    # numbered, as JSON text ({"mode", "citations"}); NULL for every other message.
    (
        "ALTER TABLE messages ADD COLUMN citations TEXT",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


@contextmanager
def _transaction(conn: sqlite3.Connection, begin: str) -> Iterator[sqlite3.Connection]:
    conn.execute(begin)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite may already have rolled back on its own
            conn.execute("ROLLBACK")
        raise


def _migrate(conn: sqlite3.Connection, *, path: str, target: int = SCHEMA_VERSION) -> None:
    """Apply the migrations after the file's version, each in its own transaction.

    Another process may be migrating the same file: the version is read again after
    taking the write lock, so each step runs exactly once.
    """
    conn.execute("PRAGMA foreign_keys = OFF")  # a no-op inside a transaction: set before
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    while True:
        with _transaction(conn, "BEGIN IMMEDIATE"):
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0] or 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{path}: the conversation database has schema version {version}, but "
                    f"this Nanochat-Lite knows versions up to {SCHEMA_VERSION}. Upgrade "
                    "Nanochat-Lite, or use another history file."
                )
            if version >= target:
                return
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))
