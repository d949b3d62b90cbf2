"""The isolation matrix of issue #20 against a real `nanochat-lite serve`, on SQLite and on
PostgreSQL: two plain keys (alice, bob) and an admin key (ops).

For every route and door that takes an id — conversations list/get/search (full text and
semantic)/export/rename/delete, `/api/chat` and the WebSocket with a `conversation_id`,
an answer's events by SSE and by WebSocket resume, during and after the resume window,
and `client_id` replay — bob, given alice's ids, gets exactly what an id that does not
exist gets (same status, code and message, the id aside), and nothing of hers changes;
ops reads everything with `?owner=`; alice is unaffected. A server without keys behaves
as before (everything is 'local's).

Run with -s to see the matrix printed."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from serverproc import ServerProc

pytestmark = pytest.mark.model

K1, K2, K3 = "alice-" + "a1" * 16, "bob-" + "b2" * 16, "ops-" + "c3" * 16
KEY_ARGS = ("--api-key", f"alice:{K1}", "--api-key", f"bob:{K2}", "--api-key", f"ops:{K3}:admin")
RESUME_WINDOW_S = 15  # long enough for bob's tries while alice's answer waits for her
SECRET = "My secret is PINEAPPLE42. Tell me about pineapples."
LONG = {"message": "Write the numbers from 1 to 500, separated by commas.", "temperature": 0,
        "repeat_penalty": 1.0, "max_tokens": 400}
MISSING_CID = "0" * 32
MISSING_ANSWER = "f" * 24


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path: Path, chat_model_path: Path) -> Iterator[ServerProc]:
    db = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    with ServerProc(tmp_path, "--threads", "2", "--resume-window", str(RESUME_WINDOW_S), *KEY_ARGS,
                    db=db) as s:  # type: ignore[arg-type]
        yield s


class Client:
    """One key's view of the server."""

    def __init__(self, server: ServerProc, key: str) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, headers=auth(key), timeout=120)
        self.key = key

    def chat(self, message: str, **extra: Any) -> httpx.Response:
        return self.http.post("/api/chat", json={"message": message, "max_tokens": 8, "temperature": 0, **extra})

    def ws(self, frame: dict[str, Any], until: tuple[str, ...] = ("done", "error")) -> list[dict[str, Any]]:
        """Send one frame on a fresh WebSocket; the frames received up to one of `until`."""
        with connect(self.server.ws_url, additional_headers=auth(self.key), open_timeout=10) as ws:
            ws.send(json.dumps(frame))
            frames = []
            while True:
                frames.append(json.loads(ws.recv(timeout=120)))
                if frames[-1]["type"] in until:
                    return frames

    def events(self, answer_id: str) -> httpx.Response:
        return self.http.get(f"/api/answers/{answer_id}/events")


def refusal(r: httpx.Response, ident: str) -> tuple[int, str, str]:
    """(status, code, message with the id taken out): what must not tell ids apart."""
    body = r.json()
    assert body["success"] is False, body
    return r.status_code, body["error"]["code"], body["error"]["message"].replace(ident, "ID")


def frame_refusal(frames: list[dict[str, Any]], ident: str) -> tuple[str, str]:
    assert len(frames) == 1 and frames[0]["type"] == "error", frames
    return frames[0]["code"], frames[0]["message"].replace(ident, "ID")


def sse(r: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]


def same_as_missing(rows: list[tuple[str, Any, Any]], what: str, theirs: Any, missing: Any, expect: Any) -> None:
    rows.append((what, theirs, "same as a missing id" if theirs == missing else f"DIFFERENT: {missing}"))
    assert theirs == missing == expect, (what, theirs, missing)


def test_isolation_matrix(server: ServerProc) -> None:
    alice, bob, ops = Client(server, K1), Client(server, K2), Client(server, K3)
    try:
        matrix(server, alice, bob, ops)
    finally:
        for c in (alice, bob, ops):
            c.http.close()


