"""Connecting to PostgreSQL, for the conversation store (postgres.py) and the document
store (documents/store_postgres.py): one place that checks the URL, the server and the
database's encoding, sets what every connection needs, and says how to fix what fails."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from .store import StoreError

CONNECT_TIMEOUT_S = 5  # an unreachable server must not hang start-up
# A write waiting this long for another transaction's row lock gives up (StorageUnavailable),
# as SQLite's busy timeout does: a client hears back instead of hanging.
LOCK_TIMEOUT_MS = 5000


def redact(url: str) -> str:
    """The URL without its password: `postgresql://u:secret@h/db` -> `postgresql://u:***@h/db`."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


def connect(url: str, *, what: str = "conversations") -> psycopg.Connection[Any]:
    """A connection to the PostgreSQL at `url` in the mode both stores (conversations and
    documents) use: autocommit, each write in an explicit transaction; every commit waits
    for its WAL to reach disk, whatever the server's default; a lock waits at most
    LOCK_TIMEOUT_MS. Else StoreError naming the problem and the fix; `what` names the
    stored things in it."""
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.ProgrammingError as e:  # the URL itself is malformed
        raise StoreError(
            f"{redact(url)}: not a usable PostgreSQL URL ({_first_line(e)}). Expected "
            "postgresql://user[:password]@host[:port]/database."
        ) from e
    except psycopg.OperationalError as e:
        raise StoreError(
            f"{redact(url)}: cannot connect to PostgreSQL ({_first_line(e)}). Check that the "
            "server is running and reachable, that the user and database in the URL exist "
            "(createdb NAME), and the password; or use a SQLite file with --db PATH."
        ) from e
    try:
        encoding = conn.execute("SHOW server_encoding").fetchone()
        if encoding is None or encoding[0] != "UTF8":
            raise StoreError(
                f"{redact(url)}: the database's encoding is {encoding and encoding[0]}, "
                f"but {what} need UTF8. Create it with "
                "`createdb --locale=C --template=template0 -E UTF8 NAME`."
            )
        conn.execute("SET synchronous_commit = on")
        conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
    except BaseException:
        conn.close()
        raise
    return conn


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
