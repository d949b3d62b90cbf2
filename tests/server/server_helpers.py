"""Helpers shared by the server's error-path tests (`tests/server/`): request builders,
assertions on our and OpenAI's error shapes, SSE parsing and a WebSocket reader that times out.

Plain functions and constants, imported by name (`from server_helpers import ...`); the
fixtures built on them are in `conftest.py` next to this file. (A conftest module cannot
be imported by name reliably: pytest loads every folder's conftest as `conftest`.)
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from starlette.testclient import TestClient

from nanochat_lite.server.guards.security import SecurityConfig
from nanochat_lite.server.wire import limits as L

WS_TIMEOUT_S = 5.0  # seconds to wait for one WebSocket frame before failing the test
OPENAI_ERROR_TYPES = {"invalid_request_error", "not_found_error", "server_error"}
MIB = L.MAX_BODY_BYTES
# TestClient sends Host: testserver, which the server's Host check would refuse (421).
TEST_SECURITY = SecurityConfig(allowed_hosts=("testserver",))


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
        # An answer's events have an `id: <seq>` line first; `: progress` is a comment.
        lines = [line for line in block.split("\n") if line and not line.startswith((":", "id: "))]
        if not lines:
            continue
        assert len(lines) == 1 and lines[0].startswith("data: "), f"not an SSE data block: {block!r}"
        data = lines[0][len("data: "):]
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


# -- request builders used by several files ---------------------------------------


A, V = "/api/chat", "/v1/chat/completions"
OK_MESSAGES = [user("hi")]


def padded(prefix: bytes, size: int) -> bytes:
    """A JSON object of exactly `size` bytes: `prefix` (ending before the final "}")
    padded with spaces, which JSON allows between tokens."""
    return prefix + b" " * (size - len(prefix) - 1) + b"}"


def chunks(data: bytes, n: int = 64 * 1024) -> Callable[[], Iterator[bytes]]:
    """A body sent chunked, without Content-Length."""
    def gen() -> Iterator[bytes]:
        for i in range(0, len(data), n):
            yield data[i:i + n]
    return gen


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


API_OVER = b'{"message": "hi"'
V1_OVER = b'{"messages": [{"role": "user", "content": "hi"}]'
