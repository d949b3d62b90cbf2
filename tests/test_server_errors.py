"""Error paths of the HTTP and WebSocket server (`nanochat_lite.server`).

The app runs in-process under Starlette's TestClient with a fake engine
(`tests/fakes.py`), so these tests need no model and take a few seconds.

What is checked:
  - every malformed request gets a 4xx JSON error in its route's style, never a 5xx:
    `/api/*` and other paths -> `{"success": false, "error": {"code", "message"}}`,
    `/v1/*` -> OpenAI's `{"error": {"message", "type", "param", "code"}}`;
  - each limit in `limits.py` at its bound (accepted, and the value reaches the engine)
    and one step past it (rejected before anything is stored or generated);
  - the WebSocket protocol: pong, error frames that leave the socket usable, busy,
    stop, context overflow, disconnect;
  - engine failures mid-stream (SSE error events, 4xx JSON, counted as failed) and a
    server whose model is still loading.

Not here: the real model and a real socket (the server process tests do those).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from fakes import CRASH, FAIL, FAIL_AFTER, OVERFLOW, REPLY, SLOW, SLOW_TOKENS, FakeEngine
from nanochat_lite.history import ConversationStore
from nanochat_lite.server import Runtime, create_app
from nanochat_lite.server import limits as L
from nanochat_lite.server.security import SecurityConfig

WS_TIMEOUT_S = 5.0  # seconds to wait for one WebSocket frame before failing the test
OPENAI_ERROR_TYPES = {"invalid_request_error", "not_found_error", "server_error"}
MIB = L.MAX_BODY_BYTES
# TestClient sends Host: testserver, which the server's Host check would refuse (421).
TEST_SECURITY = SecurityConfig(allowed_hosts=("testserver",))


# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def runtime(fake: FakeEngine) -> Iterator[Runtime]:
    rt = Runtime(store=ConversationStore(":memory:"), model_name="fake")
    rt.set_engine(fake)
    yield rt
    rt.close()
    rt.store.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    # raise_server_exceptions=False: a server bug must show up as the 500 a real client
    # would get, so the assertions below can say which request caused it.
    with TestClient(create_app(runtime, security=TEST_SECURITY), raise_server_exceptions=False) as c:
        yield c


def j(obj: Any) -> bytes:
    """JSON bytes as a client would send them; non-ASCII (and lone surrogates) as \\u escapes."""
    return json.dumps(obj).encode()


def assert_api_error(r: Any, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["success"] is False, body
    err = body["error"]
    assert isinstance(err["code"], str) and err["code"], body
    assert isinstance(err["message"], str) and err["message"], body
    if code is not None:
        assert err["code"] == code, body
    return err


def assert_openai_error(r: Any, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"], body
    assert err["type"] in OPENAI_ERROR_TYPES, body
    assert "param" in err and "code" in err, body
    if code is not None:
        assert err["code"] == code, body
    return err


def assert_error(r: Any, path: str, status: int, code: str | None = None) -> dict:
    if path.startswith("/v1/"):
        return assert_openai_error(r, status, code)
    return assert_api_error(r, status, code)


def sse_events(text: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded ("[DONE]" kept as a string)."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), f"not an SSE data block: {block!r}"
        data = block[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def failed_requests(client: TestClient) -> int:
    return client.get("/api/stats").json()["requests"]["failed"]


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


class Frames:
    """Reads a TestClient WebSocket on a thread so every read can time out: a server
    that never answers fails the test instead of hanging it."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._q: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                msg = self.ws.receive()
            except BaseException as e:  # the session ended (closed stream, app crashed)
                self._q.put(e)
                return
            self._q.put(msg)
            if msg["type"] == "websocket.close":
                return

    def next(self, timeout: float = WS_TIMEOUT_S) -> dict:
        try:
            msg = self._q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no frame from the server within {timeout} s") from None
        if isinstance(msg, BaseException):
            raise AssertionError(f"the WebSocket session failed: {msg!r}")
        if msg["type"] == "websocket.close":
            raise AssertionError(f"the server closed the socket (code {msg.get('code')})")
        return json.loads(msg["text"])

    def until(self, *types: str, timeout: float = WS_TIMEOUT_S) -> tuple[dict, list[dict]]:
        """Read until a frame of one of `types`; returns it and the frames before it."""
        seen: list[dict] = []
        deadline = time.monotonic() + timeout
        while True:
            frame = self.next(max(0.01, deadline - time.monotonic()))
            if frame["type"] in types:
                return frame, seen
            seen.append(frame)

    def send(self, obj: Any) -> None:
        self.ws.send_text(json.dumps(obj))

    def assert_alive(self) -> None:
        self.send({"type": "ping"})
        assert self.next() == {"type": "pong"}


