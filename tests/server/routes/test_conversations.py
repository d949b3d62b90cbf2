"""Conversation API and persistence against a real server process and the real model:
every endpoint, restart continuity, and SIGKILL at random moments losing nothing
that was acknowledged."""

from __future__ import annotations

import json
import random
import time

import httpx
import pytest
from websockets.sync.client import connect

from nanochat_lite.history import ConversationStore
from serverproc import ServerProc


@pytest.fixture(scope="module")
def server(tmp_path_factory, chat_model_path):
    tmp = tmp_path_factory.mktemp("conv")
    with ServerProc(tmp, "--threads", "2") as s:
        yield s


def chat(server, message, cid=None, **kw):
    body = {"message": message, "max_tokens": 16, "temperature": 0, **kw}
    if cid:
        body["conversation_id"] = cid
    r = httpx.post(server.url + "/api/chat", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_list_get_rename_export_delete(server):
    first = chat(server, "Tell me about volcanoes in Iceland.")
    a = first["conversation_id"]
    second = chat(server, "And glaciers?", a)
    b = chat(server, "What is a haiku?")["conversation_id"]

    page = httpx.get(server.url + "/api/conversations", params={"limit": 1}).json()["data"]
    assert page["total"] >= 2 and len(page["conversations"]) == 1
    assert page["conversations"][0]["id"] == b  # newest first

    full = httpx.get(f"{server.url}/api/conversations/{a}").json()["data"]
    roles = [m["role"] for m in full["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert full["conversation"]["title"] == "Tell me about volcanoes in Iceland."
    # An answer cut by max_tokens (16 here: a volcano needs more) is stored as `length`,
    # one the model ended as `complete`; questions are `complete`.
    assert first["finish_reason"] == "length"
    status_of = {"stop": "complete", "length": "length"}
    assert [m["status"] for m in full["messages"]] == [
        "complete", "length", "complete", status_of[second["finish_reason"]]]
    assert full["messages"][1]["completion_tokens"] > 0 and full["messages"][1]["model"]

    r = httpx.patch(f"{server.url}/api/conversations/{a}", json={"title": "Iceland"})
    assert r.status_code == 200 and r.json()["data"]["conversation"]["title"] == "Iceland"

    md = httpx.get(f"{server.url}/api/conversations/{a}/export", params={"format": "markdown"})
    assert md.status_code == 200 and "# Iceland" in md.text and "glaciers" in md.text
    js = httpx.get(f"{server.url}/api/conversations/{a}/export", params={"format": "json"}).json()
    assert [m["content"] for m in js["messages"]][0] == "Tell me about volcanoes in Iceland."

    hits = httpx.get(server.url + "/api/search", params={"q": "glaciers"}).json()["data"]["results"]
    assert any(h["conversation_id"] == a for h in hits)

    assert httpx.delete(f"{server.url}/api/conversations/{b}").status_code == 200
    assert httpx.get(f"{server.url}/api/conversations/{b}").status_code == 404
    assert httpx.delete(f"{server.url}/api/conversations/{b}").status_code == 404


@pytest.mark.parametrize("method,path,params,body,status", [
    ("GET", "/api/conversations/nope", None, None, 404),
    ("PATCH", "/api/conversations/nope", None, {"title": "x"}, 404),
    ("GET", "/api/conversations/nope/export", None, None, 404),
    ("GET", "/api/conversations", {"limit": "0"}, None, 400),
    ("GET", "/api/conversations", {"limit": "abc"}, None, 400),
    ("GET", "/api/conversations", {"offset": "-1"}, None, 400),
    ("GET", "/api/conversations", {"limit": "101"}, None, 400),
    ("GET", "/api/search", {"q": "x" * 501}, None, 400),
    ("GET", "/api/search", {"q": "x", "mode": "magic"}, None, 400),
    ("PATCH", "/api/conversations/nope", None, {"title": 5}, 400),
    ("GET", "/api/conversations/" + "x" * 100, None, None, 400),
])
def test_bad_requests(server, method, path, params, body, status):
    r = httpx.request(method, server.url + path, params=params, json=body)
    assert r.status_code == status
    assert r.json()["success"] is False and r.json()["error"]["code"]


def test_search_survives_hostile_queries(server):
    for q in ['"', "*", "NEAR(", "')--", "AND OR NOT", "🙂", "a" * 400]:
        r = httpx.get(server.url + "/api/search", params={"q": q})
        assert r.status_code == 200


def test_conversation_survives_restart(tmp_path, chat_model_path):
    db = tmp_path / "c.sqlite3"
    with ServerProc(tmp_path, "--threads", "2", db=db) as s:
        first = chat(s, "My name is Zorblax.")
        cid = first["conversation_id"]
    with ServerProc(tmp_path, "--threads", "2", db=db) as s:
        # No repeat penalty here: llama.cpp counts the prompt in its window, and the
        # name the model must repeat is in the prompt.
        second = chat(s, "What is my name?", cid, max_tokens=20, repeat_penalty=1.0)
        msgs = httpx.get(f"{s.url}/api/conversations/{cid}").json()["data"]["messages"]
    # The restarted server put the earlier turn into the prompt: the model sees it.
    assert second["usage"]["promptTokens"] > first["usage"]["promptTokens"] + first["usage"]["completionTokens"]
    assert "Zorblax" in second["message"]
    assert [m["content"] for m in msgs][:2] == ["My name is Zorblax.", first["message"]]


def test_sigkill_loses_nothing_acknowledged(tmp_path, chat_model_path):
    """Kill a streaming server with SIGKILL at random moments, 50 times; after each
    restart every acknowledged message is stored and the database is intact."""
    rng = random.Random(20261125)
    db = tmp_path / "crash.sqlite3"
    port = None
    acked_user: list[tuple[str, str]] = []  # (conversation_id, text): "start" frame seen
    acked_answers: list[tuple[str, str]] = []  # (conversation_id, text): "done" frame seen
    kills = 0
    for round_ in range(50):
        s = ServerProc(tmp_path, "--threads", "2", db=db, port=port).start()
        port = s.port
        deadline = time.monotonic() + rng.uniform(0.05, 2.5)
        try:
            with connect(s.ws_url, open_timeout=10) as ws:
                while time.monotonic() < deadline:
                    text = f"round {round_} message {rng.randrange(10**6)}: count to ten."
                    ws.send(json.dumps({"type": "chat", "message": text, "max_tokens": rng.choice([2, 6, 30])}))
                    cid = None
                    while time.monotonic() < deadline:
                        try:
                            f = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
                        except TimeoutError:
                            break
                        if f["type"] == "start":
                            cid = f["conversation_id"]
                            acked_user.append((cid, text))
                        elif f["type"] == "done":
                            acked_answers.append((cid, f["message"]))
                            break
                    else:
                        break
                s.kill()
                kills += 1
        finally:
            s.kill()
            s.stop()
        with ConversationStore(db) as store:
            assert store.integrity_check() == "ok"
            for cid, text in acked_user:
                assert any(m.role == "user" and m.content == text for m in store.messages(cid)), text
            for cid, text in acked_answers:
                assert any(m.role == "assistant" and m.content == text and m.status in ("complete", "length")
                           for m in store.messages(cid)), text
    print(f"\nSIGKILL test: {kills} kills, {len(acked_user)} acknowledged user messages and "
          f"{len(acked_answers)} acknowledged answers checked, integrity ok after every restart")
    assert kills == 50 and len(acked_user) >= 25 and len(acked_answers) >= 10
