"""Answers saved as they stream, client ids and answer ids, storage faults: the store
methods the server's resumable answers use (issue #15 item 5, #11 item 5). The `store`
fixture (conftest.py) runs each test on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from nanochat_lite.history import AlreadyExists, NotFound, SQLiteStore, StorageUnavailable, Store, open_store
from nanochat_lite.history import sqlite as sqlite_backend


def test_streaming_answer_is_updated_then_finalized(store: Store) -> None:
    c = store.create()
    store.add_message(c.id, "user", "hi", client_id="c-1", answer_id="a1")
    m = store.add_message(c.id, "assistant", "", status="streaming", answer_id="a1", model="m")
    store.update_message(m.id, "Hel", status="streaming")
    assert store.answer_message("a1").content == "Hel"  # type: ignore[union-attr]
    assert store.answer_message("a1").status == "streaming"  # type: ignore[union-attr]
    store.update_message(m.id, "Hello", status="complete", prompt_tokens=3, completion_tokens=2, ttft_ms=1.5,
                         duration_ms=9.0)
    got = store.answer_message("a1")
    assert got is not None
    assert (got.content, got.status, got.prompt_tokens, got.completion_tokens, got.model) == \
        ("Hello", "complete", 3, 2, "m")
    assert got.id == m.id and got.role == "assistant" and got.answer_id == "a1"
    # The full-text index follows the updates.
    assert [h["message_id"] for h in store.search("Hello")] == [m.id]
    # The user message carries the client id and names its answer.
    user = store.message_by_client_id("c-1")
    assert user is not None and user.role == "user" and user.answer_id == "a1" and user.content == "hi"
    assert [x.id for x in store.messages(c.id)] == [user.id, m.id]


def test_unknown_ids_and_gone_messages(store: Store) -> None:
    assert store.message_by_client_id("nope") is None
    assert store.answer_message("nope") is None
    c = store.create()
    m = store.add_message(c.id, "assistant", "", status="streaming", answer_id="a2")
    store.delete(c.id)
    with pytest.raises(NotFound):
        store.update_message(m.id, "late", status="complete")


def test_client_id_is_stored_once(store: Store) -> None:
    c = store.create()
    store.add_message(c.id, "user", "first", client_id="same")
    with pytest.raises(AlreadyExists):
        store.add_message(c.id, "user", "again", client_id="same")
    assert [m.content for m in store.messages(c.id)] == ["first"]
    store.add_message(c.id, "user", "no id")  # None is never a duplicate
    store.add_message(c.id, "user", "no id either")
    assert len(store.messages(c.id)) == 3


@pytest.mark.parametrize("bad", ["", "x" * 65, "has space", "tab\t", "é", "\x00"])
def test_client_id_shape(store: Store, bad: str) -> None:
    c = store.create()
    with pytest.raises(ValueError, match="client_id"):
        store.add_message(c.id, "user", "x", client_id=bad)


def test_interrupt_streaming_keeps_the_text(store: Store) -> None:
    c = store.create()
    done = store.add_message(c.id, "assistant", "finished", status="complete")
    left = store.add_message(c.id, "assistant", "", status="streaming", answer_id="a3")
    store.update_message(left.id, "half an ans", status="streaming")
    assert store.interrupt_streaming() == 1
    by_id = {m.id: m for m in store.messages(c.id)}
    assert (by_id[left.id].status, by_id[left.id].content) == ("interrupted", "half an ans")
    assert by_id[done.id].status == "complete"
    assert store.interrupt_streaming() == 0


def test_migrates_a_version_3_file_keeping_ids_search_and_vectors(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path, isolation_level=None)
    sqlite_backend._migrate(conn, path=str(path), target=3)
    conn.execute("INSERT INTO conversations (id, title, created_at, updated_at) VALUES ('c', 't', 1, 1)")
    for i in range(1, 5):
        conn.execute("INSERT INTO messages (conversation_id, role, content, created_at) VALUES ('c', 'user', ?, 1)",
                     (f"word{i} ferret",))
    conn.execute("DELETE FROM messages WHERE id = 4")  # its id must never be handed out again
    conn.execute("INSERT INTO message_vectors (message_id, model, vector) VALUES (2, 'e', x'00')")
    conn.close()
    with SQLiteStore(path) as s:
        assert [m.id for m in s.messages("c")] == [1, 2, 3]
        assert len(s.vectors("e")) == 1  # not cascaded away by the table rebuild
        assert {h["message_id"] for h in s.search("ferret")} == {1, 2, 3}
        new = s.add_message("c", "assistant", "", status="streaming", answer_id="a")
        assert new.id == 5
        s.update_message(new.id, "a badger", status="complete")
        assert [h["message_id"] for h in s.search("badger")] == [5]
        assert s.integrity_check() == "ok"
        s.delete("c")
        assert s.vectors("e") == []  # foreign keys are on again after the migration


def test_locked_sqlite_file_raises_storage_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    with open_store(path) as s:
        c = s.create()
        s._conn.execute("PRAGMA busy_timeout = 200")  # instead of 5 s, for a quick test
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            t0 = time.monotonic()
            with pytest.raises(StorageUnavailable, match="locked"):
                s.add_message(c.id, "user", "blocked")
            assert time.monotonic() - t0 < 5
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        s.add_message(c.id, "user", "free again")
        assert [m.content for m in s.messages(c.id)] == ["free again"]
