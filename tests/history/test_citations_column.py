"""Schema 7: an answer grounded in the owner's documents keeps its citations (and how
they were chosen) in a nullable JSON column; a database of schema 6 keeps its rows, which
read back without citations, and stores citations after the migration."""

from __future__ import annotations

import json
import sqlite3

from nanochat_lite.history import Store, is_postgres_url, open_store

CITED = [{"n": 1, "document_id": "d1", "name": "atlas.pdf", "page": 2, "text": "Zorbl is \x00 blue \ud800",
          "score": 0.5},
         {"n": 2, "document_id": "d2", "name": "notes.md", "page": None, "text": "plain", "score": None}]


def test_citations_round_trip_and_export(store: Store) -> None:
    conv = store.create(owner="alice")
    store.add_message(conv.id, "user", "what colour is zorbl?", owner="alice")
    added = store.add_message(conv.id, "assistant", "", status="streaming", owner="alice", answer_id="a1",
                              citations=CITED, documents_mode="search")
    plain = store.add_message(conv.id, "assistant", "no sources", owner="alice")
    store.update_message(added.id, "Blue [1].", status="complete")
    assert added.citations == CITED and added.documents_mode == "search"
    got = {m.id: m for m in store.messages(conv.id, owner="alice")}
    assert got[added.id].citations == CITED and got[added.id].documents_mode == "search"
    assert got[plain.id].citations is None and got[plain.id].documents_mode is None
    found = store.answer_message("a1", owner="alice")
    assert found is not None and found.citations == CITED
    exported = json.loads(store.export(conv.id, "json", owner="alice"))
    assert exported["messages"][1]["citations"] == CITED
    assert exported["messages"][1]["documents_mode"] == "search"
    markdown = store.export(conv.id, "markdown", owner="alice")
    assert "Sources:\n\n1. atlas.pdf, p. 2\n2. notes.md\n" in markdown
    assert markdown.count("Sources:") == 1


def test_a_schema_6_database_migrates(store_spec: str) -> None:
    insert = ("INSERT INTO conversations (id, title, created_at, updated_at, owner) VALUES ('old', 't', 1.0, 2.0, 'bob')",
              "INSERT INTO messages (conversation_id, role, content, status, created_at, answer_id, owner)"
              " VALUES ('old', 'assistant', 'old answer', 'length', 2.0, 'old-answer', 'bob')")
    if is_postgres_url(store_spec):
        import psycopg

        from nanochat_lite.history import postgres

        with psycopg.connect(store_spec, autocommit=True) as pg:
            postgres._migrate(pg, url=store_spec, target=6)
            for sql in insert:
                pg.execute(sql)  # type: ignore[arg-type]
    else:
        from nanochat_lite.history import sqlite_schema

        conn = sqlite3.connect(store_spec, isolation_level=None)
        sqlite_schema._migrate(conn, path=store_spec, target=6)
        for sql in insert:
            conn.execute(sql)
        conn.close()
    with open_store(store_spec) as s:  # migrates 6 -> 7
        assert s.integrity_check() == "ok"
        [old] = s.messages("old", owner="bob")
        assert (old.content, old.status, old.citations, old.documents_mode) == ("old answer", "length", None, None)
        m = s.add_message("old", "assistant", "new", owner="bob", citations=CITED[:1], documents_mode="whole")
        assert [x.citations for x in s.messages("old", owner="bob")] == [None, CITED[:1]]
        assert m.documents_mode == "whole"
