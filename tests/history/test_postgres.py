"""PostgreSQL-only behaviour of the conversation store: schema migrations and their
version table, errors a person can act on, the same answers as SQLite for the same
calls, and SIGKILL of a writer losing nothing acknowledged. The behaviour both backends
share is tested once for both in test_store.py and test_durability.py."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from crash_child import kill_child

from nanochat_lite.history import Store, StoreError, open_store
from serverproc import free_port



def _sql(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def test_migrations_record_the_schema_version(pg_url: str) -> None:
    from nanochat_lite.history import postgres

    with open_store(pg_url) as s:
        s.create()
    assert _sql(pg_url, "SELECT version FROM schema_version") == [(postgres.SCHEMA_VERSION,)]
    with open_store(pg_url) as s:  # a second open migrates nothing
        assert s.list()[1] == 1 and s.integrity_check() == "ok"
    assert _sql(pg_url, "SELECT version FROM schema_version") == [(postgres.SCHEMA_VERSION,)]


def test_migration_indexes_rows_written_before_search_existed(pg_url: str) -> None:
    import psycopg

    from nanochat_lite.history import postgres

    with psycopg.connect(pg_url, autocommit=True) as conn:
        postgres._migrate(conn, url=pg_url, target=1)
        conn.execute("INSERT INTO conversations (id, title, created_at, updated_at)"
                     " VALUES ('old', 'Ancient scrolls', 1.0, 2.0)")
        conn.execute("INSERT INTO messages (conversation_id, role, content, created_at)"
                     " VALUES ('old', 'user', 'papyrus question', 2.0)")
    with open_store(pg_url) as s:
        assert [h["conversation_id"] for h in s.search("papyrus")] == ["old"]
        assert [h["conversation_id"] for h in s.search("scrolls")] == ["old"]
        assert s.messages("old")[0].content == "papyrus question"
        assert s.integrity_check() == "ok"


def test_refuses_a_newer_schema(pg_url: str) -> None:
    from nanochat_lite.history import postgres

    open_store(pg_url).close()
    _sql(pg_url, "UPDATE schema_version SET version = %s", (postgres.SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"schema version {postgres.SCHEMA_VERSION + 1}") as info:
        open_store(pg_url)
    assert "Upgrade" in str(info.value)
    assert _sql(pg_url, "SELECT version FROM schema_version") == [(postgres.SCHEMA_VERSION + 1,)]


def test_unreachable_server_and_bad_urls_name_the_fix() -> None:
    port = free_port()  # nothing listens here
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as info:
        open_store(f"postgresql://someone:s3cret@127.0.0.1:{port}/chats")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "s3cret" not in message and "someone:***@" in message and "server is running" in message
    with pytest.raises(StoreError, match="not a usable PostgreSQL URL|cannot connect"):
        open_store("postgresql://127.0.0.1:notaport/x")


def test_missing_database_names_createdb(pg_cluster: Any) -> None:
    with pytest.raises(StoreError, match="createdb"):
        open_store(pg_cluster.url("no_such_database"))


def _scenario(s: Store) -> list[Any]:
    """A run of calls whose answers (without times and scores) must match across backends."""
    a = s.create(system="sys", conversation_id="a")
    b = s.create(conversation_id="b")
    out: list[Any] = []
    for text in ["How do llamas hum?", "They hum softly.", "café naïve 🎉", "more llamas"]:
        out.append(s.add_message("a", "user" if len(out) % 2 == 0 else "assistant", text).id)
    out.append(s.add_message("b", "user", "Unrelated\x00question", status="stopped").id)
    s.rename("b", "Llama farm")
    page, total = s.list(limit=1, offset=1)
    out += [[c.id for c in page], total, [c.title for c in s.list()[0]]]
    out.append([(m.id, m.role, m.content, m.status) for m in s.messages("a")])
    for q in ["llama", "cafe", "🎉", "hum", "zzz"]:
        out.append(sorted((h["conversation_id"], h["message_id"], h["role"], h["title"]) for h in s.search(q)))
    out.append(s.export("b", "markdown"))
    out.append([mid for mid, _ in s.unembedded("m", limit=10)])
    s.delete("a")
    out += [s.list()[1], s.unembedded("m", limit=10), a.title, b.message_count]
    return out


def test_same_answers_as_sqlite(pg_url: str, tmp_path: Path) -> None:
    with open_store(tmp_path / "h.db") as lite, open_store(pg_url) as pg:
        assert _scenario(pg) == _scenario(lite)


def test_sigkill_loses_no_acknowledged_message(pg_url: str, tmp_path: Path) -> None:
    """SIGKILL a writer 10 times, each after a counted number of acknowledged writes (the
    other writer thread mid-write); every message it acknowledged is in PostgreSQL."""
    kills, rng = 10, random.Random(20261129)
    acked: dict[int, tuple[str, str]] = {}
    waited_for = 0
    for run in range(kills):
        after = rng.randint(1, 20)
        new = kill_child(pg_url, run, tmp_path / f"child-{run}.log", after=after)
        assert len(new) >= after, f"run {run}: read {after} acknowledgements, parsed {len(new)}"
        waited_for += after
        acked.update(new)
        with open_store(pg_url) as s:
            assert s.integrity_check() == "ok"
            stored = {m.id: (m.conversation_id, m.content)
                      for c in {cid for cid, _ in acked.values()} for m in s.messages(c)}
        missing = {mid: v for mid, v in acked.items() if stored.get(mid) != v}
        assert missing == {}, f"run {run}: {len(missing)} acknowledged messages lost"
    assert len(acked) >= waited_for >= kills