def matrix(server: ServerProc, alice: Client, bob: Client, ops: Client) -> None:
    # One long sequence on purpose (past 80 lines): each step uses the rows and the live
    # answer the earlier steps made, and checks that they are unchanged.
    rows: list[tuple[str, Any, Any]] = []

    # -- alice's rows: a conversation with a secret, a client id, an answer ----------------------------
    r = alice.chat(SECRET, client_id="alice-client-1")
    assert r.status_code == 200, r.text
    mine = r.json()["data"]
    cid, answer_id = mine["conversation_id"], mine["answer_id"]
    r = bob.chat("How do I bake bread?")
    assert r.status_code == 200, r.text
    bob_cid = r.json()["data"]["conversation_id"]

    # -- conversations: list, get, export, search -------------------------------------------------------
    listed = bob.http.get("/api/conversations").json()["data"]
    assert [c["id"] for c in listed["conversations"]] == [bob_cid] and listed["total"] == 1
    assert listed["viewer"] == {"owner": "bob", "admin": False, "keys": True}
    rows.append(("GET /api/conversations", f"bob lists {listed['total']} (his own)", ""))
    for what, path in (("GET conversation", "/api/conversations/{}"),
                       ("export json", "/api/conversations/{}/export?format=json"),
                       ("export markdown", "/api/conversations/{}/export?format=markdown")):
        same_as_missing(rows, what, refusal(bob.http.get(path.format(cid)), cid),
                        refusal(bob.http.get(path.format(MISSING_CID)), MISSING_CID),
                        (404, "conversation_not_found", "no conversation with id 'ID'"))
    for q in ("PINEAPPLE42", "secret pineapples"):
        hits = bob.http.get("/api/search", params={"q": q}).json()["data"]["results"]
        rows.append((f"search {q!r}", f"{len(hits)} hits", ""))
        assert hits == []
    semantic = bob.http.get("/api/search", params={"q": "my secret pineapple", "mode": "semantic"})
    assert semantic.status_code == 200, semantic.text
    found = {h["conversation_id"] for h in semantic.json()["data"]["results"]}
    rows.append(("semantic search", f"conversations {sorted(found)}", ""))
    assert found <= {bob_cid} and found  # bob's own messages only

    # -- changes: rename, delete ------------------------------------------------------------------------
    same_as_missing(rows, "PATCH (rename)", refusal(bob.http.patch(f"/api/conversations/{cid}", json={"title": "x"}), cid),
                    refusal(bob.http.patch(f"/api/conversations/{MISSING_CID}", json={"title": "x"}), MISSING_CID),
                    (404, "conversation_not_found", "no conversation with id 'ID'"))
    same_as_missing(rows, "DELETE", refusal(bob.http.delete(f"/api/conversations/{cid}"), cid),
                    refusal(bob.http.delete(f"/api/conversations/{MISSING_CID}"), MISSING_CID),
                    (404, "conversation_not_found", "no conversation with id 'ID'"))

    # -- generation doors with her conversation -----------------------------------------------------------
    same_as_missing(rows, "/api/chat conversation_id", refusal(bob.chat("continue", conversation_id=cid), cid),
                    refusal(bob.chat("continue", conversation_id=MISSING_CID), MISSING_CID),
                    (404, "conversation_not_found", "no conversation with id 'ID'"))
    same_as_missing(rows, "/api/chat stream conversation_id",
                    refusal(bob.chat("continue", conversation_id=cid, stream=True), cid),
                    refusal(bob.chat("continue", conversation_id=MISSING_CID, stream=True), MISSING_CID),
                    (404, "conversation_not_found", "no conversation with id 'ID'"))
    chat_frame = {"type": "chat", "message": "continue", "max_tokens": 4}
    same_as_missing(rows, "WS chat conversation_id",
                    frame_refusal(bob.ws({**chat_frame, "conversation_id": cid}), cid),
                    frame_refusal(bob.ws({**chat_frame, "conversation_id": MISSING_CID}), MISSING_CID),
                    ("conversation_not_found", "no conversation with id 'ID'"))

    # -- client_id: hers is, for bob, a client id never used: a fresh turn of his own ----------------------
    r = bob.chat("Hello", client_id="alice-client-1")
    assert r.status_code == 200, r.text
    fresh = r.json()["data"]
    rows.append(("/api/chat client_id", f"a new turn of bob's (replayed={fresh.get('replayed', False)})", ""))
    assert "replayed" not in fresh and fresh["conversation_id"] not in (cid, bob_cid)
    assert "PINEAPPLE" not in fresh["message"] and fresh["answer_id"] != answer_id
    r = alice.chat(SECRET, client_id="alice-client-1")  # alice's own: the same answer, not a second one
    assert (r.json()["data"]["answer_id"], r.json()["data"]["message"]) == (answer_id, mine["message"])

    # -- answers: during the resume window (the answer alive, its client gone) ---------------------------
    with alice.http.stream("POST", "/api/chat", json={**LONG, "stream": True}) as live:
        for line in live.iter_lines():
            if line.startswith("data: "):
                start = json.loads(line[6:])
                break
    live_id = start["answer_id"]
    assert start["type"] == "start"
    for when, ident in (("during the window", live_id), ("finished, before the window ends", answer_id)):
        same_as_missing(rows, f"SSE events {when}", refusal(bob.events(ident), ident),
                        refusal(bob.events(MISSING_ANSWER), MISSING_ANSWER),
                        (404, "answer_not_found", refusal(bob.events(MISSING_ANSWER), MISSING_ANSWER)[2]))
        resume = {"type": "resume", "answer_id": ident, "after": 0}
        same_as_missing(rows, f"WS resume {when}", frame_refusal(bob.ws(resume), ident),
                        frame_refusal(bob.ws({**resume, "answer_id": MISSING_ANSWER}), MISSING_ANSWER),
                        ("answer_not_found", frame_refusal(bob.ws({**resume, "answer_id": MISSING_ANSWER}),
                                                           MISSING_ANSWER)[1]))
    # alice resumes her live answer and reads it to its end
    frames = sse(alice.http.get(f"/api/answers/{live_id}/events", params={"after": 0}))
    assert frames[-1]["type"] == "done" and not frames[-1].get("replayed"), frames[-3:]
    assert frames[-1]["finish_reason"] == "length"

    # -- answers: after the resume window (served from the store) ----------------------------------------
    deadline = time.monotonic() + RESUME_WINDOW_S + 60
    while True:  # wait until the finished answer has left memory: alice then gets the store's copy
        done = sse(alice.events(live_id))[-1]
        if done.get("replayed") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert done["replayed"] is True and done["answer_id"] == live_id, done
    same_as_missing(rows, "SSE events after the window", refusal(bob.events(live_id), live_id),
                    refusal(bob.events(MISSING_ANSWER), MISSING_ANSWER),
                    refusal(bob.events(MISSING_ANSWER), MISSING_ANSWER))
    resume = {"type": "resume", "answer_id": live_id, "after": 0}
    same_as_missing(rows, "WS resume after the window", frame_refusal(bob.ws(resume), live_id),
                    frame_refusal(bob.ws({**resume, "answer_id": MISSING_ANSWER}), MISSING_ANSWER),
                    ("answer_not_found", frame_refusal(bob.ws({**resume, "answer_id": MISSING_ANSWER}),
                                                       MISSING_ANSWER)[1]))
    assert alice.ws(resume)[-1]["replayed"] is True

    # -- alice: unaffected ------------------------------------------------------------------------------------
    conv = alice.http.get(f"/api/conversations/{cid}").json()["data"]
    assert conv["conversation"]["title"].startswith("My secret is PINEAPPLE42")
    assert conv["conversation"]["owner"] == "alice" and conv["messages"][0]["content"] == SECRET
    assert len(conv["messages"]) == 2  # bob's continue, rename and delete changed nothing
    assert "PINEAPPLE42" in alice.http.get(f"/api/conversations/{cid}/export", params={"format": "markdown"}).text
    hits = alice.http.get("/api/search", params={"q": "PINEAPPLE42"}).json()["data"]["results"]
    assert {h["conversation_id"] for h in hits} == {cid}
    assert {c["id"] for c in alice.http.get("/api/conversations").json()["data"]["conversations"]} == {cid, start["conversation_id"]}
    r = alice.chat("And what is my secret?", conversation_id=cid)
    assert r.status_code == 200 and r.json()["data"]["conversation_id"] == cid

    # -- ops, the admin: its own by default, anyone's with ?owner= -------------------------------------------
    assert ops.http.get("/api/conversations").json()["data"]["total"] == 0
    everyone = ops.http.get("/api/conversations", params={"owner": "*"}).json()["data"]
    owners = sorted({c["owner"] for c in everyone["conversations"]})
    rows.append(("admin ?owner=*", f"{everyone['total']} conversations of {owners}", ""))
    assert owners == ["alice", "bob"] and everyone["total"] == 4
    hers = ops.http.get("/api/conversations", params={"owner": "alice"}).json()["data"]
    assert {c["id"] for c in hers["conversations"]} == {cid, start["conversation_id"]}
    assert ops.http.get(f"/api/conversations/{cid}").status_code == 404  # without ?owner=: its own only
    for owner in ("alice", "*"):
        got = ops.http.get(f"/api/conversations/{cid}", params={"owner": owner})
        assert got.status_code == 200 and got.json()["data"]["messages"][0]["content"] == SECRET
        assert "PINEAPPLE42" in ops.http.get(f"/api/conversations/{cid}/export",
                                             params={"format": "markdown", "owner": owner}).text
        hits = ops.http.get("/api/search", params={"q": "PINEAPPLE42", "owner": owner}).json()["data"]["results"]
        assert {h["conversation_id"] for h in hits} == {cid}
    sem = ops.http.get("/api/search", params={"q": "my secret pineapple", "mode": "semantic", "owner": "*"})
    assert cid in {h["conversation_id"] for h in sem.json()["data"]["results"]}
    assert ops.http.patch(f"/api/conversations/{cid}", json={"title": "x"}).status_code == 404  # reading only
    assert ops.http.delete(f"/api/conversations/{cid}", params={"owner": "alice"}).status_code == 404
    keys = ops.http.get("/api/stats").json()["keys"]
    assert sorted(keys) == ["alice", "bob", "ops"] and keys["alice"]["completion_tokens"] > 0
    rows.append(("admin /api/stats", f"keys {sorted(keys)}", ""))
    # A plain key may not name another owner, whoever it names.
    for who in ("alice", "*", "nobody"):
        forbidden = bob.http.get("/api/conversations", params={"owner": who})
        assert refusal(forbidden, who)[:2] == (403, "forbidden")
    assert list(bob.http.get("/api/stats").json()["keys"]) == ["bob"]
    assert alice.http.get(f"/api/conversations/{cid}").status_code == 200  # still there, still hers

    print(f"\nisolation matrix ({'PostgreSQL' if str(server.db).startswith('postgresql') else 'SQLite'}): "
          "bob (plain key) given alice's ids")
    for what, got, verdict in rows:
        print(f"  {what:42} {str(got):70} {verdict}")


