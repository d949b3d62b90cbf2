"""Resumable answers with the fake engine (issue #15; docs/protocol.md): numbered
events, resume over the WebSocket and SSE exactly once, snapshots past the buffer,
the resume window, answers saved as they stream, client_id de-duplication, progress
frames, API-key scoping, graceful-shutdown drain and storage faults (#11 items 4, 5).

Each test builds its own Runtime with a resume window (the folder's `runtime` fixture
has none: its tests expect a dropped client to cancel at once)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import SLOW, FakeEngine, attach_fake
from server_helpers import TEST_SECURITY, Frames, assert_api_error, sse_events
from starlette.testclient import TestClient

from nanochat_lite.history import ConversationStore
from nanochat_lite.history import sqlite as sqlite_backend
from nanochat_lite.server import Runtime, create_app
from nanochat_lite.server.chat import answers
from nanochat_lite.server.guards.security import SecurityConfig

WINDOW_S = 5.0


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine()


def make_runtime(fake: FakeEngine, store: Any = None, window: float = WINDOW_S) -> Runtime:
    rt = Runtime(store=store or ConversationStore(":memory:"), model_name="fake", resume_window_s=window)
    attach_fake(rt, fake)
    return rt


@pytest.fixture
def rt(fake: FakeEngine) -> Iterator[Runtime]:
    runtime = make_runtime(fake)
    yield runtime
    runtime.close()
    runtime.store.close()


@pytest.fixture
def client(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(rt, security=TEST_SECURITY), raise_server_exceptions=False) as c:
        yield c


def wait_for(predicate: Any, within: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {within} s"
        time.sleep(0.01)


def apply(frames: list[dict], text: str = "", last: int = -1) -> tuple[str, int, dict | None]:
    """What a client shows after these frames: (text, last seq, final frame). Checks
    that seqs only go up by one (a snapshot may jump) and that nothing repeats."""
    final = None
    for f in frames:
        if f["type"] == "progress":
            assert "seq" not in f
            continue
        if f["type"] == "snapshot":
            assert f["seq"] > last, (f, last)
            text, last = f["text"], f["seq"]
            continue
        assert f["seq"] == last + 1, f"seq {f['seq']} after {last}: {f}"
        last = f["seq"]
        if f["type"] == "token":
            text += f["text"]
        elif f["type"] in ("done", "error"):
            final = f
    return text, last, final


def start_slow(client: TestClient, n_tokens: int, **extra: Any) -> tuple[dict, list[dict]]:
    """A SLOW answer over a WebSocket, dropped after its start and `n_tokens` tokens."""
    with client.websocket_connect("/ws") as sock:
        ws = Frames(sock)
        ws.send({"type": "chat", "message": "long " + SLOW, **extra})
        start = ws.next()
        assert start["type"] == "start" and start["seq"] == 0, start
        seen = [start]
        while len(seen) <= n_tokens:
            f = ws.next()
            if f["type"] != "progress":
                seen.append(f)
    return start, seen


def stored_answer(rt: Runtime, answer_id: str) -> Any:
    return rt.store.answer_message(answer_id)


def produced(rt: Runtime, answer_id: str) -> int:
    """The seq of the answer's newest event, as the server has it (its client may lag)."""
    a = rt.answers.find(answer_id, "local")
    assert a is not None, f"answer {answer_id} is no longer in memory"
    return a.last_seq


def test_ws_resume_gets_every_missed_event_once(client: TestClient, rt: Runtime) -> None:
    start, seen = start_slow(client, 7)
    text, last, _ = apply(seen)
    assert start["answer_id"] and start["events_url"] == f"/api/answers/{start['answer_id']}/events"
    # Tokens go on while nobody listens: resume only once some were made meanwhile.
    wait_for(lambda: produced(rt, start["answer_id"]) >= last + 10, what="tokens made while disconnected")
    with client.websocket_connect("/ws") as sock:
        ws = Frames(sock)
        ws.send({"type": "resume", "answer_id": start["answer_id"], "after": last})
        final, rest = ws.until("done", timeout=15)
    text, last, final = apply([*rest, final], text, last)
    assert final is not None and final["status"] == "complete" and final["answer_id"] == start["answer_id"]
    assert text == final["message"] == stored_answer(rt, start["answer_id"]).content
    assert stored_answer(rt, start["answer_id"]).status == "complete"


