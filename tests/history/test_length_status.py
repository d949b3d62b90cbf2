"""Schema 6: an answer cut by max_tokens or the owner's quota is stored as `length`, told
apart from one the model ended; a database of schema 5 keeps every row, id, owner, client
id and its search index across the migration (SQLite rebuilds the table for the CHECK)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from nanochat_lite.history import Store, StoreError, is_postgres_url, open_store


def test_length_is_a_final_status(store: Store) -> None:
    conv = store.create(owner="alice")
    m = store.add_message(conv.id, "assistant", "", status="streaming", owner="alice")
    store.update_message(m.id, "cut short", status="length", completion_tokens=8)
    got = store.messages(conv.id, owner="alice")
    assert [(x.content, x.status, x.completion_tokens) for x in got] == [("cut short", "length", 8)]
    with pytest.raises((ValueError, StoreError)):
        store.update_message(m.id, "x", status="truncated")


def _version_5_database(spec: str) -> None:
    rows: list[tuple[str, tuple[Any, ...]]] = [
        ("INSERT INTO conversations (id, title, created_at, updated_at, owner) VALUES ({p}, {p}, 1.0, 2.0, 'bob')",
         ("old", "Ancient scrolls")),
        ("INSERT INTO messages (conversation_id, role, content, created_at, client_id, answer_id, owner)"
         " VALUES ({p}, 'user', {p}, 1.5, 'old-client', 'old-answer', 'bob')", ("old", "papyrus question")),
        ("INSERT INTO messages (conversation_id, role, content, status, created_at, answer_id, owner)"
         " VALUES ({p}, 'assistant', {p}, 'stopped', 2.0, 'old-answer', 'bob')", ("old", "papyrus answer")),
        # A deleted message: its id must stay unused after the rebuild.
        ("INSERT INTO messages (conversation_id, role, content, created_at, owner)"
         " VALUES ({p}, 'user', {p}, 3.0, 'bob')", ("old", "gone")),
        ("DELETE FROM messages WHERE content = {p}", ("gone",)),
    ]
    if is_postgres_url(spec):
        import psycopg

        from nanochat_lite.history import postgres

        with psycopg.connect(spec, autocommit=True) as pg:
            postgres._migrate(pg, url=spec, target=5)
            for sql, args in rows:
                pg.execute(sql.format(p="%s"), args)  # type: ignore[arg-type]
        return
    from nanochat_lite.history import sqlite_schema

    conn = sqlite3.connect(spec, isolation_level=None)
    sqlite_schema._migrate(conn, path=spec, target=5)
    for sql, args in rows:
        conn.execute(sql.format(p="?"), args)
    conn.close()


def test_a_schema_5_database_keeps_everything(store_spec: str) -> None:
    _version_5_database(store_spec)
    with open_store(store_spec) as s:  # migrates 5 -> 6
        assert s.integrity_check() == "ok"
        got = s.messages("old", owner="bob")
        assert [(m.id, m.role, m.content, m.status) for m in got] == [
            (1, "user", "papyrus question", "complete"), (2, "assistant", "papyrus answer", "stopped")]
        assert s.get("old", owner="alice") is None
        assert s.message_by_client_id("old-client", owner="bob").content == "papyrus question"  # type: ignore[union-attr]
        assert s.answer_message("old-answer", owner="bob").content == "papyrus answer"  # type: ignore[union-attr]
        assert {h["conversation_id"] for h in s.search("papyrus", owner="bob")} == {"old"}
        # The triggers came back: new and changed text is searchable, deleted text is not.
        new = s.add_message("old", "assistant", "", status="streaming", owner="bob")
        assert new.id == 4  # 3 was deleted before the migration and is never reused
        s.update_message(new.id, "a parchment answer", status="length")
        assert {h["conversation_id"] for h in s.search("parchment", owner="bob")} == {"old"}
        assert [m.status for m in s.messages("old", owner="bob")][-1] == "length"
        assert s.delete("old", owner="bob")
        assert s.search("papyrus", owner="bob") == []
