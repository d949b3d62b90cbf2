"""Answers with citations from the user's documents, against a real `nanochat-lite serve`
(real chat model, real MiniLM embedder), on SQLite and on PostgreSQL.

Alice uploads a long Markdown file (too long to give whole: it is searched) and a 3-page
PDF whose page 2 holds a fact nothing else mentions. Asked about it with
`documents: true` over /api/chat (JSON and SSE), the WebSocket and /v1 (the `openai`
client, `extra_body`), each answer cites the PDF's page 2; naming the PDF's id alone
gives it whole; the stored message, the export and a replayed client_id keep the same
citations. A bad `documents` value is a 400 naming the field; bob naming alice's
document is a 404 `document_not_found`, like an id nobody has, and bob's own
`documents: true` never brings back her chunks."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from websockets.sync.client import connect

from serverproc import ServerProc

# tests/documents holds docmake (PDFs written by hand); pytest adds that folder to the
# path only when it collects a test there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "documents"))
from docmake import pdf  # noqa: E402

pytestmark = pytest.mark.model

ALICE = "alice-7d2e9c4b1a3f5e6d8c0b2a4f6e8d0c1b"
BOB = "bob-3c5e7a9b1d2f4e6a8c0d2b4f6a8e0c9d"
KEY_ARGS = ("--api-key", f"alice:{ALICE}", "--api-key", f"bob:{BOB}")
FACT = "The zorblat of Quenmoor is painted vermilion every spring."
QUESTION = "What colour is the zorblat of Quenmoor painted?"
# A chunk's page is the page of its first word, so the fact sits mid-page, past where any
# chunk begun on page 1 could reach (~150 words).
FILLER = "Line {i} of page {p} describes a quiet street, a bakery, a well and the town clock."
PAGES = [[FILLER.format(i=i, p=p) for i in range(30)] for p in (1, 2, 3)]
PAGES[1][15] = FACT
NOTE = "# Shopping list\n\nBuy apples, flour and candles for the winter market."
# ~40 sections of ordinary prose: several thousand tokens, more than half a 4,096 context.
HANDBOOK = "\n\n".join(f"# Chapter {i}\n\nChapter {i} of the garden handbook explains how to water plot {i}, "
                       f"how deep to dig for bulbs of kind {i}, and when the hedges of row {i} are trimmed. " * 3
                       for i in range(40))
HANG_GUARD_S = 600  # a guard against a hang on a loaded 2-core machine, not a measure
ASK = {"max_tokens": 12, "temperature": 0}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path: Path, chat_model_path: Path,
           embedding_model_dir: Path) -> Iterator[ServerProc]:
    db = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    # --resume-window 0: a finished answer leaves memory at once, so a client_id sent
    # again is answered from the store (what is replayed is what was stored).
    with ServerProc(tmp_path, "--threads", "2", "--resume-window", "0", *KEY_ARGS,
                    db=db) as s:
        yield s


def upload(http: httpx.Client, name: str, data: bytes) -> str:
    r = http.post("/api/documents", files={"file": (name, data)})
    assert r.status_code == 202, r.text
    return str(r.json()["data"]["id"])


def wait_ready(http: httpx.Client, doc_id: str) -> dict[str, Any]:
    """Poll the document until it is indexed (the deadline only guards against a hang)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        doc: dict[str, Any] = http.get(f"/api/documents/{doc_id}").json()["data"]["document"]
        if doc["status"] != "indexing":
            assert doc["status"] == "ready", doc
            return doc
        assert time.monotonic() < deadline, f"document {doc_id} still indexing after {HANG_GUARD_S} s"
        time.sleep(0.2)