def test_sse_resume_with_last_event_id_and_after(client: TestClient, rt: Runtime) -> None:
    start, seen = start_slow(client, 3)
    text, last, _ = apply(seen)
    r = client.get(start["events_url"], headers={"Last-Event-ID": str(last)})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    ids = [int(line[4:]) for line in r.text.split("\n") if line.startswith("id: ")]
    events = sse_events(r.text)
    assert ids == [e["seq"] for e in events] == list(range(last + 1, last + 1 + len(events)))
    text, last, final = apply(events, text, last)
    assert final is not None and text == final["message"] == stored_answer(rt, start["answer_id"]).content
    # ?after= too, from the middle; and nothing left after the last event: 204 (EventSource stops).
    again = sse_events(client.get(start["events_url"] + "?after=2").text)
    assert again[0]["seq"] == 3 and again[-1] == final
    assert client.get(start["events_url"], headers={"Last-Event-ID": str(last)}).status_code == 204


def test_post_stream_carries_ids_and_events_url(client: TestClient) -> None:
    r = client.post("/api/chat", json={"message": "hi", "stream": True})
    blocks = [b for b in r.text.split("\n\n") if b]
    assert all(b.startswith(f"id: {i}\ndata: ") for i, b in enumerate(blocks)), blocks
    events = sse_events(r.text)
    assert events[0]["events_url"].startswith("/api/answers/") and events[-1]["type"] == "done"
    text, _, final = apply(events)
    assert final is not None and text == final["message"] == "Hello, world!"


