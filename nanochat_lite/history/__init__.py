"""The conversation store. This is the public API: `open_store(spec)` picks the backend
from the spec (a file path: SQLite, the embedded default; a ``postgresql://`` URL:
PostgreSQL, for several server processes on one database), and both backends satisfy
`Store`.

psycopg is imported only when a PostgreSQL URL is opened: SQLite users do not pay for it.
"""

from __future__ import annotations

import os

from .sqlite import SCHEMA_VERSION, SQLiteStore
from .store import (
    LOCAL_OWNER,
    MARK_END,
    MARK_START,
    ROLES,
    STATUSES,
    AlreadyExists,
    Conversation,
    Message,
    NotFound,
    StorageUnavailable,
    Store,
    StoreError,
    Usage,
    check_owner,
)
from .text import MAX_QUERY_TERMS, MAX_TITLE_CHARS, TITLE_CHARS, make_title

# The name the server and tests have always used for the SQLite store.
ConversationStore = SQLiteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")

__all__ = [
    "LOCAL_OWNER", "MARK_END", "MARK_START", "MAX_QUERY_TERMS", "MAX_TITLE_CHARS", "ROLES", "SCHEMA_VERSION",
    "STATUSES", "TITLE_CHARS", "AlreadyExists", "Conversation", "ConversationStore", "Message",
    "NotFound", "SQLiteStore", "StorageUnavailable", "Store", "StoreError", "Usage",
    "check_owner", "is_postgres_url", "make_title", "open_store",
]


def is_postgres_url(spec: str | os.PathLike[str]) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL, False for a file path."""
    return isinstance(spec, str) and spec.lower().startswith(POSTGRES_SCHEMES)


def open_store(spec: str | os.PathLike[str]) -> Store:
    """The store `spec` names: a ``postgresql://user@host/db`` URL opens PostgreSQL, anything
    else is a SQLite file path (":memory:" for tests). Raises StoreError, naming the problem
    and the fix, when the database cannot be used."""
    if is_postgres_url(spec):
        try:
            from .postgres import PostgresStore  # psycopg only for those who use it
        except ImportError as e:
            raise StoreError(
                f"a PostgreSQL store needs psycopg 3, which is not installed ({e}). Install it "
                "with `pip install 'nanochat-lite[postgres]'`, or use a SQLite file with --db PATH."
            ) from e

        return PostgresStore(str(spec))
    return SQLiteStore(spec)
