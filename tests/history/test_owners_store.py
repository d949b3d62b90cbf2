"""Owners in the conversation store (issue #20 items 1 and 3): every method that reads or
changes conversations sees one owner's rows, another owner's id answers exactly as an id
that does not exist, `owner=None` reads everyone's (an admin's view), a client_id is
unique per owner; tokens per owner and UTC day are reserved and settled atomically; and a
database made by the previous schema (version 4) migrates with its rows owned by 'local'.

The `store` and `store_spec` fixtures (conftest.py) run each test on SQLite and on
PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import pytest

from nanochat_lite.history import LOCAL_OWNER, AlreadyExists, NotFound, Store, is_postgres_url, open_store

SECRET = "PINEAPPLE42 is my secret"


def _two_owners(store: Store) -> tuple[str, str]:
    """alice's conversation (a secret, a client id, an answer id) and bob's; their ids."""
    a = store.create(owner="alice", system="alice's system")
    store.add_message(a.id, "user", SECRET, client_id="same-client-id", answer_id="ans-a", owner="alice")
    store.add_message(a.id, "assistant", "Noted.", answer_id="ans-a", owner="alice")
    b = store.create(owner="bob")
    store.add_message(b.id, "user", "bob asks about bread", client_id="same-client-id", answer_id="ans-b",
                      owner="bob")
    return a.id, b.id


def test_each_owner_sees_only_its_rows_and_another_id_is_like_a_missing_one(store: Store) -> None:
    a, b = _two_owners(store)
    # get / list: bob sees his conversation only; alice's id answers as a missing id does.
    assert store.get(a, owner="bob") is None and store.get("no-such-id", owner="bob") is None
    got = store.get(a, owner="alice")
    assert got is not None and got.owner == "alice" and got.title == SECRET and got.message_count == 2
    convs, total = store.list(owner="bob")
    assert ([c.id for c in convs], total) == ([b], 1) and convs[0].owner == "bob"
    assert store.list(owner="carol") == ([], 0)
    assert store.list() == ([], 0)  # the default owner, 'local', has nothing here
    # messages / export: NotFound with the same message shape as for a missing id.
    for call in (lambda cid: store.messages(cid, owner="bob"),
                 lambda cid: store.export(cid, "json", owner="bob"),
                 lambda cid: store.export(cid, "markdown", owner="bob")):
        with pytest.raises(NotFound) as theirs:
            call(a)
        with pytest.raises(NotFound) as missing:
            call("no-such-id")
        assert str(theirs.value).replace(a, "ID") == str(missing.value).replace("no-such-id", "ID")
    assert [m.content for m in store.messages(a, owner="alice")] == [SECRET, "Noted."]
    assert SECRET in store.export(a, "markdown", owner="alice")
    # search: bob's words never find alice's rows (message or title).
    assert store.search("PINEAPPLE42", owner="bob") == []
    assert store.search("secret", owner="bob") == []
    assert {h["conversation_id"] for h in store.search("PINEAPPLE42", owner="alice")} == {a}
    assert {h["conversation_id"] for h in store.search("bread", owner="bob")} == {b}
    # client ids and answer ids: per owner.
    assert store.message_by_client_id("same-client-id", owner="alice").content == SECRET  # type: ignore[union-attr]
    assert store.message_by_client_id("same-client-id", owner="bob").content == "bob asks about bread"  # type: ignore[union-attr]
    assert store.message_by_client_id("same-client-id", owner="carol") is None
    assert store.answer_message("ans-a", owner="bob") is None
    assert store.answer_message("ans-a", owner="alice").content == "Noted."  # type: ignore[union-attr]


def test_another_owner_cannot_change_a_conversation(store: Store) -> None:
    a, _ = _two_owners(store)
    for change in (lambda: store.rename(a, "pwned", owner="bob"),
                   lambda: store.set_system(a, "pwned", owner="bob"),
                   lambda: store.add_message(a, "user", "pwned", owner="bob")):
        with pytest.raises(NotFound):
            change()
    assert store.delete(a, owner="bob") is False
    assert store.delete("no-such-id", owner="bob") is False
    conv = store.get(a, owner="alice")
    assert conv is not None and (conv.title, conv.system, conv.message_count) == (SECRET, "alice's system", 2)
    # Her own changes work, and a message appended to her conversation is hers.
    assert store.rename(a, "Renamed", owner="alice").title == "Renamed"
    m = store.add_message(a, "user", "more", client_id="c2", owner="alice")
    assert store.message_by_client_id("c2", owner="alice").id == m.id  # type: ignore[union-attr]
    assert store.message_by_client_id("c2", owner="bob") is None
    assert store.delete(a, owner="alice") is True and store.get(a, owner=None) is None


def test_owner_none_reads_everyone_and_writes_need_an_owner(store: Store) -> None:
    a, b = _two_owners(store)
    convs, total = store.list(owner=None)
    assert total == 2 and {(c.id, c.owner) for c in convs} == {(a, "alice"), (b, "bob")}
    assert store.get(a, owner=None).owner == "alice"  # type: ignore[union-attr]
    assert len(store.messages(a, owner=None)) == 2 and SECRET in store.export(a, "json", owner=None)
    assert {h["conversation_id"] for h in store.search("bread", owner=None)} == {b}
    assert {h["conversation_id"] for h in store.search("PINEAPPLE42", owner=None)} == {a}
    for write in (lambda: store.create(owner=None),  # type: ignore[arg-type]
                  lambda: store.rename(a, "x", owner=None),  # type: ignore[arg-type]
                  lambda: store.delete(a, owner=None),  # type: ignore[arg-type]
                  lambda: store.add_message(a, "user", "x", owner=None),  # type: ignore[arg-type]
                  lambda: store.message_by_client_id("same-client-id", owner=None)):  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="owner"):
            write()
    for bad in ("", "has space", "x" * 65, "a:b", "é"):
        with pytest.raises(ValueError, match="owner"):
            store.list(owner=bad)
    assert store.get(a, owner=None).message_count == 2  # type: ignore[union-attr]  (nothing changed)


def test_a_client_id_is_unique_per_owner(store: Store) -> None:
    a = store.create(owner="alice")
    b = store.create(owner="bob")
    store.add_message(a.id, "user", "one", client_id="k", owner="alice")
    store.add_message(b.id, "user", "two", client_id="k", owner="bob")  # another owner: no collision
    with pytest.raises(AlreadyExists):
        store.add_message(a.id, "user", "three", client_id="k", owner="alice")


def test_semantic_vectors_are_per_owner(store: Store) -> None:
    a, b = _two_owners(store)
    bob_rows = store.unembedded("m", limit=10, owner="bob")
    assert [content for _, content in bob_rows] == ["bob asks about bread"]
    alice_rows = store.unembedded("m", limit=10, owner="alice")
    assert [content for _, content in alice_rows] == [SECRET, "Noted."]
    assert len(store.unembedded("m", limit=10, owner=None)) == 3
    store.put_vectors("m", [(mid, b"\x00\x00\x80?") for mid, _ in alice_rows + bob_rows])
    assert [hit["conversation_id"] for hit, _ in store.vectors("m", owner="bob")] == [b]
    assert {hit["snippet"] for hit, _ in store.vectors("m", owner="alice")} == {SECRET, "Noted."}
    assert len(store.vectors("m", owner=None)) == 3
    assert store.unembedded("m", limit=10, owner="alice") == []


# -- tokens per owner and day ------------------------------------------------------------------
def test_reserve_then_settle(store: Store) -> None:
    day = "2026-11-30"
    assert store.reserve_usage("alice", day, 120, quota=300) == 120
    assert store.reserve_usage("alice", day, 500, quota=300) == 180  # capped to what is left
    assert store.reserve_usage("alice", day, 1, quota=300) == 0  # nothing left: nothing held
    (row,) = store.usage(owner="alice")
    assert (row.day, row.reserved_tokens, row.counted, row.requests) == (day, 300, 300, 0)
    # The first request used 20 + 50 of its 120; the second 10 + 170 of its 180.
    store.settle_usage("alice", day, reserved=120, prompt_tokens=20, completion_tokens=50)
    assert store.reserve_usage("alice", day, 1000, quota=300, minimum=50) == 50  # exactly enough
    store.settle_usage("alice", day, reserved=180, prompt_tokens=10, completion_tokens=170)
    store.settle_usage("alice", day, reserved=50, prompt_tokens=0, completion_tokens=0, requests=0)  # refused
    (row,) = store.usage(owner="alice", day=day)
    assert (row.prompt_tokens, row.completion_tokens, row.reserved_tokens, row.requests) == (30, 220, 0, 2)
    assert store.reserve_usage("alice", day, 100, quota=300, minimum=51) == 0  # 50 left < 51
    # Without a reservation (no quota) a settle only counts; another owner and day are apart.
    store.settle_usage("bob", day, reserved=0, prompt_tokens=7, completion_tokens=3)
    store.settle_usage("alice", "2026-12-01", reserved=0, prompt_tokens=1, completion_tokens=1)
    assert [(u.owner, u.day, u.counted) for u in store.usage()] == [
        ("alice", day, 250), ("bob", day, 10), ("alice", "2026-12-01", 2)]
    assert [u.owner for u in store.usage(day=day)] == ["alice", "bob"]
    for bad in (lambda: store.reserve_usage("alice", "30/11/2026", 1, quota=3),
                lambda: store.reserve_usage("alice", day, -1, quota=3),
                lambda: store.settle_usage("a b", day, reserved=0, prompt_tokens=0, completion_tokens=0)):
        with pytest.raises(ValueError):
            bad()


def test_concurrent_reservations_from_two_processes_never_exceed_the_quota(store_spec: str) -> None:
    """Two store objects (two connections, as two server processes have) and 8 threads
    each reserve 37 tokens at a time against a quota of 300: at most 300 are ever held."""
    stores = [open_store(store_spec), open_store(store_spec)]
    grants: list[int] = []
    lock = threading.Lock()

    def work(s: Store) -> None:
        for _ in range(5):
            g = s.reserve_usage("alice", "2026-11-30", 37, quota=300)
            with lock:
                grants.append(g)

    try:
        threads = [threading.Thread(target=work, args=(stores[k % 2],)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (row,) = stores[0].usage(owner="alice")
    finally:
        for s in stores:
            s.close()
    print(f"\nconcurrent reservations: {len(grants)} asked 37 each, granted {sum(grants)} of a 300 quota "
          f"({sorted(set(grants))}); held in the store: {row.reserved_tokens}")
    assert sum(grants) == row.reserved_tokens == 300
    # 8 × 37 = 296, then the last 4 once, then nothing.
    assert sorted(grants, reverse=True)[:10] == [37] * 8 + [4, 0]


# -- migration from the previous schema --------------------------------------------------------
def _version_4_database(spec: str) -> None:
    """A database as the previous Nanochat-Lite (schema 4) left it: a conversation with a
    user message carrying a client id, and an answer."""
    rows: list[tuple[str, tuple[Any, ...]]] = [
        ("INSERT INTO conversations (id, title, created_at, updated_at) VALUES ({p}, {p}, 1.0, 2.0)",
         ("old", "Ancient scrolls")),
        ("INSERT INTO messages (conversation_id, role, content, created_at, client_id, answer_id)"
         " VALUES ({p}, 'user', {p}, 1.5, 'old-client', 'old-answer')", ("old", "papyrus question")),
        ("INSERT INTO messages (conversation_id, role, content, created_at, answer_id)"
         " VALUES ({p}, 'assistant', {p}, 2.0, 'old-answer')", ("old", "papyrus answer")),
    ]
    if is_postgres_url(spec):
        import psycopg

        from nanochat_lite.history import postgres

        with psycopg.connect(spec, autocommit=True) as pg:
            postgres._migrate(pg, url=spec, target=4)
            for sql, args in rows:
                pg.execute(sql.format(p="%s"), args)  # type: ignore[arg-type]
        return
    from nanochat_lite.history import sqlite_schema

    conn = sqlite3.connect(spec, isolation_level=None)
    sqlite_schema._migrate(conn, path=spec, target=4)
    for sql, args in rows:
        conn.execute(sql.format(p="?"), args)
    conn.close()


def test_rows_of_the_previous_schema_become_local(store_spec: str) -> None:
    _version_4_database(store_spec)
    with open_store(store_spec) as s:  # migrates 4 -> 5
        assert s.integrity_check() == "ok"
        convs, total = s.list()  # the default owner is 'local'
        assert total == 1 and convs[0].id == "old" and convs[0].owner == LOCAL_OWNER
        assert s.list(owner="alice") == ([], 0) and s.get("old", owner="alice") is None
        assert [m.content for m in s.messages("old", owner=LOCAL_OWNER)] == ["papyrus question", "papyrus answer"]
        assert s.message_by_client_id("old-client", owner=LOCAL_OWNER).content == "papyrus question"  # type: ignore[union-attr]
        assert s.message_by_client_id("old-client", owner="alice") is None
        assert s.answer_message("old-answer").content == "papyrus answer"  # type: ignore[union-attr]
        assert s.answer_message("old-answer", owner="alice") is None
        assert {h["conversation_id"] for h in s.search("papyrus")} == {"old"}
        assert s.search("papyrus", owner="alice") == []
        # The old message's client id is local's: alice may use the same id, local may not twice.
        mine = s.create(owner="alice")
        s.add_message(mine.id, "user", "hi", client_id="old-client", owner="alice")
        with pytest.raises(AlreadyExists):
            s.add_message("old", "user", "again", client_id="old-client")
        # The usage table is there, empty.
        assert s.usage() == []
        assert s.reserve_usage(LOCAL_OWNER, "2026-11-30", 10, quota=100) == 10
    with open_store(store_spec) as s:  # a second open migrates nothing and keeps it all
        assert s.list(owner=None)[1] == 2 and s.usage()[0].reserved_tokens == 10
