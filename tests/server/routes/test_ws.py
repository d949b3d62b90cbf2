"""The WebSocket protocol (`nanochat_lite.server.routes.ws`): pong, error frames that leave the
socket usable, busy, stop, context overflow, disconnect, engine errors mid-stream.

Every read times out (`server_helpers.Frames`): a server that never answers fails the
test instead of hanging it. Fake engine, no model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fakes import CRASH, FAIL, FAIL_AFTER, OVERFLOW, REPLY, SLOW, SLOW_TOKENS, FakeEngine
from server_helpers import A, Frames, assert_api_error, deep, failed_requests, padded
from starlette.testclient import TestClient

from nanochat_lite.server import Runtime
from nanochat_lite.server.wire import limits as L

# The fake engine's character bound (its context x its longest token), as the server computes it.
FAKE_TEXT_CHARS = L.text_chars(FakeEngine.n_ctx, FakeEngine.token_chars)

# -- 3. the WebSocket protocol ------------------------------------------------------


def test_ws_ping_pong(ws: Frames) -> None:
    ws.send({"type": "ping"})
    assert ws.next() == {"type": "pong"}
    ws.send({"type": "ping", "extra": [1, 2]})  # unknown fields are ignored, as over HTTP
    assert ws.next() == {"type": "pong"}


@dataclass(frozen=True)
class BadFrame:
    id: str
    data: str | bytes | Callable[[], str]
    code: str


BAD_FRAMES = [
    BadFrame("text-not-json", "hello", "invalid_json"),
    BadFrame("text-truncated-json", '{"type": "ping"', "invalid_json"),
    BadFrame("text-empty", "", "invalid_json"),
    BadFrame("binary-garbage", b"\x00\x01\xfe\xff garbage", "invalid_json"),
    BadFrame("binary-invalid-utf8-in-chat", b'{"type": "chat", "message": "\xff"}', "invalid_json"),
    BadFrame("json-list", "[]", "invalid_request"),
    BadFrame("json-string", '"ping"', "invalid_request"),
    BadFrame("json-null", "null", "invalid_request"),
    BadFrame("json-without-type", '{"message": "hi"}', "invalid_request"),
    BadFrame("type-int", '{"type": 5}', "invalid_request"),
    BadFrame("type-null", '{"type": null}', "invalid_request"),
    BadFrame("type-unknown", '{"type": "chatt"}', "unknown_type"),
    BadFrame("type-wrong-case", '{"type": "PING"}', "unknown_type"),
    BadFrame("lone-surrogate", '{"type": "chat", "message": "\\ud800"}', "invalid_json"),
    BadFrame("deep-nesting", lambda: '{"type": "ping", "x": ' + deep(5000).decode() + "}", "invalid_json"),
    BadFrame("over-frame-limit", lambda: padded(b'{"type": "ping"', L.MAX_WS_FRAME_BYTES + 1).decode(),
             "frame_too_large"),
    BadFrame("chat-without-message", '{"type": "chat"}', "invalid_request"),
    BadFrame("chat-message-int", '{"type": "chat", "message": 5}', "invalid_request"),
    BadFrame("chat-message-null", '{"type": "chat", "message": null}', "invalid_request"),
    BadFrame("chat-stream-string", '{"type": "chat", "message": "hi", "stream": "yes"}', "invalid_request"),
    BadFrame("chat-temperature-string", '{"type": "chat", "message": "hi", "temperature": "hot"}',
             "invalid_request"),
    BadFrame("chat-temperature-out-of-range", '{"type": "chat", "message": "hi", "temperature": 5}',
             "invalid_request"),
    BadFrame("chat-max_tokens-zero", '{"type": "chat", "message": "hi", "max_tokens": 0}', "invalid_request"),
    BadFrame("chat-message-empty", '{"type": "chat", "message": "  "}', "invalid_request"),
    BadFrame("chat-message-too-long", lambda: json.dumps({"type": "chat", "message": "x" * (FAKE_TEXT_CHARS + 1)}),
             "message_too_long"),
    BadFrame("chat-conversation-unknown", '{"type": "chat", "message": "hi", "conversation_id": "nope"}',
             "conversation_not_found"),
    BadFrame("chat-conversation-10k", lambda: json.dumps({"type": "chat", "message": "hi",
                                                          "conversation_id": "a" * 10_000}), "invalid_request"),
    BadFrame("chat-context-overflow", json.dumps({"type": "chat", "message": "x " + OVERFLOW}), "context_overflow"),
]


@pytest.mark.parametrize("frame", [pytest.param(f, id=f.id) for f in BAD_FRAMES])
def test_ws_bad_frame_gets_error_frame_and_socket_stays_open(ws: Frames, runtime: Runtime, fake: FakeEngine,
                                                             frame: BadFrame) -> None:
    data = frame.data() if callable(frame.data) else frame.data
    if isinstance(data, bytes):
        ws.ws.send_bytes(data)
    else:
        ws.ws.send_text(data)
    got = ws.next()
    assert got["type"] == "error", got
    assert got["code"] == frame.code, got
    assert isinstance(got["message"], str) and got["message"], got
    ws.assert_alive()
    assert fake.calls == [] and runtime.store.list()[1] == 0


def test_ws_chat_streams_start_tokens_done(ws: Frames, runtime: Runtime) -> None:
    ws.send({"type": "chat", "message": "hi", "system": "be brief"})
    start = ws.next()
    assert start["type"] == "start" and start["model"] == "fake"
    cid = start["conversation_id"]
    done, tokens = ws.until("done")
    assert [t["type"] for t in tokens] == ["token"] * len(REPLY)
    assert "".join(t["text"] for t in tokens) == done["message"] == "".join(REPLY)
    assert done["conversation_id"] == cid and done["finish_reason"] == "stop"
    usage = done["usage"]
    assert set(usage) == {"promptTokens", "completionTokens", "totalTokens"}
    assert usage["completionTokens"] == len(REPLY)
    assert usage["totalTokens"] == usage["promptTokens"] + usage["completionTokens"]
    assert set(done["timings"]) == {"ttft_ms", "total_ms", "tokens_per_second"}
    stored = runtime.store.messages(cid)
    assert [(m.role, m.content, m.status) for m in stored] == [("user", "hi", "complete"),
                                                               ("assistant", "".join(REPLY), "complete")]


def test_ws_second_chat_while_running_is_busy(ws: Frames, fake: FakeEngine) -> None:
    ws.send({"type": "chat", "message": "go " + SLOW})
    assert ws.next()["type"] == "start"
    assert ws.next()["type"] == "token"
    ws.send({"type": "chat", "message": "and another"})
    busy, _ = ws.until("error", "done")
    assert busy["type"] == "error" and busy["code"] == "busy", busy
    ws.send({"type": "stop"})
    done, _ = ws.until("done")
    assert done["finish_reason"] == "cancelled"
    assert len(fake.calls) == 1  # the rejected chat never reached the engine


def test_ws_stop_ends_generation_with_cancelled(ws: Frames, runtime: Runtime, fake: FakeEngine) -> None:
    ws.send({"type": "chat", "message": "count " + SLOW})
    cid = ws.next()["conversation_id"]
    assert ws.next()["type"] == "token"
    ws.send({"type": "stop"})
    done, tokens = ws.until("done")
    assert done["finish_reason"] == "cancelled"
    # Stopped mid-answer, counted in tokens rather than seconds (the cores are shared): far
    # short of the whole answer, and the engine counted exactly the tokens that reached us.
    assert 1 <= done["usage"]["completionTokens"] < SLOW_TOKENS
    assert done["usage"]["completionTokens"] == 1 + sum(f["type"] == "token" for f in tokens)
    assert fake.calls[-1].finish_reason == "cancelled"
    answer = runtime.store.messages(cid)[-1]
    assert (answer.role, answer.status) == ("assistant", "stopped")
    assert answer.content == done["message"]
    # The socket takes the next chat normally (the stop does not stick).
    ws.send({"type": "chat", "message": "again", "conversation_id": cid})
    done, _ = ws.until("done")
    assert done["finish_reason"] == "stop"


def test_ws_stop_without_generation_is_harmless(ws: Frames) -> None:
    ws.send({"type": "stop"})
    ws.assert_alive()
    ws.send({"type": "chat", "message": "hi"})
    done, _ = ws.until("done")
    assert done["finish_reason"] == "stop"


def test_ws_chat_right_after_done_is_not_busy(ws: Frames, runtime: Runtime, fake: FakeEngine,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that waits for "done" before sending the next chat follows the protocol:
    it must never be told "busy", and the answer is stored when "done" arrives. The
    store takes 50 ms per answer here, as a database file on a slow disk does (it
    fsyncs every commit), which opens the window if "done" goes out too early."""
    add_message = runtime.store.add_message

    def slow_add_message(conversation_id: str, role: str, content: str, **kw: Any) -> Any:
        if role == "assistant":
            time.sleep(0.05)  # seconds
        return add_message(conversation_id, role, content, **kw)

    monkeypatch.setattr(runtime.store, "add_message", slow_add_message)
    cid = None
    refused = []
    for i in range(5):
        ws.send({"type": "chat", "message": f"turn {i}", **({"conversation_id": cid} if cid else {})})
        end, _ = ws.until("done", "error")
        if end["type"] == "error":
            refused.append(end["code"])
            continue
        cid = end["conversation_id"]
        last = runtime.store.messages(cid)[-1]
        assert (last.role, last.content) == ("assistant", end["message"]), "done arrived before the answer was stored"
    assert refused == [], f"{len(refused)} of 5 chats sent right after a 'done' frame were refused: {refused}"
    # Each turn saw the previous answers.
    assert [m["role"] for m in fake.calls[-1].messages] == ["user", "assistant"] * 4 + ["user"]