@pytest.fixture
def ws(client: TestClient) -> Iterator[Frames]:
    with client.websocket_connect("/ws") as sock:
        yield Frames(sock)


# -- 1. malformed requests: 4xx JSON in the route's style, never 5xx -----------------


@dataclass(frozen=True)
class Bad:
    id: str
    method: str
    path: str
    body: bytes | Callable[[], Any] | None = None  # a callable makes big or streamed bodies lazily
    status: int = 400
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


A, V = "/api/chat", "/v1/chat/completions"
OK_MESSAGES = [user("hi")]


def oai(**kw: Any) -> bytes:
    return j({"messages": OK_MESSAGES, **kw})


def _padded(prefix: bytes, size: int) -> bytes:
    """A JSON object of exactly `size` bytes: `prefix` (ending before the final "}")
    padded with spaces, which JSON allows between tokens."""
    return prefix + b" " * (size - len(prefix) - 1) + b"}"


def _chunks(data: bytes, n: int = 64 * 1024) -> Callable[[], Iterator[bytes]]:
    """A body sent chunked, without Content-Length."""
    def gen() -> Iterator[bytes]:
        for i in range(0, len(data), n):
            yield data[i:i + n]
    return gen


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def _over_limit(route_prefix: bytes) -> Callable[[], bytes]:
    return lambda: _padded(route_prefix, MIB + 1)


API_OVER = b'{"message": "hi"'
V1_OVER = b'{"messages": [{"role": "user", "content": "hi"}]'
BAD_UTF8 = {"invalid-start-byte": b"\xff\xfe", "overlong-slash": b"\xc0\xaf",
            "encoded-surrogate": b"\xed\xa0\x80", "truncated-euro": b"\xe2\x82"}

