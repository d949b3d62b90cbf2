"""The conversation store keeps what it acknowledged: across close and reopen, under
concurrent writers, with two stores on one database, and (SQLite) through a SIGKILL of
the writing process; SQLite's pragmas and file migrations, and what it refuses.

`store_spec` (conftest.py) runs the tests that take it on SQLite and on PostgreSQL;
the others are SQLite-only.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from crash_child import kill_child

from nanochat_lite.history import SCHEMA_VERSION, ConversationStore, Store, StoreError, open_store
from nanochat_lite.history import sqlite as history



# -- durability, schema, concurrency -------------------------------------------------


def test_persists_across_close_and_reopen(store_spec: str, tmp_path: Path) -> None:
    if not store_spec.startswith("postgresql://"):
        store_spec = str(tmp_path / "deep" / "er" / "history.db")  # parent folders are created
    with open_store(store_spec) as s:
        c = s.create(system="sys\x00nul")
        s.add_message(c.id, "user", "remember the walrus")
        s.add_message(c.id, "assistant", "noted", params={"top_k": 40})
        before = (s.get(c.id), s.messages(c.id))
    with open_store(store_spec) as s:
        assert (s.get(c.id), s.messages(c.id)) == before
        assert [h["message_id"] for h in s.search("walrus")] == [before[1][0].id]
        assert s.integrity_check() == "ok"
        assert s.add_message(c.id, "user", "more").id > before[1][-1].id


def test_sqlite_users_do_not_import_psycopg(tmp_path: Path) -> None:
    code = ("import sys; from nanochat_lite.history import open_store; "
            f"s = open_store({str(tmp_path / 'h.db')!r}); s.create(); s.close(); "
            "print(type(s).__name__, 'psycopg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["SQLiteStore", "False"]


def test_every_write_is_committed_when_it_returns(message_rows: Callable[[Path], int], tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    s = ConversationStore(path)
    c = s.create()
    for i in range(3):
        s.add_message(c.id, "user", f"m{i}")
        # A second connection sees it while the first is still open.
        assert message_rows(path) == i + 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()


def test_pragmas(tmp_path: Path) -> None:
    with ConversationStore(tmp_path / "p.db") as s:
        conn = s._conn
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == history.BUSY_TIMEOUT_MS


def test_migrates_an_empty_file_from_version_0(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with ConversationStore(path) as s:
        c = s.create()
        s.add_message(c.id, "user", "works")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_migration_backfills_search_for_old_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    history._migrate(conn, path=str(path), target=1)  # a file written before search existed
    conn.execute("INSERT INTO conversations (id, title, created_at, updated_at)"
                 " VALUES ('old', 'Ancient scrolls', 1.0, 2.0)")
    conn.execute("INSERT INTO messages (conversation_id, role, content, created_at)"
                 " VALUES ('old', 'user', 'papyrus question', 2.0)")
    conn.close()
    with ConversationStore(path) as s:
        assert [h["conversation_id"] for h in s.search("papyrus")] == ["old"]
        assert [h["conversation_id"] for h in s.search("scrolls")] == ["old"]
        assert s.messages("old")[0].content == "papyrus question"
        assert s.integrity_check() == "ok"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    ConversationStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}") as info:
        ConversationStore(path)
    assert str(path) in str(info.value) and "Upgrade" in str(info.value)
    with sqlite3.connect(path) as conn:  # left untouched
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not sqlite, just some text long enough to have a header" * 20)
    with pytest.raises(StoreError, match="notes.txt"):
        ConversationStore(path)


def test_concurrent_writers_lose_nothing(store_spec: str) -> None:
    threads_n, per_thread = 8, 30
    with open_store(store_spec) as s:
        shared = s.create().id
        own = [s.create().id for _ in range(threads_n)]
        barrier = threading.Barrier(threads_n)
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                barrier.wait()
                for i in range(per_thread):
                    s.add_message(shared, "user", f"t{k} m{i}")
                    s.add_message(own[k], "assistant", f"own t{k} m{i}")
                    if i % 10 == 0:
                        s.list()
                        s.search(f"t{k}")
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        workers = [threading.Thread(target=work, args=(k,)) for k in range(threads_n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == []

        shared_msgs = s.messages(shared)
        assert sorted(m.content for m in shared_msgs) == sorted(
            f"t{k} m{i}" for k in range(threads_n) for i in range(per_thread))
        for k in range(threads_n):  # each thread's own order is kept
            mine = [m.content for m in shared_msgs if m.content.startswith(f"t{k} ")]
            assert mine == [f"t{k} m{i}" for i in range(per_thread)]
            assert [m.content for m in s.messages(own[k])] == [
                f"own t{k} m{i}" for i in range(per_thread)]
        all_ids = [m.id for c in [shared, *own] for m in s.messages(c)]
        assert len(set(all_ids)) == 2 * threads_n * per_thread
        assert s.get(shared).message_count == threads_n * per_thread  # type: ignore[union-attr]
        assert s.integrity_check() == "ok"


def test_two_stores_on_one_database(store_spec: str) -> None:
    """Two processes' worth of connections (two replicas, or a server and a CLI) wait for
    each other; each sees the other's writes."""
    a, b = open_store(store_spec), open_store(store_spec)
    c = a.create().id

    def work(s: Store, tag: str) -> None:
        for i in range(40):
            s.add_message(c, "user", f"{tag}{i}")

    workers = [threading.Thread(target=work, args=(s, tag)) for s, tag in ((a, "a"), (b, "b"))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(m.content for m in b.messages(c)) == sorted(
        [f"a{i}" for i in range(40)] + [f"b{i}" for i in range(40)])
    assert a.integrity_check() == b.integrity_check() == "ok"
    assert b.get(c).title == "a0" or b.get(c).title == "b0"  # type: ignore[union-attr]
    assert a.list() == b.list()
    a.close()
    b.close()


def test_sigkill_loses_no_acknowledged_message(tmp_path: Path) -> None:
    """SIGKILL a writer 20 times; every message it acknowledged survives. Half the kills
    land at any moment (start-up and migration included), half after a counted number of
    acknowledged writes, with the other writer thread mid-write: counts, not clocks, so
    the number of messages checked is the same on a busy machine."""
    kills, rng = 20, random.Random(20250601)
    path = tmp_path / "crash.db"
    acked: dict[int, tuple[str, str]] = {}  # message id -> (conversation id, content)
    waited_for = 0
    for run in range(kills):
        if run % 2:  # any moment
            new = kill_child(str(path), run, tmp_path / f"child-{run}.log", pause=rng.uniform(0.0, 0.3))
        else:  # mid-write, however slow start-up is on a busy machine
            after = rng.randint(5, 25)
            new = kill_child(str(path), run, tmp_path / f"child-{run}.log", after=after)
            assert len(new) >= after, f"run {run}: read {after} acknowledgements, parsed {len(new)}"
            waited_for += after
        acked.update(new)

        with ConversationStore(path) as s:
            assert s.integrity_check() == "ok"
            stored = {m.id: (m.conversation_id, m.content)
                      for c in {cid for cid, _ in acked.values()} for m in s.messages(c)}
        missing = {mid: v for mid, v in acked.items() if stored.get(mid) != v}
        assert missing == {}, f"run {run}: {len(missing)} acknowledged messages lost"

    print(f"{kills} kills, {len(acked)} acknowledged messages checked ({waited_for} waited for)")
    assert len(acked) >= waited_for > 100
