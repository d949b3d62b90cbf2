"""The conversation store's behaviour (nanochat_lite.history), one suite for both backends:
the `store` fixture (conftest.py) runs each test on SQLite and on PostgreSQL.

Conversations, messages and titles, full-text search, export. Durability, schema
migrations and concurrency are test_durability.py; PostgreSQL-only behaviour is
test_postgres.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanochat_lite.history import (
    MARK_END,
    MARK_START,
    TITLE_CHARS,
    AlreadyExists,
    NotFound,
    Store,
    make_title,
    open_store,
)


# -- conversations -------------------------------------------------------------------


def test_create_and_get(store: Store) -> None:
    c = store.create(system="be brief")
    assert len(c.id) == 32 and int(c.id, 16) >= 0
    assert (c.title, c.system, c.message_count) == ("", "be brief", 0)
    assert c.created_at == c.updated_at
    assert store.get(c.id) == c
    assert store.get("nope") is None
    named = store.create(title="  My\tchat \n", conversation_id="chosen-id_1")
    assert (named.id, named.title) == ("chosen-id_1", "My chat")
    assert store.get("chosen-id_1") == named


def test_create_rejects_bad_or_taken_ids(store: Store) -> None:
    store.create(conversation_id="abc")
    with pytest.raises(AlreadyExists):
        store.create(conversation_id="abc")
    for bad in ["", "a/b", "x" * 65, "../etc", "sp ace"]:
        with pytest.raises(ValueError, match="conversation_id"):
            store.create(conversation_id=bad)
    assert store.list()[1] == 1


def test_list_newest_activity_first_with_paging_and_total(store: Store) -> None:
    ids = [store.create().id for _ in range(25)]
    store.add_message(ids[2], "user", "bump me to the top")

    page1, total1 = store.list(limit=10)
    page2, total2 = store.list(limit=10, offset=10)
    page3, total3 = store.list(limit=10, offset=20)
    assert (total1, total2, total3) == (25, 25, 25)
    assert [len(page1), len(page2), len(page3)] == [10, 10, 5]

    expected = [ids[2]] + [i for i in reversed(ids) if i != ids[2]]
    assert [c.id for c in page1 + page2 + page3] == expected
    assert page1[0].message_count == 1 and page1[0].title == "bump me to the top"
    assert store.list(limit=10, offset=100) == ([], 25)
    assert store.list(limit=0) == ([], 25)
    with pytest.raises(ValueError):
        store.list(limit=-1)
    with pytest.raises(ValueError):
        store.list(offset=-1)


def test_rename(store: Store) -> None:
    c = store.create()
    renamed = store.rename(c.id, "  Sourdough\nstarter  ")
    assert renamed.title == "Sourdough starter"
    assert store.get(c.id).title == "Sourdough starter"  # type: ignore[union-attr]
    store.add_message(c.id, "user", "something else entirely")
    assert store.get(c.id).title == "Sourdough starter"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="at most"):
        store.rename(c.id, "t" * 201)
    with pytest.raises(NotFound):
        store.rename("missing", "x")
    # Clearing the title lets the next user message name the conversation again.
    store.rename(c.id, "")
    store.add_message(c.id, "user", "New name please")
    assert store.get(c.id).title == "New name please"  # type: ignore[union-attr]


def test_set_system(store: Store) -> None:
    c = store.create()
    store.set_system(c.id, "You are a pirate.")
    assert store.get(c.id).system == "You are a pirate."  # type: ignore[union-attr]
    store.set_system(c.id, None)
    assert store.get(c.id).system is None  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        store.set_system("missing", "x")


def test_delete_cascades_to_messages_and_search(message_rows: Callable[[Path], int], store_spec: str) -> None:
    with open_store(store_spec) as s:
        keep = s.create()
        gone = s.create()
        s.add_message(keep.id, "user", "keep this zebra")
        for i in range(5):
            s.add_message(gone.id, "user", f"delete this giraffe {i}")
        s.rename(gone.id, "okapi facts")
        assert len(s.search("giraffe")) == 5

        assert s.delete(gone.id) is True
        assert s.delete(gone.id) is False
        assert s.get(gone.id) is None
        with pytest.raises(NotFound):
            s.messages(gone.id)
        assert s.search("giraffe") == []
        assert s.search("okapi") == []
        assert [h["message_id"] for h in s.search("zebra")] == [1]
        assert s.list() == ([s.get(keep.id)], 1)
        assert s.integrity_check() == "ok"
    if not store_spec.startswith("postgresql://"):
        assert message_rows(Path(store_spec)) == 1


def test_unknown_ids(store: Store) -> None:
    with pytest.raises(NotFound) as info:
        store.messages("no-such-id")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == "no conversation no-such-id"
    with pytest.raises(NotFound):
        store.add_message("no-such-id", "user", "hi")
    with pytest.raises(NotFound):
        store.export("no-such-id", "json")
    assert store.get("no-such-id") is None
    assert store.delete("no-such-id") is False
    assert store.list() == ([], 0)


# -- messages and titles -------------------------------------------------------------


def test_messages_in_order_with_metadata(store: Store) -> None:
    c = store.create()
    params = {"temperature": 0.7, "top_p": 0.9, "stop": ["\n\n"], "seed": None}
    a = store.add_message(c.id, "user", "first")
    b = store.add_message(
        c.id, "assistant", "second", status="stopped", prompt_tokens=12, completion_tokens=3,
        ttft_ms=41.5, duration_ms=250.0, model="smollm2-135m", params=params,
    )
    d = store.add_message(c.id, "user", "third")
    got = store.messages(c.id)
    assert got == [a, b, d]
    assert [m.content for m in got] == ["first", "second", "third"]
    assert a.id < b.id < d.id and a.created_at < b.created_at < d.created_at
    assert got[1].params == params and got[1].model == "smollm2-135m"
    assert (got[1].prompt_tokens, got[1].completion_tokens, got[1].ttft_ms) == (12, 3, 41.5)
    assert got[0].params is None and got[0].status == "complete"
    conv = store.get(c.id)
    assert conv is not None and conv.message_count == 3 and conv.updated_at == d.created_at
    assert store.messages(store.create().id) == []


def test_add_message_validates_role_and_status(store: Store) -> None:
    c = store.create()
    with pytest.raises(ValueError, match="role"):
        store.add_message(c.id, "tool", "x")
    with pytest.raises(ValueError, match="status"):
        store.add_message(c.id, "assistant", "x", status="done")
    assert store.messages(c.id) == []


def test_awkward_text_round_trips(store: Store) -> None:
    c = store.create()
    odd = "nul\x00byte, emoji 👩‍👩‍👧, rtl שלום, " + "a" * 10_000
    assert store.add_message(c.id, "user", odd).content == odd
    assert store.messages(c.id)[0].content == odd
    # A lone surrogate (JSON "\ud800") cannot be stored as UTF-8; it becomes U+FFFD.
    m = store.add_message(c.id, "assistant", "half \ud800 pair")
    assert m.content == "half \ufffd pair" == store.messages(c.id)[1].content


def test_title_from_first_user_message(store: Store) -> None:
    c = store.create(system="sys")
    store.add_message(c.id, "assistant", "Hello! How can I help?")
    assert store.get(c.id).title == ""  # type: ignore[union-attr]
    long = "Please explain   how the\tKV cache works in llama.cpp when many requests share a prefix\nthanks"
    store.add_message(c.id, "user", "\n  \n" + long)
    title = store.get(c.id).title  # type: ignore[union-attr]
    assert title == "Please explain how the KV cache works in llama.cpp when many…"  # 60 + 1
    store.add_message(c.id, "user", "A later question")
    assert store.get(c.id).title == title  # type: ignore[union-attr]
    given = store.create(title="Given")
    store.add_message(given.id, "user", "does not replace it")
    assert store.get(given.id).title == "Given"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("How do I bake bread?", "How do I bake bread?"),
        ("\n\n   first\t line  \nsecond line", "first line"),
        ("   \n\t\n", ""),
        ("", ""),
        ("word " * 30, "word word word word word word word word word word word word…"),
        ("x" * 100, "x" * TITLE_CHARS + "…"),
        ("🎉 party " * 10, "🎉 party " * 7 + "🎉…"),
        # A hard cut never splits a ZWJ family or a flag in half.
        ("a" * 59 + "👩‍👩‍👧" * 5, "a" * 59 + "…"),
        ("🇫🇷" * 40, "🇫🇷" * 30 + "…"),
        ("b" + "🇫🇷" * 40, "b" + "🇫🇷" * 29 + "…"),
        ("clear\x1b[2J screen\x00now", "clear [2J screen now"),
        # Punctuation left dangling at the cut is dropped.
        ("a" * 10 + " " + "b" * 40 + " ended, continues here", "a" * 10 + " " + "b" * 40 + " ended…"),
    ],
)
def test_make_title_known_answers(text: str, title: str) -> None:
    assert make_title(text) == title


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_make_title_is_one_short_line(text: str) -> None:
    title = make_title(text)
    assert len(title) <= TITLE_CHARS + 1
    assert title == title.strip()
    assert not any(ch in title for ch in "\n\r\t\x00\x1b")
    if title.endswith("…") and not text.rstrip().endswith("…"):
        assert len(" ".join(text.split())) > TITLE_CHARS  # cut only when too long


# -- search --------------------------------------------------------------------------

_CORPUS = {
    "quote": 'she said "hello" to me',
    "near": "NEAR(alpha beta) is FTS query syntax",
    "sql": "x'); DROP TABLE messages;--",
    "bool": "and or not are plain words here",
    "emoji": "party time 🎉 tonight",
    "long": "z" * 10_000,
    "unicode": "Ünïcödé naïve résumé 日本語のテキスト",
    "column": "content:hello is not a column filter",
}


@pytest.fixture
def corpus(store: Store) -> dict[str, int]:
    c = store.create(title="corpus")
    return {key: store.add_message(c.id, "user", text).id for key, text in _CORPUS.items()}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('"hello"', {"quote", "column"}),
        ('said "hello', {"quote"}),
        ("NEAR(", {"near"}),
        ("NEAR(alpha beta)", {"near"}),
        ("DROP TABLE", {"sql"}),
        ("'); DROP", {"sql"}),
        ("AND OR NOT", {"bool"}),
        ("🎉", {"emoji"}),
        ("z" * 10_000, {"long"}),
        ("resume NAIVE", {"unicode"}),
        ("日本語", {"unicode"}),
        ("content:hello", {"column"}),
        ("tonig", {"emoji"}),  # each word is a prefix
        ("party tuesday", set()),  # every word must match
        ('"', set()),
        ("*", set()),
        ("')--", set()),
        ("( ) ^ : - + {", set()),
        ("{content}", {"column"}),
        ("\x00", set()),
        ("\ud800", set()),
        ("NOT", {"bool", "column"}),
        ("plain " * 2_000, {"bool"}),  # words past MAX_QUERY_TERMS are ignored
        ("plain " * 20 + "absent", set()),
        ("", set()),
        ("   \n\t", set()),
    ],
)
def test_search_nasty_input_finds_the_right_message(
    store: Store, corpus: dict[str, int], query: str, expected: set[str]
) -> None:
    hits = store.search(query)
    assert {h["message_id"] for h in hits} == {corpus[key] for key in expected}


def test_search_never_raises(store: Store) -> None:
    c = store.create()
    for text in _CORPUS.values():
        store.add_message(c.id, "assistant", text)

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.characters(codec=None), max_size=200))
    def check(query: str) -> None:
        assert isinstance(store.search(query), list)

    check()


def test_search_hits_shape_order_and_limit(store: Store) -> None:
    a = store.create()
    b = store.create()
    store.add_message(a.id, "user", "Tell me about llamas")
    store.add_message(a.id, "assistant", "Llamas are camelids. Llamas hum. Llamas llamas llamas.")
    store.add_message(b.id, "user", "Something unrelated")
    store.rename(b.id, "Llamas and alpacas")

    hits = store.search("llamas")
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert len(hits) == 3
    assert hits[0]["role"] == "assistant"  # most matches ranks first
    for hit in hits:
        assert set(hit) == {"conversation_id", "title", "message_id", "role", "snippet",
                            "created_at", "score"}
        assert f"{MARK_START}" in hit["snippet"] and MARK_END in hit["snippet"]
    title_hits = [h for h in hits if h["message_id"] is None]
    assert len(title_hits) == 1
    assert title_hits[0]["conversation_id"] == b.id and title_hits[0]["role"] is None
    assert title_hits[0]["snippet"] == f"{MARK_START}Llamas{MARK_END} and alpacas"
    # The auto-title of `a` matches too, but its messages already represent it.
    assert sum(h["conversation_id"] == a.id for h in hits) == 2
    assert len(store.search("llamas", limit=1)) == 1
    assert store.search("llamas", limit=0) == []


def test_vectors_for_semantic_search(store: Store) -> None:
    a = store.create(title="Vectors")
    m1 = store.add_message(a.id, "user", "first \x00 text")
    store.add_message(a.id, "assistant", "")  # empty messages are never embedded
    m3 = store.add_message(a.id, "assistant", "third")
    assert store.unembedded("mini", limit=10) == [(m1.id, "first \x00 text"), (m3.id, "third")]
    assert store.unembedded("mini", limit=1) == [(m1.id, "first \x00 text")]
    blob1, blob3 = bytes(range(256)) * 6, b"\x00\x01\x02\x03" * 384  # 384 float32s each
    store.put_vectors("mini", [(m1.id, blob1), (m3.id, b"old"), (999_999, b"gone")])
    store.put_vectors("mini", [(m3.id, blob3)])  # replaces
    store.put_vectors("mini", [])
    assert store.unembedded("mini", limit=10) == []
    got = sorted(store.vectors("mini"), key=lambda pair: pair[0]["message_id"])
    assert got == [
        ({"conversation_id": a.id, "title": "Vectors", "message_id": m1.id, "role": "user",
          "snippet": "first \x00 text", "created_at": m1.created_at}, blob1),
        ({"conversation_id": a.id, "title": "Vectors", "message_id": m3.id, "role": "assistant",
          "snippet": "third", "created_at": m3.created_at}, blob3),
    ]
    assert store.vectors("other-model") == []
    store.delete(a.id)
    assert store.vectors("mini") == [] and store.integrity_check() == "ok"


def test_search_finds_text_around_a_nul(store: Store) -> None:
    c = store.create()
    m = store.add_message(c.id, "user", "nul\x00byte here")
    hits = store.search("byte")
    assert [h["message_id"] for h in hits] == [m.id]
    assert MARK_START + "byte" + MARK_END in hits[0]["snippet"]


# -- export --------------------------------------------------------------------------


def test_export_json_round_trips(store: Store) -> None:
    t0 = time.time()
    c = store.create(system="Be kind.")
    store.add_message(c.id, "user", "Hi 👋\nsecond line")
    store.add_message(c.id, "assistant", "Hello", params={"temperature": 0.2}, ttft_ms=12.5)
    t1 = time.time()
    text = store.export(c.id, "json")
    data = json.loads(text)
    # What this test wrote, written out by hand (not the store's own to_dict()): every
    # value comes back, with its type; what was not written is null.
    conv = data["conversation"]
    assert {k: conv[k] for k in ("id", "title", "system", "message_count")} == {
        "id": c.id, "title": "Hi 👋", "system": "Be kind.", "message_count": 2}
    assert t0 <= conv["created_at"] <= conv["updated_at"] <= t1, (t0, conv, t1)
    unset = dict.fromkeys(("prompt_tokens", "completion_tokens", "duration_ms", "model", "client_id", "answer_id"))
    expected = [
        {"conversation_id": c.id, "role": "user", "content": "Hi 👋\nsecond line", "status": "complete",
         "params": None, "ttft_ms": None, **unset},
        {"conversation_id": c.id, "role": "assistant", "content": "Hello", "status": "complete",
         "params": {"temperature": 0.2}, "ttft_ms": 12.5, **unset},
    ]
    messages = data["messages"]
    assert [{k: m[k] for k in expected[0]} for m in messages] == expected
    assert isinstance(messages[1]["ttft_ms"], float) and isinstance(messages[0]["id"], int)
    assert messages[0]["id"] < messages[1]["id"]
    assert t0 <= messages[0]["created_at"] <= messages[1]["created_at"] <= t1
    assert "\n  " in text  # indented


def test_export_markdown(store: Store) -> None:
    c = store.create(system="Be kind.")
    store.add_message(c.id, "user", "What is 2+2?")
    store.add_message(c.id, "assistant", "It is 4.")
    store.add_message(c.id, "user", "And 3+3?")
    store.add_message(c.id, "assistant", "It is", status="stopped")
    store.add_message(c.id, "assistant", "", status="failed")
    md = store.export(c.id, "markdown")
    assert md.startswith("# What is 2+2?\n")
    assert md.index("Be kind.") < md.index("**User**\n\nWhat is 2+2?")
    order = ["**User**\n\nWhat is 2+2?", "**Assistant**\n\nIt is 4.", "**User**\n\nAnd 3+3?",
             "**Assistant** _(stopped)_\n\nIt is", "**Assistant** _(failed)_"]
    positions = [md.index(part) for part in order]
    assert positions == sorted(positions)
    assert store.export(store.create().id, "markdown").startswith("# Untitled conversation")
    with pytest.raises(ValueError, match="markdown"):
        store.export(c.id, "html")
