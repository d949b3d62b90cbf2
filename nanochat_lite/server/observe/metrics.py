"""Observability: request counters, an access log with request ids, and `GET /metrics`.

`MetricsMiddleware` is a pure ASGI middleware inside the security middleware (so it
sees the API key's name, and the refusals of the security middleware are not
counted here). For every HTTP request and WebSocket connection it:

- gives it a request id: the client's `X-Request-Id` if it is a short token
  (`[A-Za-z0-9._:-]{1,64}`, what proxies send), a fresh random one otherwise, and
  returns it in the `X-Request-Id` header;
- counts it by route template (`/api/conversations/{cid}`, never the raw path, so a
  scan of random URLs adds one series, `unmatched`), method, status and, when API
  keys are configured, key name; and times it (a histogram per route template);
- writes one line on the `nanochat_lite.access` logger at INFO, e.g.
  `request_id=5f0c9a1e2b3d4c5e client=127.0.0.1 method=POST path=/api/chat status=200 duration_ms=41.7 key=alice`
  Fields a client chooses (path, method) are escaped: a CR, LF or any other
  non-printable character becomes `\\r`, `\\n`, `\\x1b`…, so a request cannot forge
  a log line. The query string is not logged (it holds search text).

`/metrics` renders these counters with the runtime's (`Stats`, `Runtime.engine_info`)
in Prometheus's text exposition format, version 0.0.4:
https://prometheus.io/docs/instrumenting/exposition_formats/

Requests refused before they reach this middleware — by the security middleware
(400/401/403/421), the load limits (connlimits.py: 408, 429, 503) — are counted by
`count_refused` and rendered as `nanochat_requests_refused_total{status, code}`, with
those refused inside a route before anything was stored (`quota_exceeded`: Stats).
Tokens per API key name come from the store (quotas.py: per owner and UTC day).

With API keys, what a key sees of other keys follows its role: an admin key sees every
key's series; another key only its own (`key` labels of other names are left out), so
a scraper that wants them all needs an admin key.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import IO, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..guards.quotas import key_table
from ..guards.security import identity
from ..wire.errors import RequestError, api_error
from .stats import Histogram, peak_rss_bytes, rss_bytes

log = logging.getLogger("nanochat_lite.access")

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
UNMATCHED_ROUTE = "unmatched"  # 404s and slash redirects: one series, whatever the path
# Seconds; from a health check (~1 ms) to a long streamed answer.
HTTP_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "nanochat_"


# -- counting --------------------------------------------------------------------------------
class Metrics:
    """Request counts and durations since start-up. Touched only on the event loop."""

    def __init__(self, *, keys_configured: bool = False) -> None:
        self.keys_configured = keys_configured
        self.requests: Counter[tuple[str, str, int, str]] = Counter()  # (route, method, status, key)
        self.durations: dict[str, Histogram] = {}  # route -> seconds
        self.in_flight = 0
        self.refused: Counter[tuple[int, str]] = Counter()  # (status, code), refused before any route

    def count_refused(self, status: int, code: str) -> None:
        """A request or connection refused in front of the app (security, load limits)."""
        self.refused[(status, code)] += 1

    def record(self, route: str, method: str, status: int, key: str, seconds: float) -> None:
        self.requests[(route, method, status, key if self.keys_configured else "")] += 1
        hist = self.durations.get(route)
        if hist is None:
            hist = self.durations[route] = Histogram(HTTP_BUCKETS_S)
        hist.observe(seconds)


def route_label(scope: Scope) -> str:
    """The template of the route that answered: '/api/conversations/{cid}', or 'unmatched'."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED_ROUTE
    return path + "/{path}" if isinstance(route, Mount) else path  # a Mount: the static files


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if REQUEST_ID_RE.fullmatch(text):
                return text
            break
    return os.urandom(8).hex()