MALFORMED: list[Bad] = [
    # -- POST /api/chat: not JSON, or JSON that is not an object
    Bad("api-truncated-json", "POST", A, b'{"message": "hi"', code="invalid_json"),
    Bad("api-trailing-garbage", "POST", A, b'{"message": "hi"} x', code="invalid_json"),
    Bad("api-single-quotes", "POST", A, b"{'message': 'hi'}", code="invalid_json"),
    Bad("api-nan-literal", "POST", A, b'{"message": "hi", "temperature": NaN}', code="invalid_json"),
    Bad("api-infinity-literal", "POST", A, b'{"message": "hi", "temperature": Infinity}', code="invalid_json"),
    Bad("api-empty-body", "POST", A, b"", code="invalid_json"),
    Bad("api-whitespace-body", "POST", A, b" \r\n\t ", code="invalid_json"),
    Bad("api-body-list", "POST", A, b"[]", code="invalid_request"),
    Bad("api-body-list-of-object", "POST", A, j([{"message": "hi"}]), code="invalid_request"),
    Bad("api-body-string", "POST", A, j("hi"), code="invalid_request"),
    Bad("api-body-number", "POST", A, b"42", code="invalid_request"),
    Bad("api-body-null", "POST", A, b"null", code="invalid_request"),
    Bad("api-body-bool", "POST", A, b"true", code="invalid_request"),
    Bad("api-form-encoded", "POST", A, b"message=hi", code="invalid_json",
        headers={"content-type": "application/x-www-form-urlencoded"}),
    Bad("api-utf16-body", "POST", A, '{"message": "hi"}'.encode("utf-16"), code="invalid_json"),
    Bad("api-utf8-bom", "POST", A, b'\xef\xbb\xbf{"message": "hi"}', code="invalid_json"),
    # -- missing fields and wrong types
    Bad("api-missing-message", "POST", A, j({}), code="invalid_request"),
    Bad("api-message-under-other-name", "POST", A, j({"text": "hi"}), code="invalid_request"),
    Bad("api-message-int", "POST", A, j({"message": 5}), code="invalid_request"),
    Bad("api-message-list", "POST", A, j({"message": ["hi"]}), code="invalid_request"),
    Bad("api-message-null", "POST", A, j({"message": None}), code="invalid_request"),
    Bad("api-message-object", "POST", A, j({"message": {"text": "hi"}}), code="invalid_request"),
    Bad("api-message-bool", "POST", A, j({"message": True}), code="invalid_request"),
    Bad("api-duplicate-key-wrong-type", "POST", A, b'{"message": "hi", "message": 5}', code="invalid_request"),
    Bad("api-stream-string", "POST", A, j({"message": "hi", "stream": "true"}), code="invalid_request"),
    Bad("api-stream-int", "POST", A, j({"message": "hi", "stream": 1}), code="invalid_request"),
    Bad("api-temperature-string", "POST", A, j({"message": "hi", "temperature": "0.5"}), code="invalid_request"),
    Bad("api-temperature-bool", "POST", A, j({"message": "hi", "temperature": True}), code="invalid_request"),
    Bad("api-max_tokens-bool", "POST", A, j({"message": "hi", "max_tokens": True}), code="invalid_request"),
    Bad("api-max_tokens-float", "POST", A, j({"message": "hi", "max_tokens": 1.5}), code="invalid_request"),
    Bad("api-max_tokens-string", "POST", A, j({"message": "hi", "max_tokens": "10"}), code="invalid_request"),
    Bad("api-top_k-float", "POST", A, j({"message": "hi", "top_k": 1.5}), code="invalid_request"),
    Bad("api-seed-bool", "POST", A, j({"message": "hi", "seed": False}), code="invalid_request"),
    Bad("api-stop-int", "POST", A, j({"message": "hi", "stop": 5}), code="invalid_request"),
    Bad("api-stop-int-list", "POST", A, j({"message": "hi", "stop": [1, 2]}), code="invalid_request"),
    Bad("api-stop-null-in-list", "POST", A, j({"message": "hi", "stop": [None]}), code="invalid_request"),
    Bad("api-stop-object", "POST", A, j({"message": "hi", "stop": {"a": "b"}}), code="invalid_request"),
    Bad("api-stop-empty-string", "POST", A, j({"message": "hi", "stop": ""}), code="invalid_request"),
    Bad("api-system-int", "POST", A, j({"message": "hi", "system": 5}), code="invalid_request"),
    Bad("api-system-list", "POST", A, j({"message": "hi", "system": ["be brief"]}), code="invalid_request"),
    # -- numbers: out of range, beyond float, beyond int64
    Bad("api-temperature-1e309", "POST", A, b'{"message": "hi", "temperature": 1e309}', code="invalid_request"),
    Bad("api-max_tokens-1e309", "POST", A, b'{"message": "hi", "max_tokens": 1e309}', code="invalid_request"),
    Bad("api-max_tokens-2**64", "POST", A, j({"message": "hi", "max_tokens": 2**64}), code="invalid_request"),
    Bad("api-max_tokens-5000-digits", "POST", A, b'{"message": "hi", "max_tokens": 1' + b"0" * 5000 + b"}",
        code="invalid_request"),
    Bad("api-seed-2**64", "POST", A, j({"message": "hi", "seed": 2**64}), code="invalid_request"),
    Bad("api-top_k-minus-2**64", "POST", A, j({"message": "hi", "top_k": -(2**64)}), code="invalid_request"),
    Bad("api-max_tokens-negative", "POST", A, j({"message": "hi", "max_tokens": -1}), code="invalid_request"),
    Bad("api-temperature-negative", "POST", A, j({"message": "hi", "temperature": -1}), code="invalid_request"),
    # -- message content
    Bad("api-message-empty", "POST", A, j({"message": ""}), code="invalid_request"),
    Bad("api-message-whitespace", "POST", A, j({"message": " \n\t\u3000 "}), code="invalid_request"),
    Bad("api-message-too-long", "POST", A, lambda: j({"message": "x" * (L.MAX_MESSAGE_CHARS + 1)}),
        code="message_too_long"),
    Bad("api-system-too-long", "POST", A, lambda: j({"message": "hi", "system": "s" * (L.MAX_SYSTEM_CHARS + 1)}),
        code="message_too_long"),
    Bad("api-context-overflow", "POST", A, j({"message": "hi " + OVERFLOW}), code="context_overflow"),
    # -- unicode: lone surrogates are not text; raw control characters are not JSON
    Bad("api-lone-high-surrogate", "POST", A, j({"message": "\ud800"}), code="invalid_json"),
    Bad("api-lone-low-surrogate", "POST", A, j({"message": "\udc00"}), code="invalid_json"),
    Bad("api-high-surrogate-then-letter", "POST", A, b'{"message": "\\ud800A"}', code="invalid_json"),
    Bad("api-reversed-surrogate-pair", "POST", A, b'{"message": "\\ude00\\ud83d"}', code="invalid_json"),
    Bad("api-raw-nul-in-string", "POST", A, b'{"message": "a\x00b"}', code="invalid_json"),
    Bad("api-raw-newline-in-string", "POST", A, b'{"message": "a\nb"}', code="invalid_json"),
    *[Bad(f"api-invalid-utf8-{name}", "POST", A, b'{"message": "' + raw + b'"}', code="invalid_json")
      for name, raw in BAD_UTF8.items()],
    # -- nesting deeper than the parser goes (valid JSON, so 400 rather than a crash)
    Bad("api-deep-nesting-in-message", "POST", A, b'{"message": ' + _deep(5000) + b"}", code="invalid_request"),
    Bad("api-deep-nesting-in-unknown-field", "POST", A, b'{"message": "hi", "x": ' + _deep(5000) + b"}"),
    # -- conversation ids
    Bad("api-conversation-unknown", "POST", A, j({"message": "hi", "conversation_id": "0" * 32}),
        status=404, code="conversation_not_found"),
    Bad("api-conversation-10k-chars", "POST", A, j({"message": "hi", "conversation_id": "a" * 10_000}),
        code="invalid_request"),
    Bad("api-conversation-empty", "POST", A, j({"message": "hi", "conversation_id": ""}), code="invalid_request"),
    Bad("api-conversation-nul", "POST", A, j({"message": "hi", "conversation_id": "abc\u0000"}),
        code="invalid_request"),
    Bad("api-conversation-newline", "POST", A, j({"message": "hi", "conversation_id": "abc\ndef"}),
        code="invalid_request"),
    Bad("api-conversation-int", "POST", A, j({"message": "hi", "conversation_id": 7}), code="invalid_request"),
    # -- body size and headers
    Bad("api-body-over-1MiB", "POST", A, _over_limit(API_OVER), status=413, code="body_too_large"),
    Bad("api-body-over-1MiB-chunked", "POST", A, lambda: _chunks(_padded(API_OVER, MIB + 1))(),
        status=413, code="body_too_large"),
    Bad("api-content-length-declares-over-1MiB", "POST", A, j({"message": "hi"}), status=413,
        code="body_too_large", headers={"content-length": str(MIB + 1)}),
    Bad("api-content-length-not-a-number", "POST", A, b"", code="invalid_request",
        headers={"content-length": "abc"}),

    # -- POST /v1/chat/completions
    Bad("v1-truncated-json", "POST", V, b'{"messages": [', code="invalid_json"),
    Bad("v1-empty-body", "POST", V, b"", code="invalid_json"),
    Bad("v1-nan-literal", "POST", V, b'{"messages": [], "temperature": NaN}', code="invalid_json"),
    Bad("v1-body-list", "POST", V, j(OK_MESSAGES), code="invalid_request"),
    Bad("v1-body-string", "POST", V, j("hi"), code="invalid_request"),
    Bad("v1-body-number", "POST", V, b"1", code="invalid_request"),
    Bad("v1-body-null", "POST", V, b"null", code="invalid_request"),
    Bad("v1-form-encoded", "POST", V, b"messages=hi", code="invalid_json",
        headers={"content-type": "application/x-www-form-urlencoded"}),
    Bad("v1-missing-messages", "POST", V, j({"model": "fake"}), code="invalid_request"),
    Bad("v1-messages-string", "POST", V, j({"messages": "hi"}), code="invalid_request"),
    Bad("v1-messages-object", "POST", V, j({"messages": user("hi")}), code="invalid_request"),
    Bad("v1-messages-null", "POST", V, j({"messages": None}), code="invalid_request"),
    Bad("v1-messages-empty", "POST", V, j({"messages": []}), code="invalid_request"),
    Bad("v1-message-item-int", "POST", V, j({"messages": [1]}), code="invalid_request"),
    Bad("v1-message-item-string", "POST", V, j({"messages": ["hi"]}), code="invalid_request"),
    Bad("v1-message-missing-role", "POST", V, j({"messages": [{"content": "hi"}]}), code="invalid_request"),
    Bad("v1-role-unknown", "POST", V, j({"messages": [{"role": "robot", "content": "hi"}]}), code="invalid_request"),
    Bad("v1-role-tool", "POST", V, j({"messages": [{"role": "tool", "content": "hi"}]}), code="invalid_request"),
    Bad("v1-role-int", "POST", V, j({"messages": [{"role": 1, "content": "hi"}]}), code="invalid_request"),
    Bad("v1-role-null", "POST", V, j({"messages": [{"role": None, "content": "hi"}]}), code="invalid_request"),
    Bad("v1-content-int", "POST", V, j({"messages": [{"role": "user", "content": 5}]}), code="invalid_request"),
    Bad("v1-content-object", "POST", V, j({"messages": [{"role": "user", "content": {"text": "hi"}}]}),
        code="invalid_request"),
    Bad("v1-content-image-part", "POST", V, j({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}), code="invalid_request"),
    Bad("v1-content-text-and-image-parts", "POST", V, j({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}),
        code="invalid_request"),
    Bad("v1-content-part-without-type", "POST", V, j({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}),
        code="invalid_request"),
    Bad("v1-content-text-part-without-text", "POST", V, j({"messages": [{"role": "user", "content": [
        {"type": "text"}]}]}), code="invalid_request"),
    Bad("v1-content-part-string", "POST", V, j({"messages": [{"role": "user", "content": ["hi"]}]}),
        code="invalid_request"),
    Bad("v1-n-9", "POST", V, oai(n=9), code="invalid_request"),  # n = 2..8 is served
    Bad("v1-n-0", "POST", V, oai(n=0), code="invalid_request"),
    Bad("v1-n-string", "POST", V, oai(n="1"), code="invalid_request"),
    Bad("v1-stream-string", "POST", V, oai(stream="true"), code="invalid_request"),
    Bad("v1-stream_options-string", "POST", V, oai(stream=True, stream_options="yes"), code="invalid_request"),
    Bad("v1-include_usage-string", "POST", V, oai(stream=True, stream_options={"include_usage": "yes"}),
        code="invalid_request"),
    Bad("v1-model-int", "POST", V, oai(model=5), code="invalid_request"),
    Bad("v1-temperature-string", "POST", V, oai(temperature="hot"), code="invalid_request"),
    Bad("v1-temperature-1e309", "POST", V, V1_OVER + b', "temperature": 1e309}', code="invalid_request"),
    Bad("v1-max_tokens-bool", "POST", V, oai(max_tokens=True), code="invalid_request"),
    Bad("v1-max_tokens-zero", "POST", V, oai(max_tokens=0), code="invalid_request"),
    Bad("v1-max_tokens-negative", "POST", V, oai(max_tokens=-5), code="invalid_request"),
    Bad("v1-max_completion_tokens-2**64", "POST", V, oai(max_completion_tokens=2**64), code="invalid_request"),
    Bad("v1-seed-2**64", "POST", V, oai(seed=2**64), code="invalid_request"),
    Bad("v1-stop-int", "POST", V, oai(stop=7), code="invalid_request"),
    Bad("v1-stop-int-list", "POST", V, oai(stop=[1]), code="invalid_request"),
    Bad("v1-frequency_penalty-3", "POST", V, oai(frequency_penalty=3), code="invalid_request"),
    Bad("v1-presence_penalty-string", "POST", V, oai(presence_penalty="none"), code="invalid_request"),
    Bad("v1-lone-surrogate", "POST", V, j({"messages": [user("\udfff")]}), code="invalid_json"),
    *[Bad(f"v1-invalid-utf8-{name}", "POST", V, b'{"messages": [{"role": "user", "content": "' + raw + b'"}]}',
          code="invalid_json") for name, raw in BAD_UTF8.items()],
    Bad("v1-deep-nesting-in-unknown-field", "POST", V, V1_OVER + b', "metadata": ' + _deep(5000) + b"}"),
    Bad("v1-too-many-messages", "POST", V, lambda: j({"messages": [user("x")] * (L.MAX_MESSAGES + 1)}),
        code="too_many_messages"),
    Bad("v1-message-too-long", "POST", V, lambda: j({"messages": [user("x" * (L.MAX_MESSAGE_CHARS + 1))]}),
        code="message_too_long"),
    Bad("v1-context-overflow", "POST", V, j({"messages": [user("hi " + OVERFLOW)]}),
        code="context_length_exceeded"),
    Bad("v1-body-over-1MiB", "POST", V, _over_limit(V1_OVER), status=413, code="body_too_large"),
    Bad("v1-body-over-1MiB-chunked", "POST", V, lambda: _chunks(_padded(V1_OVER, MIB + 1))(),
        status=413, code="body_too_large"),

    # -- wrong methods (405, and the Allow header says what would work)
    *[Bad(f"{m.lower()}-api-chat", m, A, status=405, code="method_not_allowed")
      for m in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS")],
    *[Bad(f"{m.lower()}-{p.strip('/').replace('/', '-')}", m, p, status=405, code="method_not_allowed")
      for m, p in [("POST", "/api/health"), ("DELETE", "/api/health"), ("POST", "/health"),
                   ("POST", "/api/stats"), ("PUT", "/api/stats"),
                   ("GET", V), ("PUT", V), ("DELETE", V),
                   ("POST", "/v1/models"), ("DELETE", "/v1/models")]],
    # -- unknown routes (404)
    *[Bad(f"unknown-{m.lower()}-{p.strip('/').replace('/', '-') or 'root'}", m, p, status=404, code="not_found")
      for m, p in [("GET", "/api/nope"), ("POST", "/api/chats"), ("GET", "/api/health/extra"),
                   ("GET", "/nope"), ("GET", "/ws"), ("GET", "/static/nope.js"),
                   ("GET", "/v1/models/fake"), ("POST", "/v1/edits"), ("POST", "/v1/audio/speech"),
                   ("GET", "/v1/")]],
]


def send_bad(client: TestClient, case: Bad) -> Any:
    body = case.body() if callable(case.body) else case.body
    headers = {"content-type": "application/json", **case.headers} if body is not None else dict(case.headers)
    return client.request(case.method, case.path, content=body, headers=headers)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in MALFORMED])
