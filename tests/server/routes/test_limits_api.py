"""`GET /api/limits`: every number it reports is the one the server enforces. Each limit
is checked by behaviour: a request at the limit passes, one past it is refused. A wrong
number (say, 200 for a search the server allows up to 500) fails here."""

from __future__ import annotations

import re

import pytest
from server_helpers import TEST_SECURITY
from starlette.testclient import TestClient

from nanochat_lite.history import ConversationStore
from nanochat_lite.server import Runtime, create_app
from nanochat_lite.server.wire import limits as L

# `runtime` and `client` (a fake engine, an in-memory store) come from conftest.py.


@pytest.fixture
def lim(client: TestClient) -> dict:
    r = client.get("/api/limits")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    return body["data"]


def chat(client: TestClient, message: str = "hi", **fields: object) -> tuple[int, dict]:
    r = client.post("/api/chat", json={"message": message, **fields})
    return r.status_code, r.json()


def test_known_values(lim: dict) -> None:
    # The numbers of wire/limits.py and routes/conversations.py today; the search box once
    # allowed 200 characters while the server took 500. Text is bounded by the context:
    # the fake's 2,048 tokens of at most 4 characters each.
    assert lim["context_tokens"] == 2048
    assert lim["answer_room_tokens"] == 64
    assert lim["message_chars"] == lim["system_chars"] == lim["conversation_chars"] == 2048 * 4
    assert lim["search_chars"] == 500
    assert lim["title_chars"] == 200
    assert lim["page_size"] == 100
    assert lim["sampling"]["top_k"] == {"min": 0, "max": 200, "integer": True}
    assert lim["sampling"]["temperature"] == {"min": 0.0, "max": 2.0, "integer": False}
    assert lim["sampling"]["seed"] == {"min": 0, "max": 2**31 - 1, "integer": True}


def test_message_and_system_length_are_the_enforced_ones(client: TestClient, lim: dict) -> None:
    n = lim["message_chars"]
    assert chat(client, "a" * n, max_tokens=1)[0] == 200
    status, body = chat(client, "a" * (n + 1), max_tokens=1)
    assert status == 400 and body["error"]["code"] == "message_too_long", body
    n = lim["system_chars"]
    assert chat(client, system="s" * n, max_tokens=1)[0] == 200
    status, body = chat(client, system="s" * (n + 1), max_tokens=1)
    assert status == 400 and body["error"]["code"] == "message_too_long", body


def test_search_length_is_the_enforced_one(client: TestClient, lim: dict) -> None:
    n = lim["search_chars"]
    assert client.get("/api/search", params={"q": "q" * n}).status_code == 200
    assert client.get("/api/search", params={"q": "q" * (n + 1)}).status_code == 400


def test_title_length_and_page_size_are_the_enforced_ones(client: TestClient, lim: dict) -> None:
    status, body = chat(client, max_tokens=1)
    assert status == 200, body
    cid = body["data"]["conversation_id"]
    n = lim["title_chars"]
    assert client.patch(f"/api/conversations/{cid}", json={"title": "t" * n}).status_code == 200
    assert client.patch(f"/api/conversations/{cid}", json={"title": "t" * (n + 1)}).status_code == 400
    n = lim["page_size"]
    assert client.get("/api/conversations", params={"limit": n}).status_code == 200
    assert client.get("/api/conversations", params={"limit": n + 1}).status_code == 400


def test_every_sampling_range_is_the_enforced_one(client: TestClient, lim: dict) -> None:
    assert set(lim["sampling"]) >= {"temperature", "top_p", "top_k", "repeat_penalty", "max_tokens", "seed"}
    for name, r in lim["sampling"].items():
        step = 1 if r["integer"] else 0.01
        for ok in (r["min"], r["max"]):
            status, body = chat(client, **{"max_tokens": 1, name: ok})
            assert status == 200, (name, ok, body)
        for bad in (r["min"] - step, r["max"] + step):
            status, body = chat(client, **{"max_tokens": 1, name: bad})
            assert status == 400, (name, bad, body)
            assert name in body["error"]["message"], body


def test_answers_while_the_model_loads(lim: dict) -> None:
    # The page reads its limits at start-up, often before the model is ready: the same
    # numbers as a ready server's, except those of the context, unknown until the model
    # is loaded: no context yet, and text bounded by the body limit alone.
    rt = Runtime(store=ConversationStore(":memory:"), model_name="fake")
    try:
        with TestClient(create_app(rt, security=TEST_SECURITY)) as c:
            assert c.get("/api/health").status_code == 503
            r = c.get("/api/limits")
            context = {"context_tokens": None, "message_chars": L.MAX_BODY_BYTES, "system_chars": L.MAX_BODY_BYTES,
                       "conversation_chars": L.MAX_BODY_BYTES}
            assert r.status_code == 200 and r.json() == {"success": True, "data": {**lim, **context}}
    finally:
        rt.close()
        rt.store.close()


def test_described_in_openapi(client: TestClient, lim: dict) -> None:
    # A GET with a 200 JSON answer, whose description names fields the answer has.
    op = client.get("/openapi.json").json()["paths"]["/api/limits"]["get"]
    ok = op["responses"]["200"]
    assert "application/json" in ok["content"]
    named = re.findall(r"[a-z]+_[a-z_]+", ok["description"])
    assert named and set(named) <= set(lim), (named, sorted(lim))
