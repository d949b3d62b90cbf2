"""Load limits in front of the app: connection and WebSocket caps, header and body
read timeouts, generations per client.

Two pieces, both installed by `serve` (commands/boot.py), with the limits of
`limits_config.NetLimits`:

- `limited_h11_protocol(...)`: uvicorn's h11 protocol with a connection cap and read
  timeouts. uvicorn bounds the idle time *between* requests (keep-alive) but not the
  time a client takes to send one, so a client sending 1 byte a second holds a
  connection forever (slow loris). Here a request's headers must arrive within
  `header_timeout_s` of its first byte (or of the connection opening), and its body
  within `body_timeout_s` of its headers; else the client gets 408 and the connection
  closes. A connection past `max_connections` open ones gets 503 at once.
- `ConnLimitsMiddleware`: a pure ASGI middleware outside the app (and outside the
  security middleware, so a refusal here costs no work). It refuses a WebSocket
  handshake past `max_websockets` open ones (before accept: the client sees 403) and
  a generation request past `max_client_generations` running or queued for the same
  client (429 `too_many_generations`). A client is its API key's name, else its IP
  address.

Answers are JSON in the project's shape on `/api`, OpenAI's on `/v1`. Every refusal
is counted in `/metrics` (`nanochat_requests_refused_total{status, code}`).

A WebSocket runs one generation at a time and may run many; its door calls
`begin_generation(scope)` / `end_generation(scope)` around each one.

Not here: the queue cap and the queue-wait deadline (the scheduler's), daily token
quotas (quotas.py: a reservation per request once its prompt is built, in the store),
rate limits per second, HTTP/2 (uvicorn serves HTTP/1.1).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
import msgspec
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ...limits_config import NetLimits
from ..wire.errors import RETRY_BUSY_S, RequestError, api_body, openai_body
from .security import KeyIdentifier, SecurityConfig, add_security_headers

# Generation routes, with llama-server's unprefixed aliases (rewritten inside the app).
GENERATION_PATHS = frozenset({"/api/chat", "/v1/chat/completions", "/v1/completions", "/chat/completions",
                              "/completions"})
OPENAI_PREFIXES = ("/v1/", "/chat/", "/completions")
STATE_KEY = "nanochat_client"  # scope["state"] entry: the WebSocket's _Client
WS_TRY_AGAIN_LATER = 1013  # close code: the server is overloaded
# Seconds a refused connection stays half-open after its 408/503, its input thrown
# away: closing at once while the client is still sending makes the kernel reset the
# connection, and the reset can destroy the answer before the client reads it.
LINGER_S = 1.0
OnRefused = Callable[[int, str], None]  # (status, code) -> count it


# -- generations per client --------------------------------------------------------------------
class ClientGate:
    """Generations in progress per client; `limit` 0 means no limit.

    gate = ClientGate(2); gate.try_acquire("alice") -> True (twice), then False until
    gate.release("alice").
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: Counter[str] = Counter()

    def try_acquire(self, client: str) -> bool:
        if self.limit and self._held[client] >= self.limit:
            return False
        self._held[client] += 1
        return True

    def release(self, client: str) -> None:
        self._held[client] -= 1
        if self._held[client] <= 0:
            del self._held[client]

    def held(self, client: str) -> int:
        return self._held.get(client, 0)


@dataclass
class _Client:
    """Who a request is, and what it may do (kept in the WebSocket's scope state)."""

    id: str  # "key:alice" or "ip:127.0.0.1"
    key_name: str | None
    limits: "ConnLimitsMiddleware"

    def refusal(self) -> tuple[int, str, str] | None:
        """(status, code, message) when this client may not start a generation now."""
        gate = self.limits.gate
        if gate.limit and gate.held(self.id) >= gate.limit:
            who = f"the API key {self.key_name!r}" if self.key_name else f"the address {self.id[3:]}"
            return 429, "too_many_generations", (
                f"{who} already has {gate.limit} generations queued or running (the limit per client); "
                "wait for one to finish")
        return None