def cites_page_2(citations: list[dict[str, Any]], pdf_id: str) -> dict[str, Any]:
    """The citation of the PDF's page 2 (asserting the shape of all of them)."""
    assert citations, "no citations"
    assert [c["n"] for c in citations] == list(range(1, len(citations) + 1))
    for c in citations:
        assert set(c) == {"n", "document_id", "name", "page", "text", "score"}, c
        assert c["name"] in ("atlas.pdf", "handbook.md", "note.md") and c["text"]
        assert (c["page"] is None) == c["name"].endswith(".md"), c  # a Markdown file has no pages
    hit = [c for c in citations if c["document_id"] == pdf_id and c["page"] == 2 and "vermilion" in c["text"]]
    assert hit, citations  # (chunks overlap: the fact may be in two)
    return hit[0]


def sse_events(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]


def ws_chat(server: ServerProc, key: str, frame: dict[str, Any]) -> dict[str, Any]:
    with connect(server.ws_url, additional_headers=auth(key), open_timeout=10) as ws:
        ws.send(json.dumps({"type": "chat", **frame}))
        while True:
            got: dict[str, Any] = json.loads(ws.recv(timeout=HANG_GUARD_S))
            if got["type"] in ("done", "error"):
                return got


def test_answers_cite_the_page_that_holds_the_fact(server: ServerProc) -> None:
    with httpx.Client(base_url=server.url, headers=auth(ALICE), timeout=HANG_GUARD_S) as alice, \
            httpx.Client(base_url=server.url, headers=auth(BOB), timeout=HANG_GUARD_S) as bob, \
            openai.OpenAI(base_url=server.url + "/v1", api_key=ALICE, timeout=HANG_GUARD_S) as alice_v1, \
            openai.OpenAI(base_url=server.url + "/v1", api_key=BOB, timeout=HANG_GUARD_S) as bob_v1:
        pdf_id = _api_chat(alice)
        _other_doors(server, alice, alice_v1, pdf_id)
        _refusals(server, alice, alice_v1, bob, bob_v1, pdf_id)


def _api_chat(alice: httpx.Client) -> str:
    """Upload, then /api/chat: searched, stored, exported, replayed; a note given whole.
    Returns the PDF's id."""
    handbook_id = upload(alice, "handbook.md", HANDBOOK.encode())
    pdf_id = upload(alice, "atlas.pdf", pdf(PAGES))
    note_id = upload(alice, "note.md", NOTE.encode())
    assert wait_ready(alice, pdf_id)["pages"] == 3
    wait_ready(alice, note_id)
    assert wait_ready(alice, handbook_id)["chunks"] > 10

    # /api/chat, JSON: the whole collection is too long, so it is searched.
    r = alice.post("/api/chat", json={"message": QUESTION, "documents": True, "client_id": "cite-1", **ASK})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["documents_mode"] == "search"
    cites_page_2(data["citations"], pdf_id)
    first = data["citations"]
    print("\n/api/chat documents: true ->", data["documents_mode"], data["usage"], data["timings"])
    for c in first:  # run with -s to see what was cited
        print(f"  [{c['n']}] {c['name']} p. {c['page']} score {c['score']}: {c['text'][:70]!r}")

    # The stored message keeps them; the export lists them; the client_id sent again replays them.
    conv = alice.get(f"/api/conversations/{data['conversation_id']}").json()["data"]
    stored = [m for m in conv["messages"] if m["role"] == "assistant"]
    assert len(stored) == 1 and stored[0]["citations"] == first and stored[0]["documents_mode"] == "search"
    user = [m for m in conv["messages"] if m["role"] == "user"]
    assert user[0]["content"] == QUESTION and user[0]["citations"] is None  # the sources never become history
    markdown = alice.get(f"/api/conversations/{data['conversation_id']}/export?format=markdown").text
    assert "Sources:" in markdown and "atlas.pdf, p. 2" in markdown
    # Sent again: the answer in memory first, then (once it has left memory) from the store.
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        again = alice.post("/api/chat", json={"message": QUESTION, "documents": True, "client_id": "cite-1", **ASK})
        assert again.status_code == 200, again.text
        replayed = again.json()["data"]
        assert replayed["answer_id"] == data["answer_id"]
        assert replayed["citations"] == first and replayed["documents_mode"] == "search"
        if replayed.get("replayed"):
            break
        assert time.monotonic() < deadline, "the answer never left memory"
        time.sleep(0.2)

    # A short note named by id goes whole (not ranked: no score).
    r = alice.post("/api/chat", json={"message": "What should I buy?", "documents": [note_id], **ASK})
    whole = r.json()["data"]
    assert whole["documents_mode"] == "whole", whole
    assert [(c["n"], c["document_id"], c["page"], c["score"]) for c in whole["citations"]] == [
        (1, note_id, None, None)]
    assert "candles" in whole["citations"][0]["text"]

    return pdf_id


