"""Fixtures of the conversation store's tests: `store_spec` (a SQLite file path, or the URL
of a fresh PostgreSQL database: every test that takes it runs on both backends) and
`store`, the store opened on it; `message_rows` counts a SQLite file's message rows
through a second connection. PostgreSQL comes from tests/pgcluster.py (skipped when
the server binaries are absent)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nanochat_lite.history import Store, open_store


@pytest.fixture(params=["sqlite", "postgres"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What open_store() takes: a SQLite file path, or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "h.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_spec: str) -> Iterator[Store]:
    s = open_store(store_spec)
    assert isinstance(s, Store)
    yield s
    s.close()


def _message_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]


@pytest.fixture
def message_rows() -> Callable[[Path], int]:
    """Rows in a SQLite store's messages table, read through a second connection."""
    return _message_rows