def test_without_keys_everything_is_local(tmp_path: Path, chat_model_path: Path) -> None:
    with ServerProc(tmp_path, "--threads", "2") as s, httpx.Client(base_url=s.url, timeout=120) as http:
        data = http.post("/api/chat", json={"message": "Hi there", "max_tokens": 4, "client_id": "c-1"}).json()["data"]
        listed = http.get("/api/conversations").json()["data"]
        assert listed["total"] == 1 and listed["conversations"][0]["owner"] == "local"
        assert listed["viewer"] == {"owner": "local", "admin": True, "keys": False}
        assert http.get(f"/api/conversations/{data['conversation_id']}").status_code == 200
        assert http.get("/api/conversations", params={"owner": "*"}).json()["data"]["total"] == 1
        again = http.post("/api/chat", json={"message": "Hi there", "max_tokens": 4, "client_id": "c-1"}).json()
        assert (again["data"]["answer_id"], again["data"]["message"]) == (data["answer_id"], data["message"])
        events = sse(http.get(f"/api/answers/{data['answer_id']}/events"))
        assert events[-1]["type"] == "done"
        stats = http.get("/api/stats").json()
        assert "keys" not in stats and stats["you"] == {"owner": "local", "admin": True}
        assert http.get(f"/api/conversations/{uuid.uuid4().hex}").status_code == 404