def test_snapshot_replaces_events_no_longer_buffered(client: TestClient, rt: Runtime,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = 5
    monkeypatch.setattr(answers, "MAX_ANSWER_BUFFER_EVENTS", buffer)
    start, seen = start_slow(client, 2)
    text, last, _ = apply(seen)
    # Resume once event last + 1 has left the buffer: `buffer` newer events push it out.
    wait_for(lambda: produced(rt, start["answer_id"]) > last + 1 + buffer, what="the buffer overflowing")
    with client.websocket_connect("/ws") as sock:
        ws = Frames(sock)
        ws.send({"type": "resume", "answer_id": start["answer_id"], "after": last})
        final, rest = ws.until("done", timeout=15)
    assert rest[0]["type"] == "snapshot" and rest[0]["seq"] > last + 1, rest[0]
    assert rest[0]["text"].startswith(text)
    text, last, final = apply([*rest, final], text, last)
    assert final is not None and text == final["message"] == stored_answer(rt, start["answer_id"]).content


def test_nobody_back_within_the_window_cancels_and_stores_interrupted(fake: FakeEngine) -> None:
    rt = make_runtime(fake, window=0.3)
    with TestClient(create_app(rt, security=TEST_SECURITY)) as client:
        before = client.get("/api/stats").json()["requests"]["cancelled"]
        start, seen = start_slow(client, 2)
        wait_for(lambda: fake.calls[-1].finish_reason is not None, what="generation end")
        assert fake.calls[-1].finish_reason == "cancelled" and fake.calls[-1].deltas < 200
        wait_for(lambda: stored_answer(rt, start["answer_id"]).status != "streaming", what="final save")
        m = stored_answer(rt, start["answer_id"])
        assert m.status == "interrupted" and m.content.startswith(apply(seen)[0]) and m.content
        assert client.get("/api/stats").json()["requests"]["cancelled"] == before + 1
        # Resumable from memory for the window, then from the store, marked replayed.
        wait_for(lambda: rt.answers.find(start["answer_id"], "local") is None, what="the answer leaving memory")
        with client.websocket_connect("/ws") as sock:
            ws = Frames(sock)
            ws.send({"type": "resume", "answer_id": start["answer_id"], "after": 2})
            done = ws.next()
        assert done["type"] == "done" and done["replayed"] is True and done["status"] == "interrupted"
        assert done["message"] == m.content
    rt.close()


def test_partial_answer_is_saved_while_it_streams(client: TestClient, rt: Runtime,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The text so far reaches the store while the answer streams, again and again, but
    at most once per SAVE_INTERVAL_S: not once per token."""
    saves: list[str] = []  # texts saved with status 'streaming', in order (the saver thread appends)
    real_update = rt.store.update_message

    def spy(message_id: int, content: str, **kw: Any) -> Any:
        if kw.get("status") == "streaming":
            saves.append(content)
        return real_update(message_id, content, **kw)

    monkeypatch.setattr(rt.store, "update_message", spy)
    t0 = time.monotonic()
    with client.websocket_connect("/ws") as sock:
        ws = Frames(sock)
        ws.send({"type": "chat", "message": "long " + SLOW})
        start = ws.next()
        m = stored_answer(rt, start["answer_id"])
        assert (m.status, m.content, m.role) == ("streaming", "", "assistant")
        got, tokens = "", 0
        # 150 tokens of SLOW take >= 1.5 s (its engine sleeps before each): two saves or more.
        while tokens < 150 or len(saves) < 2:
            f = ws.next()
            assert f["type"] in ("token", "progress"), f  # still streaming: 500 tokens take >= 5 s
            if f["type"] == "token":
                got, tokens = got + f["text"], tokens + 1
        n_saves, elapsed = len(saves), time.monotonic() - t0
        assert stored_answer(rt, start["answer_id"]).status == "streaming"
        ws.send({"type": "stop"})
        final, _ = ws.until("done")
    assert final["status"] == "stopped"
    assert stored_answer(rt, start["answer_id"]).status == "stopped"
    # Throttled, not per token: the saves are SAVE_INTERVAL_S apart (150 tokens would be 150 saves).
    assert n_saves <= 1 + elapsed / answers.SAVE_INTERVAL_S, (n_saves, tokens, elapsed)
    # Each save holds more of the same answer the client got.
    assert saves[0] and all(b.startswith(a) and len(b) > len(a) for a, b in zip(saves, saves[1:]))
    assert final["message"].startswith(saves[-1]) and final["message"].startswith(got)


def test_client_id_is_answered_once(client: TestClient, rt: Runtime, fake: FakeEngine) -> None:
    with client.websocket_connect("/ws") as sock:
        ws = Frames(sock)
        ws.send({"type": "chat", "message": "hi", "client_id": "msg-1"})
        first, frames1 = ws.until("done")
        start1 = frames1[0]
        assert start1["client_id"] == "msg-1"
        ws.send({"type": "chat", "message": "hi", "client_id": "msg-1"})
        again, frames2 = ws.until("done")
    assert frames2[0]["type"] == "start" and frames2[0]["answer_id"] == start1["answer_id"]
    assert apply([*frames2, again])[0] == first["message"] == again["message"]
    assert len(fake.calls) == 1
    cid = start1["conversation_id"]
    assert [(m.role, m.client_id) for m in rt.store.messages(cid)] == [("user", "msg-1"), ("assistant", None)]
    # Over /api/chat too, once the answer has left memory: rebuilt from the store.
    rt.answers._forget(rt.answers._by_id[start1["answer_id"]])
    r = client.post("/api/chat", json={"message": "hi", "client_id": "msg-1"})
    assert r.status_code == 200 and r.json()["data"]["replayed"] is True
    assert r.json()["data"]["message"] == first["message"]
    events = sse_events(client.post("/api/chat", json={"message": "hi", "client_id": "msg-1", "stream": True}).text)
    assert [e["type"] for e in events] == ["start", "done"] and events[1]["replayed"] is True
    assert len(fake.calls) == 1 and len(rt.store.messages(cid)) == 2


def test_an_answer_cut_by_max_tokens_is_stored_and_replayed_as_length(client: TestClient, rt: Runtime) -> None:
    """finish_reason `length` live, status `length` in the store, and the same again when the
    answer is rebuilt from the store (before schema 6 it came back as a complete `stop`)."""
    with client.websocket_connect("/ws") as sock:
        ws = Frames(sock)
        ws.send({"type": "chat", "message": "hi", "max_tokens": 2, "client_id": "cut-1"})
        live, frames = ws.until("done")
        ws.send({"type": "chat", "message": "hi again", "client_id": "whole-1"})
        whole, _ = ws.until("done")
    assert (live["finish_reason"], live["status"]) == ("length", "length")
    assert (whole["finish_reason"], whole["status"]) == ("stop", "complete")
    answer_id = frames[0]["answer_id"]
    assert stored_answer(rt, answer_id).status == "length"
    assert stored_answer(rt, frames[0]["answer_id"]).content == live["message"]
    rt.answers._forget(rt.answers._by_id[answer_id])
    r = client.post("/api/chat", json={"message": "hi", "client_id": "cut-1"})
    data = r.json()["data"]
    assert r.status_code == 200 and data["replayed"] is True
    assert (data["finish_reason"], data["message"]) == ("length", live["message"])
    full = client.get(f"/api/conversations/{live['conversation_id']}").json()["data"]
    assert [m["status"] for m in full["messages"]] == ["complete", "length"]


@pytest.mark.parametrize("bad", ["", "x" * 65, "with space", "é"])
def test_bad_client_id_is_a_400(client: TestClient, bad: str) -> None:
    assert_api_error(client.post("/api/chat", json={"message": "hi", "client_id": bad}), 400, "invalid_request")


def test_unknown_answer_and_bad_positions(client: TestClient) -> None:
    assert_api_error(client.get("/api/answers/nope/events"), 404, "answer_not_found")
    assert_api_error(client.get("/api/answers/" + "x" * 65 + "/events"), 404, "answer_not_found")
    events = sse_events(client.post("/api/chat", json={"message": "hi", "stream": True}).text)
    url = events[0]["events_url"]
    assert_api_error(client.get(url, headers={"Last-Event-ID": "abc"}), 400, "invalid_request")
    assert_api_error(client.get(url + "?after=-5"), 400, "invalid_request")
    assert_api_error(client.get(url + "?after=99"), 400, "invalid_request")  # past the last event
    with client.websocket_connect("/ws") as sock:
        ws = Frames(sock)
        ws.send({"type": "resume", "answer_id": "nope", "after": 0})
        err = ws.next()
        assert (err["type"], err["code"]) == ("error", "answer_not_found")
        ws.send({"type": "resume", "after": 0})
        assert ws.next()["code"] == "invalid_request"
        ws.assert_alive()


def test_a_resume_needs_the_same_api_key(fake: FakeEngine) -> None:
    rt = make_runtime(fake)
    security = SecurityConfig(allowed_hosts=("testserver",), keys={"alice": "a" * 24, "bob": "b" * 24})
    with TestClient(create_app(rt, security=security)) as client:
        events = sse_events(client.post("/api/chat", json={"message": "long " + SLOW, "stream": True, "max_tokens": 20},
                                        headers={"Authorization": "Bearer " + "a" * 24}).text)
        url = events[0]["events_url"]
        assert_api_error(client.get(url, headers={"Authorization": "Bearer " + "b" * 24}), 404, "answer_not_found")
        mine = client.get(url, headers={"Authorization": "Bearer " + "a" * 24, "Last-Event-ID": "0"})
        assert mine.status_code == 200 and sse_events(mine.text) == events[1:]
    rt.close()


def test_progress_frames_while_waiting_for_the_first_token(client: TestClient, rt: Runtime,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answers, "PROGRESS_INTERVAL_S", 0.05)
    with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
        first, second = Frames(a), Frames(b)
        first.send({"type": "chat", "message": "long " + SLOW, "max_tokens": 60})
        assert first.next()["type"] == "start"
        second.send({"type": "chat", "message": "queued behind it"})  # one slot: waits
        assert second.next()["type"] == "start"
        waiting = [second.next() for _ in range(3)]
        assert waiting == [{"type": "progress", "phase": "prompt"}] * 3
        final, rest = second.until("done", timeout=10)
        assert [f for f in rest if f["type"] == "token"][0]["seq"] == 1


def test_drain_ends_answers_with_server_shutdown(client: TestClient, rt: Runtime, fake: FakeEngine) -> None:
    with client.websocket_connect("/ws") as sock, client.websocket_connect("/ws") as idle_sock:
        ws, idle = Frames(sock), Frames(idle_sock)
        ws.send({"type": "chat", "message": "long " + SLOW})
        start = ws.next()
        ws.next()
        client.portal.call(rt.answers.drain)  # what SIGTERM runs before uvicorn's shutdown
        final, _ = ws.until("error", "done")
        assert final["code"] == "server_shutdown" and final["answer_id"] == start["answer_id"]
        assert idle.next()["code"] == "server_shutdown"
        for frames in (ws, idle):
            with pytest.raises(AssertionError, match="code 1012"):
                frames.next()
    m = stored_answer(rt, start["answer_id"])
    assert m.status == "interrupted" and m.content
    assert fake.calls[-1].finish_reason == "cancelled" and fake.calls[-1].deltas < 200
    assert_api_error(client.post("/api/chat", json={"message": "hi"}), 503, "server_shutdown")


def file_runtime(fake: FakeEngine, path: Path, busy_ms: int) -> Runtime:
    store = ConversationStore(path)
    store._conn.execute(f"PRAGMA busy_timeout = {busy_ms}")  # instead of 5 s, for a quick test
    return make_runtime(fake, store)


def test_locked_database_gives_503_and_an_error_frame(fake: FakeEngine, tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    rt = file_runtime(fake, path, 300)
    holder = sqlite3.connect(path, isolation_level=None)
    with TestClient(create_app(rt, security=TEST_SECURITY), raise_server_exceptions=False) as client:
        holder.execute("BEGIN EXCLUSIVE")
        r = client.post("/api/chat", json={"message": "hi"})
        assert_api_error(r, 503, "storage_unavailable")
        assert r.headers["retry-after"] == "2"
        assert_api_error(client.post("/api/chat", json={"message": "hi", "stream": True}), 503, "storage_unavailable")
        with client.websocket_connect("/ws") as sock:
            ws = Frames(sock)
            ws.send({"type": "chat", "message": "hi"})
            err = ws.next()
            assert (err["type"], err["code"]) == ("error", "storage_unavailable")
            ws.assert_alive()
        holder.execute("ROLLBACK")
        assert client.post("/api/chat", json={"message": "hi"}).status_code == 200
        assert fake.calls and all(c.finish_reason in ("cancelled", "stop", None) for c in fake.calls)
    holder.close()
    rt.close()
    rt.store.close()


def test_answer_that_cannot_be_stored_ends_with_an_error_event(fake: FakeEngine, tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    rt = file_runtime(fake, path, 200)
    holder = sqlite3.connect(path, isolation_level=None)
    with TestClient(create_app(rt, security=TEST_SECURITY), raise_server_exceptions=False) as client:
        with client.websocket_connect("/ws") as sock:
            ws = Frames(sock)
            ws.send({"type": "chat", "message": "long " + SLOW, "max_tokens": 40})
            start = ws.next()
            holder.execute("BEGIN EXCLUSIVE")  # the rows exist; every save from here on fails
            final, tokens = ws.until("error", "done", timeout=10)
            holder.execute("ROLLBACK")
        assert final["type"] == "error" and final["code"] == "storage_unavailable", final
        assert final["seq"] == len(tokens) + 1 and final["answer_id"] == start["answer_id"]
    holder.close()
    rt.close()
    rt.store.close()


def test_crash_leftovers_become_interrupted_at_start(fake: FakeEngine, tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with ConversationStore(path) as s:
        c = s.create()
        m = s.add_message(c.id, "assistant", "half of it", status="streaming", answer_id="left")
    assert sqlite_backend.SCHEMA_VERSION >= 4
    rt = make_runtime(fake, ConversationStore(path))
    assert [(x.status, x.content) for x in rt.store.messages(c.id) if x.id == m.id] == [("interrupted", "half of it")]
    rt.close()
    rt.store.close()
