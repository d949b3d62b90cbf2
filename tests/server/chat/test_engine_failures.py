"""Engine failures, a model still loading or failed to load, and the SSE stream.

Errors mid-stream end `/api/chat` and `/v1/chat/completions` streams with an error
event; without a stream they are JSON errors counted as failed requests. Fake engine,
no model; a real model and a real socket are the server process tests' business.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from fakes import CRASH, FAIL, FAIL_AFTER, OVERFLOW, REPLY
from nanochat_lite.history import ConversationStore
from nanochat_lite.server import Runtime, create_app
from server_helpers import (
    A, OK_MESSAGES, TEST_SECURITY, V, Frames, assert_api_error, assert_openai_error, failed_requests, sse_events, user,
)


# -- 4. engine failures, loading, and the SSE stream --------------------------------


def test_api_chat_stream_events(client: TestClient, runtime: Runtime) -> None:
    r = client.post(A, json={"message": "hi", "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert [e["type"] for e in events] == ["start"] + ["token"] * len(REPLY) + ["done"]
    start, done = events[0], events[-1]
    assert start["conversation_id"] == done["conversation_id"]
    assert "".join(e["text"] for e in events[1:-1]) == done["message"] == "".join(REPLY)
    assert done["finish_reason"] == "stop"
    usage = done["usage"]
    assert set(usage) == {"promptTokens", "completionTokens", "totalTokens"}
    assert usage["completionTokens"] == len(REPLY)
    assert usage["totalTokens"] == usage["promptTokens"] + usage["completionTokens"]
    assert [m.status for m in runtime.store.messages(done["conversation_id"])] == ["complete", "complete"]


def test_api_chat_stream_refused_before_streaming_is_json(client: TestClient) -> None:
    """Errors found before the first event come back as a JSON 4xx, not as a 200 stream."""
    assert_api_error(client.post(A, json={"message": "x " + OVERFLOW, "stream": True}), 400, "context_overflow")
    assert_api_error(client.post(A, json={"message": "", "stream": True}), 400, "invalid_request")
    assert_openai_error(client.post(V, json={"messages": [], "stream": True}), 400)


def test_engine_error_mid_stream_api_sse(client: TestClient, runtime: Runtime) -> None:
    r = client.post(A, json={"message": "x " + FAIL, "stream": True})
    assert r.status_code == 200  # the stream had started when the engine failed
    events = sse_events(r.text)
    assert [e["type"] for e in events] == ["start"] + ["token"] * FAIL_AFTER + ["error"]
    assert events[-1]["code"] == "engine_error" and events[-1]["message"]
    answer = runtime.store.messages(events[0]["conversation_id"])[-1]
    assert (answer.role, answer.status, answer.content) == ("assistant", "failed", "".join(REPLY[:FAIL_AFTER]))
    assert failed_requests(client) == 1


def test_engine_error_mid_stream_openai_sse(client: TestClient) -> None:
    r = client.post(V, json={"messages": [user("x " + FAIL)], "stream": True})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert "[DONE]" not in events  # a failed stream does not claim to be complete
    assert [e["choices"][0]["delta"].get("content") for e in events[:-1]] == ["", *REPLY[:FAIL_AFTER]]
    err = events[-1]["error"]
    assert err["code"] == "engine_error" and err["message"] and err["type"]
    assert failed_requests(client) == 1


def test_engine_error_non_stream_is_4xx_json(client: TestClient, runtime: Runtime) -> None:
    assert_api_error(client.post(A, json={"message": "x " + FAIL}), 400, "engine_error")
    assert_openai_error(client.post(V, json={"messages": [user("x " + FAIL)]}), 400, "engine_error")
    stats = client.get("/api/stats").json()["requests"]
    assert (stats["total"], stats["failed"], stats["cancelled"]) == (2, 2, 0)
    (conv,), _ = runtime.store.list()
    assert [m.status for m in runtime.store.messages(conv.id)] == ["complete", "failed"]


def test_openai_context_overflow_in_stream_is_a_400_before_the_stream(client: TestClient) -> None:
    # The prompt is built before the stream starts, so a streamed request that cannot
    # fit gets the same 400 as a non-streamed one (as OpenAI answers), not a 200 stream.
    r = client.post(V, json={"messages": [user("x " + OVERFLOW)], "stream": True})
    assert_openai_error(r, 400, "context_length_exceeded")


def test_engine_crash_without_stream_is_500_and_counted_as_failed(client: TestClient, runtime: Runtime) -> None:
    """An engine bug (RuntimeError, not EngineError) is the server's fault: a 500 in the
    usual JSON shape, a failed request in /api/stats (not a cancelled one), and the
    partial answer stored as failed (not as stopped by the user)."""
    assert_api_error(client.post(A, json={"message": "x " + CRASH}), 500, "internal_error")
    stats = client.get("/api/stats").json()["requests"]
    assert (stats["failed"], stats["cancelled"]) == (1, 0), stats
    (conv,), _ = runtime.store.list()
    assert [m.status for m in runtime.store.messages(conv.id)] == ["complete", "failed"]


@pytest.mark.parametrize("route", [A, V])
def test_engine_crash_mid_stream_ends_with_an_error_event(client: TestClient, route: str) -> None:
    """Without a final error event the client cannot tell a crash from a cut connection."""
    body = {"message": "x " + CRASH} if route == A else {"messages": [user("x " + CRASH)]}
    events = sse_events(client.post(route, json={**body, "stream": True}).text)
    last = events[-1]
    assert last != "[DONE]"
    assert (last.get("type") == "error") if route == A else ("error" in last), \
        f"the stream ended without an error event: {events}"


@pytest.fixture
def loading_client() -> Iterator[tuple[TestClient, Runtime]]:
    rt = Runtime(store=ConversationStore(":memory:"), model_name="fake")  # no engine yet
    with TestClient(create_app(rt, security=TEST_SECURITY), raise_server_exceptions=False) as c:
        yield c, rt
    rt.store.close()


def test_model_still_loading(loading_client: tuple[TestClient, Runtime]) -> None:
    client, rt = loading_client
    for path in ("/api/health", "/health"):
        r = client.get(path)
        assert r.status_code == 503 and r.json() == {"status": "loading"}
    assert_api_error(client.post(A, json={"message": "hi"}), 503, "loading")
    assert_api_error(client.post(A, json={"message": "hi", "stream": True}), 503, "loading")
    err = assert_openai_error(client.post(V, json={"messages": OK_MESSAGES}), 503, "loading")
    assert err["type"] == "server_error"
    assert_api_error(client.post(A, content=b"{"), 400, "invalid_json")  # a bad body is still the client's fault
    assert client.get("/api/stats").status_code == 200
    assert client.get("/v1/models").status_code == 200
    with client.websocket_connect("/ws") as sock:
        ws = Frames(sock)
        ws.send({"type": "chat", "message": "hi"})
        assert ws.next()["code"] == "loading"
        ws.assert_alive()
    assert rt.store.list()[1] == 0


def test_model_failed_to_load(loading_client: tuple[TestClient, Runtime]) -> None:
    client, rt = loading_client
    rt.set_error("model.gguf: not a GGUF file")
    r = client.get("/api/health")
    assert r.status_code == 503
    assert r.json() == {"status": "error", "error": "model.gguf: not a GGUF file"}
    err = assert_api_error(client.post(A, json={"message": "hi"}), 503, "model_error")
    assert "not a GGUF file" in err["message"]
    assert_openai_error(client.post(V, json={"messages": OK_MESSAGES}), 503, "model_error")