def test_ws_context_overflow_stores_nothing(ws: Frames, runtime: Runtime, fake: FakeEngine) -> None:
    ws.send({"type": "chat", "message": "first"})
    cid = ws.next()["conversation_id"]
    ws.until("done")
    before = [(m.role, m.content) for m in runtime.store.messages(cid)]
    ws.send({"type": "chat", "message": "too long " + OVERFLOW, "conversation_id": cid})
    err = ws.next()
    assert err["type"] == "error" and err["code"] == "context_overflow", err
    assert [(m.role, m.content) for m in runtime.store.messages(cid)] == before
    ws.send({"type": "chat", "message": "too long " + OVERFLOW})  # a new conversation is not created either
    assert ws.next()["code"] == "context_overflow"
    assert runtime.store.list()[1] == 1
    assert len(fake.calls) == 1
    ws.assert_alive()


def test_rejected_overflow_leaves_the_system_prompt_alone(client: TestClient, runtime: Runtime) -> None:
    """A request refused for context overflow must not change the conversation; here
    it also carries a new system prompt."""
    cid = client.post(A, json={"message": "hi", "system": "be brief"}).json()["data"]["conversation_id"]
    r = client.post(A, json={"message": "x " + OVERFLOW, "system": "be verbose", "conversation_id": cid})
    assert_api_error(r, 400, "context_overflow")
    assert runtime.store.get(cid).system == "be brief"
    assert len(runtime.store.messages(cid)) == 2


