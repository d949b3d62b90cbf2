"""The PostgreSQL store's schema: its migrations and how they run.

PostgreSQL's DDL is transactional: each entry of `_MIGRATIONS` runs in one transaction
with the version bump, under an advisory lock, so replicas starting at once migrate one
at a time and each step runs exactly once. Not here: reading or writing conversations
(postgres.py).
"""

from __future__ import annotations

from typing import Any

import psycopg

from .store import StoreError

_MIGRATION_LOCK = 7_245_118_301  # pg_advisory_xact_lock key: one migrator at a time
_INDEX_CHARS = 100_000
_WORD_CHARS = 255  # PostgreSQL regex counts stop at 255; 255 × 4 bytes < the 2047-byte lexeme limit
_TS_CONFIG = "nanochat_lite"

# What the tsvector is built from: NULs (escaped) become spaces, long runs are cut.
_INDEXED_CONTENT = (r"left(regexp_replace(replace(content, U&'\+10FFFD0', ' '), "
                    rf"'(\S{{{_WORD_CHARS}}})\S*', '\1', 'g'), {_INDEX_CHARS})")

# Each entry is one schema version; PostgreSQL's DDL is transactional, so each step runs
# in one transaction with the version bump and a crash mid-step leaves the previous one.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: conversations and messages. BIGSERIAL ids are never reused (a sequence only
    # goes up), so ids held elsewhere (URLs, vectors) cannot point at another message.
    (
        """CREATE TABLE conversations (
            seq BIGSERIAL PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            title TEXT NOT NULL DEFAULT '',
            system TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX conversations_recent ON conversations(updated_at DESC, seq DESC)",
        """CREATE TABLE messages (
            id BIGSERIAL PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'complete'
                CHECK (status IN ('complete', 'stopped', 'failed', 'interrupted')),
            created_at DOUBLE PRECISION NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            ttft_ms DOUBLE PRECISION,
            duration_ms DOUBLE PRECISION,
            model TEXT,
            params TEXT
        )""",
        "CREATE INDEX messages_by_conversation ON messages(conversation_id, id)",
    ),
    # 2: full-text search over message content and titles (generated columns fill
    # themselves for old rows).
    (
        "CREATE EXTENSION IF NOT EXISTS unaccent",
        f"CREATE TEXT SEARCH CONFIGURATION {_TS_CONFIG} (COPY = simple)",
        f"""ALTER TEXT SEARCH CONFIGURATION {_TS_CONFIG}
            ALTER MAPPING FOR hword, hword_part, word WITH unaccent, simple""",
        f"""ALTER TABLE messages ADD COLUMN tsv tsvector GENERATED ALWAYS AS
            (to_tsvector('{_TS_CONFIG}'::regconfig, {_INDEXED_CONTENT})) STORED""",
        "CREATE INDEX messages_tsv ON messages USING GIN (tsv)",
        f"""ALTER TABLE conversations ADD COLUMN tsv tsvector GENERATED ALWAYS AS
            (to_tsvector('{_TS_CONFIG}'::regconfig, title)) STORED""",
        "CREATE INDEX conversations_tsv ON conversations USING GIN (tsv)",
    ),
    # 3: embedding vectors of messages, for semantic search (filled lazily, per model).
    (
        """CREATE TABLE message_vectors (
            message_id BIGINT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            vector BYTEA NOT NULL
        )""",
    ),
    # 4: answers saved as they stream (status 'streaming'), a client's id on a user
    # message (sent twice, stored once) and the answer's id.
    (
        "ALTER TABLE messages DROP CONSTRAINT messages_status_check",
        """ALTER TABLE messages ADD CONSTRAINT messages_status_check
            CHECK (status IN ('complete', 'stopped', 'failed', 'interrupted', 'streaming'))""",
        "ALTER TABLE messages ADD COLUMN client_id TEXT, ADD COLUMN answer_id TEXT",
        "CREATE UNIQUE INDEX messages_client_id ON messages(client_id) WHERE client_id IS NOT NULL",
        "CREATE INDEX messages_answer_id ON messages(answer_id) WHERE answer_id IS NOT NULL",
        "CREATE INDEX messages_streaming ON messages(status) WHERE status = 'streaming'",
    ),
    # 5: owners (the API key's name; rows from before keys were named are 'local') on
    # conversations and, copied from their conversation, messages: a client_id is then
    # unique per owner (another owner's id must not collide, or its existence would
    # show); and tokens per owner and UTC day, for quotas shared by every replica.
    (
        "ALTER TABLE conversations ADD COLUMN owner TEXT NOT NULL DEFAULT 'local'",
        "ALTER TABLE messages ADD COLUMN owner TEXT NOT NULL DEFAULT 'local'",
        "CREATE INDEX conversations_by_owner ON conversations(owner, updated_at DESC, seq DESC)",
        "DROP INDEX messages_client_id",
        "CREATE UNIQUE INDEX messages_client_id ON messages(owner, client_id) WHERE client_id IS NOT NULL",
        """CREATE TABLE usage (
            owner TEXT NOT NULL,
            day TEXT NOT NULL,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            reserved_tokens BIGINT NOT NULL DEFAULT 0,
            requests BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (owner, day)
        )""",
    ),
    # 6: status 'length': an answer cut by max_tokens or the owner's quota is told apart
    # from one the model ended.
    (
        "ALTER TABLE messages DROP CONSTRAINT messages_status_check",
        """ALTER TABLE messages ADD CONSTRAINT messages_status_check
            CHECK (status IN ('complete', 'length', 'stopped', 'failed', 'interrupted', 'streaming'))""",
    ),
    # 7: an answer grounded in the owner's documents keeps the sources its prompt
    # numbered, as JSON text ({"mode", "citations"}); NULL for every other message.
    (
        "ALTER TABLE messages ADD COLUMN citations TEXT",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


def _migrate(conn: psycopg.Connection[Any], *, url: str, target: int = SCHEMA_VERSION) -> None:
    """Apply the migrations after the database's version, each in its own transaction.
    Several replicas may start at once: an advisory lock lets one migrate at a time, and
    the version is read again under it, so each step runs exactly once."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = (row[0] if row else None) or 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{url}: the conversation database has schema version {version}, but "
                    f"this Nanochat-Lite knows versions up to {SCHEMA_VERSION}. Upgrade "
                    "Nanochat-Lite, or use another database."
                )
            if version >= target:
                return
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)  # our own constant SQL
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version + 1,))