class MetricsMiddleware:
    """Request id, counters and the access log line for HTTP and WebSocket scopes."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = _request_id(scope)
        rid_header = (b"x-request-id", rid.encode("ascii"))
        status: list[int] = []  # set by the first answer message

        async def wrapped(message: Message) -> None:
            t = message["type"]
            if not status:
                if t in ("http.response.start", "websocket.http.response.start"):
                    status.append(message["status"])
                    message = {**message, "headers": [*message.get("headers", ()), rid_header]}
                elif t == "websocket.accept":
                    status.append(101)
                    message = {**message, "headers": [*message.get("headers", ()), rid_header]}
                elif t == "websocket.close":
                    status.append(403)  # closed before accept: the server answers the handshake 403
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, wrapped)
        finally:
            self.metrics.in_flight -= 1
            # No answer at all: the app raised or returned early, and the server sends
            # 500 (HTTP) or refuses the handshake with 403 (WebSocket).
            code = status[0] if status else (500 if kind == "http" else 403)
            seconds = time.perf_counter() - t0
            method = scope.get("method", "GET") if kind == "http" else "WEBSOCKET"
            key = (scope.get("state") or {}).get("api_key_name") or ""
            self.metrics.record(route_label(scope), method, code, key, seconds)
            if log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                log.info(access_line(rid, client[0] if client else "-", method, scope.get("path", ""), code,
                                     seconds * 1000.0, key),
                         extra={"request_id": rid, "status": code, "api_key_name": key})


# -- the access log --------------------------------------------------------------------------
def escape_field(value: str) -> str:
    """A log field that cannot break or forge a line.

    escape_field('/api/chat') -> '/api/chat'
    escape_field('/a\\r\\nstatus=200') -> '"/a\\\\r\\\\nstatus=200"'   (quoted: it holds '=')
    escape_field('') -> '""'
    """
    if value and value.isprintable() and not any(c in value for c in ' "=\\'):
        return value
    out = []
    for c in value:
        if c == "\\" or c == '"':
            out.append("\\" + c)
        elif c in "\r\n\t":
            out.append({"\r": "\\r", "\n": "\\n", "\t": "\\t"}[c])
        elif not c.isprintable():  # C0/C1 controls, U+2028, bidi overrides, lone surrogates
            n = ord(c)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def access_line(request_id: str, client: str, method: str, path: str, status: int, duration_ms: float,
                key: str) -> str:
    """access_line('ab12', '127.0.0.1', 'GET', '/api/health', 200, 1.234, '') ->
    'request_id=ab12 client=127.0.0.1 method=GET path=/api/health status=200 duration_ms=1.23 key=-'"""
    return (f"request_id={request_id} client={escape_field(client)} method={escape_field(method)} "
            f"path={escape_field(path)} status={status} duration_ms={duration_ms:.2f} "
            f"key={escape_field(key) if key else '-'}")


def enable_access_log(stream: IO[str] | None = None) -> None:
    """Write the access log (INFO) to `stream` (stderr by default), one line per request.
    Idempotent. `serve` calls it; in-process apps stay quiet unless a caller does."""
    if any(getattr(h, "_nanochat_access", False) for h in log.handlers):
        return
    handler: logging.Handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    setattr(handler, "_nanochat_access", True)  # marks ours, for the check above
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the root logger's handlers (if any) would print it twice


# -- the exposition format -------------------------------------------------------------------
def _value(v: float | int | None) -> str:
    if v is None:
        return "NaN"
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return "NaN" if math.isnan(v) else repr(float(v))


def _label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Sequence[tuple[str, str]]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in labels) + "}"


class _Exposition:
    """Lines of the text format: each family's HELP and TYPE, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> str:
        name = PREFIX + name if not name.startswith("process_") else name
        self.lines.append(f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        self.lines.append(f"# TYPE {name} {kind}")
        return name

    def sample(self, name: str, value: float | int | None, labels: Sequence[tuple[str, str]] = ()) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_value(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float | int | None,
            labels: Sequence[tuple[str, str]] = ()) -> None:
        self.sample(self.family(name, kind, help_text), value, labels)

    def histogram(self, name: str, help_text: str,
                  series: Iterable[tuple[Sequence[tuple[str, str]], Histogram]]) -> None:
        name = self.family(name, "histogram", help_text)
        for labels, hist in series:
            for bound, count in hist.cumulative():
                self.sample(name + "_bucket", count, [*labels, ("le", _value(bound))])
            self.sample(name + "_sum", hist.sum, labels)
            self.sample(name + "_count", hist.count, labels)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(runtime: Any, metrics: Metrics, keys: dict[str, dict[str, Any]] | None = None,
           only: str | None = None) -> str:
    """The whole `/metrics` page; `keys` is quotas.key_table's when API keys are set, and
    `only` the key whose series alone are shown (a key that is not an admin)."""
    out = _Exposition()
    stats = runtime.stats
    info = runtime.engine_info()

    name = out.family("http_requests_total", "counter",
                      "HTTP requests and WebSocket connections answered, by route template, method and status"
                      + (" and API key name" if metrics.keys_configured else ""))
    for (route, method, status, key), n in sorted(metrics.requests.items()):
        if only is not None and key != only:
            continue
        labels = [("route", route), ("method", method), ("status", str(status))]
        if metrics.keys_configured:
            labels.append(("key", key))
        out.sample(name, n, labels)
    out.histogram("http_request_duration_seconds",
                  "Time from receiving a request to the end of its answer (a stream's last byte), by route",
                  (([("route", r)], h) for r, h in sorted(metrics.durations.items())))
    out.one("http_requests_in_flight", "gauge", "HTTP requests and WebSocket connections open now",
            metrics.in_flight)
    name = out.family("requests_refused_total", "counter",
                      "Requests and connections refused before reaching a route (bad Host, foreign Origin, "
                      "missing or wrong API key, read timeouts, connection and per-client caps, quotas), "
                      "by status and code")
    for (status, code), n in sorted((metrics.refused + stats.refused).items()):
        out.sample(name, n, [("status", str(status)), ("code", code)])
    if keys is not None:
        snap = keys
        name = out.family("key_requests_total", "counter", "HTTP requests and WebSockets per API key name")
        for key, row in snap.items():
            out.sample(name, row["requests"], [("key", key), ("kind", "http")])
            out.sample(name, row["websockets"], [("key", key), ("kind", "websocket")])
        name = out.family("key_tokens_total", "counter", "Prompt and completion tokens per API key name")
        for key, row in snap.items():
            out.sample(name, row["prompt_tokens"], [("key", key), ("kind", "prompt")])
            out.sample(name, row["completion_tokens"], [("key", key), ("kind", "completion")])
        name = out.family("key_tokens_today", "gauge", "Tokens per API key name since midnight UTC")
        for key, row in snap.items():
            out.sample(name, row["tokens_today"], [("key", key)])
        name = out.family("key_daily_token_quota", "gauge", "Daily token quota per API key name (keys with one)")
        for key, row in snap.items():
            if row["daily_token_quota"] is not None:
                out.sample(name, row["daily_token_quota"], [("key", key)])

    out.one("generations_total", "counter", "Generations started (chat turns and completions)",
            stats.requests_total)
    out.one("generations_failed_total", "counter", "Generations that ended in an engine error", stats.requests_failed)
    out.one("generations_cancelled_total", "counter", "Generations stopped by the client or a disconnect",
            stats.requests_cancelled)
    out.one("generations_active", "gauge", "Generations queued or running now", stats.active)
    out.one("requests_rejected_total", "counter", "Requests refused because the generation queue was full",
            stats.rejected, [("reason", "queue_full")])
    out.one("prompt_tokens_total", "counter", "Prompt tokens of finished generations", stats.tokens_in)
    out.one("prompt_tokens_cached_total", "counter", "Prompt tokens served from a slot's cache", stats.tokens_cached)
    out.one("completion_tokens_total", "counter", "Tokens generated", stats.tokens_out)
    out.histogram("time_to_first_token_seconds", "Time to the first generated token", [((), stats.ttft_hist)])
    out.histogram("generation_duration_seconds", "Time of a whole generation, queue wait included",
                  [((), stats.latency_hist)])

    out.one("queue_length", "gauge", "Generations waiting for a slot", runtime.queued)
    out.one("queue_capacity", "gauge", "Generations the queue holds before refusing more", info.get("max_queue"))
    out.one("slots", "gauge", "Parallel generation slots", info.get("slots"))
    out.one("slots_in_use", "gauge", "Slots generating now", runtime.generating)
    out.one("model_info", "gauge", "The served model and its state (loading, ready or error)", 1,
            [("model", str(runtime.model_name)), ("state", str(runtime.state))])

    out.one("process_resident_memory_bytes", "gauge", "Resident memory size in bytes", rss_bytes())
    out.one("process_peak_resident_memory_bytes", "gauge", "Peak resident memory size in bytes", peak_rss_bytes())
    out.one("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch in seconds",
            stats.started)
    return out.text()


async def metrics_endpoint(request: Request) -> Response:
    """`GET /metrics`: Prometheus's text format (needs the API key when keys are set)."""
    runtime = request.app.state.runtime
    usage = getattr(request.app.state, "key_usage", None)
    keys, only = None, None
    if usage is not None:
        who = identity(request)
        only = None if who.admin else who.owner
        try:
            rows = await runtime.ledger.usage(only)
        except RequestError as e:
            return api_error(e)
        keys = key_table(rows, usage.snapshot(), request.app.state.security.daily_token_quotas, only=only)
    return Response(render(runtime, request.app.state.metrics, keys, only), media_type=CONTENT_TYPE)