def test_ws_disconnect_mid_generation_stops_the_engine(client: TestClient, runtime: Runtime,
                                                       fake: FakeEngine) -> None:
    with client.websocket_connect("/ws") as sock:
        ws = Frames(sock)
        ws.send({"type": "chat", "message": "long " + SLOW})
        cid = ws.next()["conversation_id"]
        assert ws.next()["type"] == "token"
    deadline = time.monotonic() + 2.0
    while fake.calls[-1].finish_reason is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.calls[-1].finish_reason == "cancelled"
    assert fake.calls[-1].deltas < SLOW_TOKENS
    # The assistant row exists from the start ("streaming"); wait for its final status.
    deadline = time.monotonic() + 2.0
    while runtime.store.messages(cid)[-1].status == "streaming" and time.monotonic() < deadline:
        time.sleep(0.01)
    answer = runtime.store.messages(cid)[-1]
    # Cut off by the client going away, unlike the stop button's "stopped".
    assert (answer.role, answer.status) == ("assistant", "interrupted")


def test_ws_engine_error_mid_stream(ws: Frames, client: TestClient, runtime: Runtime) -> None:
    ws.send({"type": "chat", "message": "x " + FAIL})
    cid = ws.next()["conversation_id"]
    err, tokens = ws.until("error", "done")
    assert err["type"] == "error" and err["code"] == "engine_error", err
    assert len(tokens) == FAIL_AFTER
    answer = runtime.store.messages(cid)[-1]
    assert (answer.role, answer.status, answer.content) == ("assistant", "failed", "".join(REPLY[:FAIL_AFTER]))
    assert failed_requests(client) == 1
    ws.assert_alive()


def test_ws_engine_crash_mid_stream_ends_with_an_error_frame(ws: Frames) -> None:
    """An engine bug (not an EngineError) must still end the reply with a frame;
    otherwise the client waits for "done" forever."""
    ws.send({"type": "chat", "message": "x " + CRASH})
    assert ws.next()["type"] == "start"
    end, tokens = ws.until("error", "done", timeout=2.0)
    assert end["type"] == "error", end
    assert len(tokens) == FAIL_AFTER
    ws.assert_alive()