def begin_generation(scope: Scope) -> tuple[str, str] | None:
    """For a WebSocket door, before each generation: None when it may start (then call
    `end_generation` when it ends), else (code, message) for an error frame."""
    client: _Client | None = (scope.get("state") or {}).get(STATE_KEY)
    if client is None:
        return None
    refused = client.refusal()
    if refused is not None:
        client.limits.count_refused(refused[0], refused[1])
        return refused[1], refused[2]
    client.limits.gate.try_acquire(client.id)
    return None


def end_generation(scope: Scope) -> None:
    client: _Client | None = (scope.get("state") or {}).get(STATE_KEY)
    if client is not None:
        client.limits.gate.release(client.id)


# -- the middleware ----------------------------------------------------------------------------
def refusal_body(path: str, status: int, code: str, message: str) -> bytes:
    """The JSON of a refusal: OpenAI's error shape under /v1 (and its aliases), ours elsewhere."""
    e = RequestError(message, code=code, status=status)
    return msgspec.json.encode(openai_body(e) if path.startswith(OPENAI_PREFIXES) else api_body(e))


class ConnLimitsMiddleware:
    """WebSocket cap and generations per client (see the module doc); tokens are counted
    in the store (quotas.py)."""

    def __init__(self, app: ASGIApp, limits: NetLimits, *, security: SecurityConfig | None = None,
                 on_refused: OnRefused | None = None) -> None:
        self.app = app
        self.limits = limits
        self.gate = ClientGate(limits.max_client_generations)
        self.keys = KeyIdentifier(security.keys if security is not None else {})
        self.on_refused = on_refused
        self.websockets = 0  # open now

    def count_refused(self, status: int, code: str) -> None:
        if self.on_refused is not None:
            self.on_refused(status, code)

    def _client(self, scope: Scope) -> _Client:
        name = self.keys.identify(scope)
        if name is not None:
            return _Client(f"key:{name}", name, self)
        peer = scope.get("client")
        return _Client(f"ip:{peer[0] if peer else '-'}", None, self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http" and scope.get("method") == "POST" and scope.get("path") in GENERATION_PATHS:
            await self._generation(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _generation(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = self._client(scope)
        refused = client.refusal()
        if refused is not None:
            status, code, message = refused
            self.count_refused(status, code)
            headers = {"Retry-After": str(RETRY_BUSY_S)} if code == "too_many_generations" else {}
            await _answer(send, scope.get("path", ""), status, code, message, headers)
            return
        self.gate.try_acquire(client.id)
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.release(client.id)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = self._client(scope)
        cap = self.limits.max_websockets
        why: tuple[str, str] | None = None
        if cap and self.websockets >= cap:
            why = "too_many_websockets", f"{cap} WebSockets are open (the limit); retry later"
        if why is not None:
            self.count_refused(403, why[0])
            # Refused before accept: uvicorn answers the handshake with 403.
            if (await receive())["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": WS_TRY_AGAIN_LATER,
                            "reason": f"{why[0]}: {why[1]}".encode()[:123].decode("utf-8", "ignore")})
            return
        self.websockets += 1
        scope = {**scope, "state": {**(scope.get("state") or {}), STATE_KEY: client}}
        try:
            await self.app(scope, receive, send)
        finally:
            self.websockets -= 1


async def _answer(send: Send, path: str, status: int, code: str, message: str,
                  extra: dict[str, str] | None = None) -> None:
    body = refusal_body(path, status, code, message)
    start: Message = {"type": "http.response.start", "status": status,
                      "headers": [(b"content-type", b"application/json"),
                                  (b"content-length", str(len(body)).encode())]}
    headers = MutableHeaders(scope=start)
    add_security_headers(headers, path)
    for k, v in (extra or {}).items():
        headers[k] = v
    await send(start)
    await send({"type": "http.response.body", "body": body})


# -- the HTTP protocol: connection cap and read timeouts ----------------------------------------
def _raw_response(status: int, reason: str, path: str, code: str, message: str) -> bytes:
    body = refusal_body(path, status, code, message)
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\nx-content-type-options: nosniff\r\ncache-control: no-store\r\n")
    if status == 503:
        head += f"retry-after: {RETRY_BUSY_S}\r\n"
    return head.encode("ascii") + b"\r\n" + body


def limited_h11_protocol(limits: NetLimits, on_refused: OnRefused | None = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with `limits`' connection cap and read timeouts
    (pass it as `uvicorn.Config(http=...)`).

    Longer than 80 lines on purpose: it is one class, built here so that its methods close
    over `limits` and `on_refused`; each method is short and overrides one of h11's."""

    def refused(status: int, code: str) -> None:
        if on_refused is not None:
            on_refused(status, code)

    class LimitedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _timer_kind: str | None = None  # "headers" | "body"

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            cap = limits.max_connections
            if cap and len(self.connections) > cap:  # this one included; WebSockets count too
                refused(503, "too_many_connections")
                self._answer_and_close(_raw_response(503, "Service Unavailable", "", "too_many_connections",
                                                     f"{cap} connections are open (the limit); retry later"))
                return
            self._arm("headers")  # a connection that sends nothing is closed too

        _refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # answered and closing: throw the rest away
            super().data_received(data)
            self._follow()

        def _answer_and_close(self, raw: bytes | None) -> None:
            """Send `raw` (if any), end our side, close after LINGER_S (see there)."""
            self._refused = True
            self._disarm()
            if raw:
                self.transport.write(raw)
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.loop.call_later(LINGER_S, self.transport.close)
            else:
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        # -- timers ---------------------------------------------------------------------------
        def _follow(self) -> None:
            """Arm, switch or cancel the read timer for where the request now is."""
            if self.transport.is_closing() or self.transport.get_protocol() is not self:  # closed, or a WebSocket
                self._disarm()
                return
            state = self.conn.their_state
            if state is h11.IDLE:
                # Part of the next request's headers is here: they have a deadline.
                # Nothing yet: uvicorn's keep-alive timeout closes an idle connection.
                if self._timer_kind != "headers" and self.conn.trailing_data[0]:
                    self._arm("headers")
            elif state is h11.SEND_BODY:
                if self._timer_kind != "body":
                    self._arm("body")
            else:
                self._disarm()

        def _arm(self, kind: str) -> None:
            self._disarm()
            seconds = limits.header_timeout_s if kind == "headers" else limits.body_timeout_s
            if seconds:
                self._timer = self.loop.call_later(seconds, self._expired, kind)
                self._timer_kind = kind

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_kind = None, None

        def _expired(self, kind: str) -> None:
            self._timer, self._timer_kind = None, None
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return
            state = self.conn.their_state
            raw: bytes | None = None
            if kind == "headers" and state is h11.IDLE:
                if not self.conn.trailing_data[0]:
                    refused(408, "idle_timeout")  # connected, sent nothing: close quietly
                else:
                    refused(408, "header_timeout")
                    raw = _raw_response(408, "Request Timeout", "", "header_timeout",
                                        f"the request's headers did not arrive within {limits.header_timeout_s:g} s")
            elif kind == "body" and state is h11.SEND_BODY:
                refused(408, "body_timeout")
                if self.cycle is None or not self.cycle.response_started:
                    path = (getattr(self, "scope", None) or {}).get("path", "")
                    raw = _raw_response(408, "Request Timeout", path, "body_timeout",
                                        f"the request's body did not arrive within {limits.body_timeout_s:g} s")
            else:
                return
            # The app (if it is reading the body) sees a disconnect when the connection closes.
            self._answer_and_close(raw)

    return LimitedH11Protocol


def uvicorn_options(limits: NetLimits, on_refused: OnRefused | None = None) -> dict[str, Any]:
    """Keyword arguments for uvicorn.Config that apply `limits`."""
    return {"http": limited_h11_protocol(limits, on_refused)}