def _other_doors(server: ServerProc, alice: httpx.Client, client: openai.OpenAI, pdf_id: str) -> None:
    # SSE: the done event carries them.
    events = sse_events(alice, {"message": QUESTION, "documents": {"collection": "default"}, "stream": True, **ASK})
    done = events[-1]
    assert done["type"] == "done" and done["documents_mode"] == "search"
    cites_page_2(done["citations"], pdf_id)

    # The WebSocket: the done frame carries them, and the stored message too.
    done = ws_chat(server, ALICE, {"message": QUESTION, "documents": True, **ASK})
    assert done["type"] == "done", done
    cites_page_2(done["citations"], pdf_id)
    conv = alice.get(f"/api/conversations/{done['conversation_id']}").json()["data"]
    assert [m["citations"] for m in conv["messages"] if m["role"] == "assistant"] == [done["citations"]]

    # /v1 through the official client: an extension field, sent with extra_body.
    completion = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0,
        extra_body={"documents": True})
    extra = completion.model_extra or {}
    assert extra["documents_mode"] == "search"
    cites_page_2(extra["citations"], pdf_id)
    chunks = list(client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0, stream=True,
        extra_body={"documents": [pdf_id]}))
    assert all("citations" not in (c.model_extra or {}) for c in chunks[:-1])
    cites_page_2((chunks[-1].model_extra or {})["citations"], pdf_id)



def _refusals(server: ServerProc, alice: httpx.Client, client: openai.OpenAI, bob: httpx.Client,
              bob_client: openai.OpenAI, pdf_id: str) -> None:
    # A bad value is a 400 naming the field, on every door.
    r = alice.post("/api/chat", json={"message": QUESTION, "documents": "yes", **ASK})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    assert "documents" in r.json()["error"]["message"]
    bad = ws_chat(server, ALICE, {"message": QUESTION, "documents": {"collection": 7}, **ASK})
    assert bad["type"] == "error" and bad["code"] == "invalid_request" and "documents" in bad["message"], bad
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": QUESTION}],
                                       max_tokens=4, extra_body={"documents": 3})
    assert "documents" in str(e.value)

    # Bob: alice's document id is a 404 exactly like a missing one; his own documents
    # (none) bring nothing of hers back.
    refusals = []
    for doc_id in (pdf_id, "0" * 32):
        r = bob.post("/api/chat", json={"message": QUESTION, "documents": [doc_id], **ASK})
        assert r.status_code == 404, r.text
        refusals.append((r.json()["error"]["code"], r.json()["error"]["message"].replace(doc_id, "ID")))
    assert refusals[0] == refusals[1] and refusals[0][0] == "document_not_found"
    bad = ws_chat(server, BOB, {"message": QUESTION, "documents": [pdf_id], **ASK})
    assert bad["type"] == "error" and bad["code"] == "document_not_found", bad
    with pytest.raises(openai.NotFoundError):
        bob_client.chat.completions.create(model="any", messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=4, extra_body={"documents": [pdf_id]})
    r = bob.post("/api/chat", json={"message": QUESTION, "documents": True, **ASK})
    assert r.status_code == 200 and r.json()["data"]["citations"] == [], r.text