def test_malformed_request_gets_4xx_json(client: TestClient, runtime: Runtime, fake: FakeEngine, case: Bad) -> None:
    r = send_bad(client, case)
    assert r.status_code < 500, f"{case.method} {case.path} [{case.id}] -> {r.status_code}: {r.text[:300]}"
    assert_error(r, case.path, case.status, case.code)
    if case.status == 405:
        assert r.headers.get("allow"), "a 405 must say which methods the route takes"
    # A rejected request leaves no trace: nothing generated, nothing stored.
    assert fake.calls == []
    assert runtime.store.list()[1] == 0


def test_malformed_sweep_counts_cases_and_finds_no_5xx(client: TestClient) -> None:
    """All cases in one pass: the count, and every 5xx in one failure message."""
    statuses = {case.id: send_bad(client, case).status_code for case in MALFORMED}
    server_errors = {cid: s for cid, s in statuses.items() if s >= 500}
    non_4xx = {cid: s for cid, s in statuses.items() if not 400 <= s < 500}
    print(f"\n{len(statuses)} malformed requests, {len(server_errors)} answered 5xx")
    assert len(statuses) >= 50
    assert server_errors == {}, f"5xx answers: {server_errors}"
    assert non_4xx == {}


def test_nasty_but_valid_text_is_accepted_verbatim(client: TestClient, runtime: Runtime, fake: FakeEngine) -> None:
    """NUL (escaped), a surrogate pair, combining marks and right-to-left text are valid
    JSON strings: the engine gets them unchanged and the store keeps them."""
    text = "a\u0000b \U0001F600 e\u0301 \u202eabc\u202c \ufeff"
    r = client.post(A, content=j({"message": text}), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert fake.calls[-1].messages[-1] == {"role": "user", "content": text}
    cid = r.json()["data"]["conversation_id"]
    assert runtime.store.messages(cid)[0].content == text
    r = client.post(V, json={"messages": [user(text)]})
    assert r.status_code == 200, r.text
    assert fake.calls[-1].messages[-1]["content"] == text


def test_json_body_is_accepted_whatever_the_content_type(client: TestClient) -> None:
    """Deliberately lenient: `curl -d '{...}'` sends application/x-www-form-urlencoded,
    so the body decides, not the header."""
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/octet-stream"):
        r = client.post(A, content=j({"message": "hi"}), headers={"content-type": ctype})
        assert r.status_code == 200, (ctype, r.text)


def test_websocket_to_an_unknown_path_is_refused(client: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/ws/nope"):
            pass


# -- 2. limits: at the bound accepted, one step past rejected -----------------------

# field, values at the bounds, values one step past them
INT_STEP, FLOAT_STEP = 1, 0.01
SAMPLING_BOUNDS = [
    ("max_tokens", (L.MAX_TOKENS_MIN, L.MAX_TOKENS_MAX), (L.MAX_TOKENS_MIN - INT_STEP, L.MAX_TOKENS_MAX + INT_STEP)),
    ("temperature", (L.TEMPERATURE_MIN, L.TEMPERATURE_MAX),
     (L.TEMPERATURE_MIN - FLOAT_STEP, L.TEMPERATURE_MAX + FLOAT_STEP)),
    ("top_k", (L.TOP_K_MIN, L.TOP_K_MAX), (L.TOP_K_MIN - INT_STEP, L.TOP_K_MAX + INT_STEP)),
    ("top_p", (L.TOP_P_MIN, L.TOP_P_MAX), (L.TOP_P_MIN - FLOAT_STEP, L.TOP_P_MAX + FLOAT_STEP)),
    ("min_p", (L.MIN_P_MIN, L.MIN_P_MAX), (L.MIN_P_MIN - FLOAT_STEP, L.MIN_P_MAX + FLOAT_STEP)),
    ("repeat_penalty", (L.REPEAT_PENALTY_MIN, L.REPEAT_PENALTY_MAX),
     (L.REPEAT_PENALTY_MIN - FLOAT_STEP, L.REPEAT_PENALTY_MAX + FLOAT_STEP)),
    ("seed", (L.SEED_MIN, L.SEED_MAX), (L.SEED_MIN - INT_STEP, L.SEED_MAX + INT_STEP)),
]
OPENAI_ONLY_BOUNDS = [
    ("frequency_penalty", (L.PENALTY_MIN, L.PENALTY_MAX), (L.PENALTY_MIN - FLOAT_STEP, L.PENALTY_MAX + FLOAT_STEP)),
    ("presence_penalty", (L.PENALTY_MIN, L.PENALTY_MAX), (L.PENALTY_MIN - FLOAT_STEP, L.PENALTY_MAX + FLOAT_STEP)),
    ("max_completion_tokens", (L.MAX_TOKENS_MIN, L.MAX_TOKENS_MAX),
     (L.MAX_TOKENS_MIN - INT_STEP, L.MAX_TOKENS_MAX + INT_STEP)),
]


def _bound_params(routes: tuple[str, ...], bounds: list) -> list:
    out = []
    for route in routes:
        for name, ok, bad in bounds:
            out += [pytest.param(route, name, v, True, id=f"{route}-{name}={v}-ok") for v in ok]
            out += [pytest.param(route, name, v, False, id=f"{route}-{name}={v}-rejected") for v in bad]
    return out


@pytest.mark.parametrize("route,name,value,accepted",
                         _bound_params((A, V), SAMPLING_BOUNDS) + _bound_params((V,), OPENAI_ONLY_BOUNDS))
def test_sampling_bounds(client: TestClient, fake: FakeEngine, route: str, name: str, value: float,
                         accepted: bool) -> None:
    body = {"message": "hi"} if route == A else {"messages": OK_MESSAGES}
    r = client.post(route, json={**body, name: value})
    if not accepted:
        err = assert_error(r, route, 400, "invalid_request")
        assert name in err["message"], err
        if route == V:
            assert err["param"] == name
        assert fake.calls == []
        return
    assert r.status_code == 200, r.text
    field_name = "max_tokens" if name == "max_completion_tokens" else name
    assert getattr(fake.calls[-1].params, field_name) == value  # the value reached the engine unchanged
    if field_name == "max_tokens" and value < len(REPLY):
        assert fake.calls[-1].deltas == value and fake.calls[-1].finish_reason == "length"


@pytest.mark.parametrize("route", [A, V])
@pytest.mark.parametrize("stop,accepted", [
    pytest.param(["s"] * L.MAX_STOP_STRINGS, True, id="max-count"),
    pytest.param(["s"] * (L.MAX_STOP_STRINGS + 1), False, id="max-count+1"),
    pytest.param(["s" * L.MAX_STOP_CHARS], True, id="max-chars"),
    pytest.param(["s" * (L.MAX_STOP_CHARS + 1)], False, id="max-chars+1"),
    pytest.param("s" * L.MAX_STOP_CHARS, True, id="string-max-chars"),
    pytest.param("s" * (L.MAX_STOP_CHARS + 1), False, id="string-max-chars+1"),
    pytest.param(["ok", ""], False, id="empty-string-in-list"),
    pytest.param([], True, id="empty-list"),
])
def test_stop_bounds(client: TestClient, fake: FakeEngine, route: str, stop: Any, accepted: bool) -> None:
    body = {"message": "hi"} if route == A else {"messages": OK_MESSAGES}
    r = client.post(route, json={**body, "stop": stop})
    if not accepted:
        assert_error(r, route, 400, "invalid_request")
        assert fake.calls == []
        return
    assert r.status_code == 200, r.text
    assert fake.calls[-1].params.stop == ((stop,) if isinstance(stop, str) else tuple(stop))


@pytest.mark.parametrize("text,status,code", [
    pytest.param("x" * L.MAX_MESSAGE_CHARS, 200, None, id="max-chars"),
    pytest.param("x" * (L.MAX_MESSAGE_CHARS + 1), 400, "message_too_long", id="max-chars+1"),
    # Characters, not bytes: 4-byte emoji count one each.
    pytest.param("\U0001F600" * L.MAX_MESSAGE_CHARS, 200, None, id="max-emoji"),
    pytest.param("\U0001F600" * (L.MAX_MESSAGE_CHARS + 1), 400, "message_too_long", id="max-emoji+1"),
    pytest.param("", 400, "invalid_request", id="empty"),
    pytest.param(" ", 400, "invalid_request", id="one-space"),
    pytest.param("\n\t \r\n", 400, "invalid_request", id="whitespace"),
    pytest.param(" " * (L.MAX_MESSAGE_CHARS + 1), 400, None, id="long-whitespace"),
])
def test_message_length_bounds(client: TestClient, runtime: Runtime, fake: FakeEngine, text: str, status: int,
                               code: str | None) -> None:
    r = client.post(A, json={"message": text})
    if status == 200:
        assert r.status_code == 200, r.text
        assert fake.calls[-1].messages[-1]["content"] == text
    else:
        assert_api_error(r, status, code)
        assert fake.calls == [] and runtime.store.list()[1] == 0


@pytest.mark.parametrize("extra,status", [
    pytest.param(0, 200, id="max-chars"),
    pytest.param(1, 400, id="max-chars+1"),
])
def test_system_length_bound(client: TestClient, fake: FakeEngine, extra: int, status: int) -> None:
    system = "s" * (L.MAX_SYSTEM_CHARS + extra)
    r = client.post(A, json={"message": "hi", "system": system})
    if status == 200:
        assert r.status_code == 200, r.text
        assert fake.calls[-1].messages[0] == {"role": "system", "content": system}
    else:
        err = assert_api_error(r, 400, "message_too_long")
        assert "system" in err["message"]


@pytest.mark.parametrize("length,status,code", [
    pytest.param(L.MAX_ID_CHARS, 404, "conversation_not_found", id="max-chars-unknown"),
    pytest.param(L.MAX_ID_CHARS + 1, 400, "invalid_request", id="max-chars+1"),
])
def test_conversation_id_length_bound(client: TestClient, length: int, status: int, code: str) -> None:
    assert_api_error(client.post(A, json={"message": "hi", "conversation_id": "a" * length}), status, code)


@pytest.mark.parametrize("count,status", [
    pytest.param(L.MAX_MESSAGES, 200, id="max-messages"),
    pytest.param(L.MAX_MESSAGES + 1, 400, id="max-messages+1"),
])
def test_openai_message_count_bound(client: TestClient, fake: FakeEngine, count: int, status: int) -> None:
    r = client.post(V, json={"messages": [user(f"m{i}") for i in range(count)]})
    if status == 200:
        assert r.status_code == 200, r.text
        assert len(fake.calls[-1].messages) == count
    else:
        assert assert_openai_error(r, 400, "too_many_messages")["param"] == "messages"


def _conversation_of(total_chars: int) -> list[dict[str, str]]:
    """User messages of at most MAX_MESSAGE_CHARS each, `total_chars` in all."""
    sizes = [L.MAX_MESSAGE_CHARS] * (total_chars // L.MAX_MESSAGE_CHARS)
    if total_chars % L.MAX_MESSAGE_CHARS:
        sizes.append(total_chars % L.MAX_MESSAGE_CHARS)
    return [user("c" * n) for n in sizes]


@pytest.mark.parametrize("total,status", [
    pytest.param(L.MAX_CONVERSATION_CHARS, 200, id="max-chars"),
    pytest.param(L.MAX_CONVERSATION_CHARS + 1, 400, id="max-chars+1"),
])
def test_openai_conversation_length_bound(client: TestClient, fake: FakeEngine, total: int, status: int) -> None:
    messages = _conversation_of(total)
    r = client.post(V, json={"messages": messages})
    if status == 200:
        assert r.status_code == 200, r.text
        assert sum(len(m["content"]) for m in fake.calls[-1].messages) == total
    else:
        assert_openai_error(r, 400, "conversation_too_long")


@pytest.mark.parametrize("route,prefix", [(A, API_OVER), (V, V1_OVER)])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_size_bound(client: TestClient, route: str, prefix: bytes, chunked: bool) -> None:
    headers = {"content-type": "application/json"}
    at_limit = _padded(prefix, MIB)
    assert len(at_limit) == MIB
    r = client.post(route, content=_chunks(at_limit)() if chunked else at_limit, headers=headers)
    assert r.status_code == 200, r.text[:300]  # valid JSON, exactly at the limit
    over = _padded(prefix, MIB + 1)
    r = client.post(route, content=_chunks(over)() if chunked else over, headers=headers)
    assert_error(r, route, 413, "body_too_large")


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
    BadFrame("deep-nesting", lambda: '{"type": "ping", "x": ' + _deep(5000).decode() + "}", "invalid_json"),
    BadFrame("over-frame-limit", lambda: _padded(b'{"type": "ping"', L.MAX_WS_FRAME_BYTES + 1).decode(),
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
    BadFrame("chat-message-too-long", lambda: json.dumps({"type": "chat", "message": "x" * (L.MAX_MESSAGE_CHARS + 1)}),
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
    t0 = time.monotonic()
    ws.send({"type": "stop"})
    done, tokens = ws.until("done")
    assert time.monotonic() - t0 < 1.0, "stop must end the generation within about one token"
    assert done["finish_reason"] == "cancelled"
    assert 1 <= done["usage"]["completionTokens"] < SLOW_TOKENS
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
    deadline = time.monotonic() + 2.0
    while len(runtime.store.messages(cid)) < 2 and time.monotonic() < deadline:
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
