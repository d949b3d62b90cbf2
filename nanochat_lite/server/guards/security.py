"""Who may talk to the server: Host and Origin checks, optional CORS, optional API keys,
and the headers every answer carries.

One pure ASGI middleware sits in front of the whole Starlette app, so the same rules
cover HTTP and WebSocket scopes, and a refused request never reaches a route: nothing
is stored, nothing is generated. It checks, in this order:

1. Host. Answered only for loopback names, IP literals, the `--host` and each
   `--allowed-host` (421 otherwise). This is what defeats DNS rebinding: a page on
   `rebind.evil.example` whose name later resolves to 127.0.0.1 still sends
   `Host: rebind.evil.example`. An IP literal cannot be rebound (the page's origin
   would then be that IP, i.e. this server), so any IP literal is accepted and a
   `--host 0.0.0.0` server can be reached by its LAN address without a flag.
2. CORS preflight (`OPTIONS` with `Access-Control-Request-Method`): answered for the
   `--cors-origin` origins, refused (403) for any other. None by default.
3. Origin. POST/PUT/PATCH/DELETE and WebSocket handshakes sent by a page of another
   origin (`Origin` not this server's, or `Sec-Fetch-Site: cross-site`) get 403
   unless that origin is a `--cors-origin`. A request with no `Origin` (curl, the
   openai client, scripts) passes: browsers always send one on these requests.
4. API key, when any is configured: `/api/*` except `/api/health`, `/v1/*`, `/ws` and
   `/metrics` need `Authorization: Bearer KEY` or `X-Api-Key: KEY`; a WebSocket may
   also offer it as the subprotocol `bearer.KEY` (browsers cannot set headers on a
   WebSocket). 401 in the project's error shape, or OpenAI's on `/v1`. The page,
   its static files and `/health` stay public. The key's name goes into
   `scope["state"]["api_key_name"]` (`request.state.api_key_name`), who the request
   is into `scope["state"]["identity"]` (`identity(conn)`: the owner of what it stores
   and reads, whether it is an admin, its daily token quota), and `KeyUsage` counts
   requests per name (tokens per owner are in the store: quotas.py).

Owners: a key's name owns what its requests store; without keys everything belongs to
`local` (history.LOCAL_OWNER), whose requests are admins (whoever reaches a keyless
server reaches all of it anyway).

Every HTTP answer gets `X-Content-Type-Options: nosniff` and `Referrer-Policy:
no-referrer`; API answers get `Cache-Control: no-store`.

Refusals are counted in `/metrics` (`Metrics.count_refused`, found through
`scope["app"]`, which Starlette sets before its middleware runs).

Not here: TLS (a reverse proxy's job); queue caps, connection caps, read timeouts and
per-client caps (connlimits.py, in front of this middleware); daily token quotas
(quotas.py: reserved when a generation is admitted);
cookies or sessions (there are none: the key travels with each request, so a
cross-site request has no ambient credential to ride on).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...security_config import (
    DEFAULT_PORTS,
    ENV_API_KEY,
    KEY_RE,
    MAX_KEY_CHARS,
    SecurityConfig,
    add_flags,
    parse_keys,
    parse_origin,
    split_authority,
)
from ...history import LOCAL_OWNER
from ..wire.errors import RequestError, api_body, is_openai_path, openai_body

__all__ = ["ENV_API_KEY", "Identity", "KeyIdentifier", "KeyUsage", "SecurityConfig", "SecurityMiddleware",
           "add_flags", "add_security_headers", "identity", "key_name", "needs_key", "parse_keys"]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PUBLIC_PATHS = frozenset({"/api/health", "/health"})
KEY_PATHS = frozenset({"/api", "/v1", "/ws", "/metrics"})  # and everything below /api/ and /v1/
NO_STORE_PREFIXES = ("/api/", "/v1/")
NO_STORE_PATHS = frozenset({"/api", "/v1", "/health", "/metrics"})
WS_SUBPROTOCOL = "nanochat-lite"  # what the page offers beside its key, and gets back
WS_KEY_PREFIX = "bearer."
CORS_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
CORS_DEFAULT_HEADERS = "Authorization, Content-Type, X-Api-Key"
CORS_MAX_AGE_S = 600
MAX_HEADER_ECHO_CHARS = 100  # of a refused Host or Origin, quoted back in the error message
WS_REFUSED_CLOSE_CODE = 1008  # policy violation
WS_MAX_REASON_BYTES = 123  # a close frame's reason is at most 123 bytes


# -- parsing what the client sent ------------------------------------------------------------
def _header_dict(scope: Scope) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        out.setdefault(raw_name.decode("latin-1").lower(), []).append(raw_value.decode("latin-1"))
    return out


def _digest(key: str) -> bytes:
    # Keys are compared as SHA-256 digests: equal length, so compare_digest's time
    # does not depend on how long the presented or the stored key is.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _quote(value: str) -> str:
    return repr(value[:MAX_HEADER_ECHO_CHARS] + ("…" if len(value) > MAX_HEADER_ECHO_CHARS else ""))


# -- who a request is ------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """Who a request is. `owner` owns what it stores and is the only owner whose rows it
    reads (history.Store's `owner=`); an `admin` may also read other owners' (`?owner=`)
    and see every key's usage; `daily_quota`: its tokens per UTC day (None: no limit)."""

    owner: str = LOCAL_OWNER
    admin: bool = True  # the defaults: a server without keys, where 'local' is everyone
    daily_quota: int | None = None
    keyed: bool = False  # the server has API keys (the page shows who you are then)

    def can_read(self, owner: str | None) -> bool:
        """May this identity read `owner`'s rows (None: every owner's)?"""
        return self.admin or owner == self.owner


NO_KEY_IDENTITY = Identity()  # a server without keys: 'local', and everyone is it
# With keys, a request on a public path (no key needed) is nobody: no admin, and an
# owner the store refuses (ValueError), so a public route that reached for rows would
# fail closed instead of reading anyone's.
ANONYMOUS = Identity(owner="", admin=False, keyed=True)


def identity(conn: HTTPConnection) -> Identity:
    """Who this request is (`SecurityMiddleware` sets it on every request it lets through)."""
    found = (conn.scope.get("state") or {}).get("identity")
    return found if isinstance(found, Identity) else NO_KEY_IDENTITY


# -- usage per key ---------------------------------------------------------------------------
class KeyUsage:
    """Requests (HTTP) and WebSocket connections per key name, since start-up.

    Counted where the key is checked, so it includes refused-later requests (a 400
    for a bad body still used the key). Tokens are counted per owner and day in the
    store (quotas.py), so that they survive restarts and replicas share them.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.requests: Counter[str] = Counter({n: 0 for n in names})
        self.websockets: Counter[str] = Counter({n: 0 for n in names})

    def count(self, name: str, *, websocket: bool) -> None:
        (self.websockets if websocket else self.requests)[name] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        """{"alice": {"requests": 12, "websockets": 1}, ...}"""
        names = sorted(set(self.requests) | set(self.websockets))
        return {n: {"requests": self.requests[n], "websockets": self.websockets[n]} for n in names}


class KeyIdentifier:
    """Finds which configured key a request presents, in constant time per key."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._digests = [(name, _digest(key)) for name, key in keys.items()]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def find(self, presented: str) -> str | None:
        """The name of the key `presented` is, or None."""
        digest = _digest(presented[:MAX_KEY_CHARS + 1])
        found = None
        for name, want in self._digests:  # every key, no early exit: constant time
            if hmac.compare_digest(digest, want) and found is None:
                found = name
        return found

    @staticmethod
    def presented(scope: Scope, headers: dict[str, list[str]]) -> tuple[str | None, str | None]:
        """(the key the request offers, the WebSocket subprotocol entry that carried it)."""
        auth = _one(headers, "authorization")
        if auth is not None:
            scheme, _, value = auth.strip().partition(" ")
            if scheme.lower() == "bearer":
                return value.strip(), None
        x_api_key = _one(headers, "x-api-key")
        if x_api_key is not None:
            return x_api_key.strip(), None
        if scope["type"] == "websocket":
            # Browsers cannot set headers on a WebSocket, so the page offers its key as a
            # subprotocol, "bearer.KEY". Not ?api_key=KEY: query strings end up in access
            # logs, proxy logs and browser history; this header is logged by nobody.
            for p in scope.get("subprotocols") or ():
                if p.startswith(WS_KEY_PREFIX):
                    return p[len(WS_KEY_PREFIX):], p
        return None, None

    def identify(self, scope: Scope) -> str | None:
        """The name of the valid key this request presents, or None (no refusal here)."""
        if not self._digests:
            return None
        presented, _ = self.presented(scope, _header_dict(scope))
        return self.find(presented) if presented is not None else None


# -- the middleware --------------------------------------------------------------------------
class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


def needs_key(path: str) -> bool:
    """needs_key('/api/chat') -> True; needs_key('/api/health') -> False; needs_key('/') -> False."""
    trimmed = path.rstrip("/") or "/"
    if trimmed in PUBLIC_PATHS:
        return False
    return trimmed in KEY_PATHS or path.startswith(("/api/", "/v1/"))


def add_security_headers(headers: MutableHeaders, path: str) -> None:
    """The headers every HTTP answer carries (a route's own values win, except that API
    answers are always no-store)."""
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if path.startswith(NO_STORE_PREFIXES) or path in NO_STORE_PATHS:
        headers["Cache-Control"] = "no-store"


class SecurityMiddleware:
    """Pure ASGI middleware applying a SecurityConfig to HTTP and WebSocket scopes."""

    def __init__(self, app: ASGIApp, config: SecurityConfig, usage: KeyUsage | None = None) -> None:
        self.app = app
        self.config = config
        self.usage = usage if usage is not None else KeyUsage(config.keys)
        self._keys = KeyIdentifier(config.keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        websocket = scope["type"] == "websocket"
        path: str = scope.get("path", "")
        headers = _header_dict(scope)
        origin = _one(headers, "origin")
        cors = self._cors_origin(origin)
        try:
            host = self._check_host(headers)
            if (not websocket and scope["method"] == "OPTIONS" and origin is not None
                    and "access-control-request-method" in headers):
                await self._preflight(scope, receive, send, cors, headers)
                return
            if websocket or scope["method"] in UNSAFE_METHODS:
                self._check_origin(origin, cors, host, _one(headers, "sec-fetch-site"))
            key_name, key_entry = self._check_key(scope, headers, path, websocket)
        except _Refused as r:
            await self._refuse(scope, receive, send, r, cors)
            return

        state = {**(scope.get("state") or {}), "identity": self._identity(key_name)}
        if key_name is not None:
            self.usage.count(key_name, websocket=websocket)
            state["api_key_name"] = key_name
        scope = {**scope, "state": state}
        if websocket:
            offered = list(scope.get("subprotocols") or ())
            # The route never sees the key among the subprotocols.
            scope = {**scope, "subprotocols": [p for p in offered if not p.startswith(WS_KEY_PREFIX)]}
            await self.app(scope, receive, self._ws_send(send, offered, key_entry))
        else:
            await self.app(scope, receive, self._http_send(send, path, cors))

    def _identity(self, key_name: str | None) -> Identity:
        if not self.config.keys:
            return NO_KEY_IDENTITY
        if key_name is None:
            return ANONYMOUS
        return Identity(owner=key_name, admin=key_name in self.config.admins,
                        daily_quota=self.config.daily_token_quotas.get(key_name), keyed=True)

    # -- the checks, in order ------------------------------------------------------------------
    def _check_host(self, headers: dict[str, list[str]]) -> str | None:
        values = headers.get("host", [])
        if not values:
            return None  # HTTP/1.0 without Host: not a browser, so not a rebinding page
        if len(values) > 1:
            raise _Refused(400, "bad_request", "more than one Host header")
        parsed = split_authority(values[0].strip())
        if parsed is None or not self.config.host_allowed(parsed[0]):
            raise _Refused(421, "host_not_allowed",
                           f"this server does not answer for Host {_quote(values[0])}. If that name is "
                           "yours (a reverse proxy, say), start the server with --allowed-host NAME")
        return values[0].strip()

    def _cors_origin(self, origin: str | None) -> str | None:
        """The Origin header if it is a configured CORS origin, else None."""
        if origin is None or not self.config.cors_origins:
            return None
        parsed = parse_origin(origin)
        return origin if parsed is not None and parsed.text in self.config.cors_origins else None

    def _is_own_origin(self, origin: str, host: str | None) -> bool:
        """Same origin as the request's Host (same name and port), or a page served under
        an --allowed-host name (a proxy may rewrite Host to the upstream address).

        The scheme is not compared: behind a TLS proxy the browser's https page reaches
        us as http, and nothing else can serve pages on our own host and port."""
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        if parsed.host in self.config.allowed_hosts and "*" not in self.config.allowed_hosts:
            return True
        authority = split_authority(host) if host is not None else None
        if authority is None or authority[0] != parsed.host:
            return False
        port = authority[1]
        # Host without a port: the browser used the scheme's default port.
        return parsed.port == (port if port is not None else DEFAULT_PORTS[parsed.scheme])

    def _check_origin(self, origin: str | None, cors: str | None, host: str | None,
                      fetch_site: str | None) -> None:
        if cors is not None:
            return
        if origin is not None and not self._is_own_origin(origin, host):
            raise _Refused(403, "origin_not_allowed",
                           f"requests from pages of origin {_quote(origin)} are not allowed. To let that "
                           "page use the API, start the server with --cors-origin ORIGIN")
        if fetch_site is not None and fetch_site.strip().lower() == "cross-site":
            raise _Refused(403, "origin_not_allowed",
                           "cross-site requests are not allowed (Sec-Fetch-Site: cross-site); "
                           "start the server with --cors-origin ORIGIN for a page that needs it")

    def _check_key(self, scope: Scope, headers: dict[str, list[str]], path: str,
                   websocket: bool) -> tuple[str | None, str | None]:
        """(key name, the subprotocol entry that carried the key) or _Refused(401)."""
        if not self._keys or not needs_key(path):
            return None, None
        presented, entry = self._keys.presented(scope, headers)
        if presented is None:
            raise _Refused(401, "unauthorized", "this server needs an API key: send Authorization: Bearer KEY "
                           "(or X-Api-Key: KEY)", {"WWW-Authenticate": 'Bearer realm="nanochat-lite"'})
        found = self._keys.find(presented)
        if found is None:
            raise _Refused(401, "unauthorized", "the API key is not valid",
                           {"WWW-Authenticate": 'Bearer realm="nanochat-lite", error="invalid_token"'})
        return found, entry

    # -- answers ------------------------------------------------------------------------------
    async def _preflight(self, scope: Scope, receive: Receive, send: Send, cors: str | None,
                         headers: dict[str, list[str]]) -> None:
        if cors is None:
            raise _Refused(403, "origin_not_allowed",
                           f"cross-origin requests from {_quote(_one(headers, 'origin') or '')} are not "
                           "allowed; start the server with --cors-origin ORIGIN to allow them")
        requested = _one(headers, "access-control-request-headers") or ""
        # The origin is trusted, so the headers it asks for are allowed (the openai JS
        # client sends several of its own); only token characters are echoed.
        allow_headers = ", ".join(h.strip() for h in requested.split(",") if KEY_RE.fullmatch(h.strip()))
        out = [
            ("access-control-allow-origin", cors),
            ("access-control-allow-methods", CORS_METHODS),
            ("access-control-allow-headers", allow_headers or CORS_DEFAULT_HEADERS),
            ("access-control-max-age", str(CORS_MAX_AGE_S)),
            ("vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ]
        await self._http_send(send, scope.get("path", ""), None)(
            {"type": "http.response.start", "status": 204,
             "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in out]})
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, r: _Refused, cors: str | None) -> None:
        path = scope.get("path", "")
        metrics = getattr(getattr(scope.get("app"), "state", None), "metrics", None)
        if metrics is not None:
            metrics.count_refused(r.status, r.code)
        if scope["type"] == "websocket":
            # Refused before accept: the server answers the handshake with 403. (A denial
            # response, ASGI's websocket.http.response, could say 401 or 421, but uvicorn's
            # default WebSocket implementation then logs an ERROR for every refusal:
            # Kludex/uvicorn PR #3138.) The reason reaches in-process test clients only.
            message = await receive()
            if message["type"] == "websocket.connect":
                reason = f"{r.status} {r.code}: {r.message}".encode()[:WS_MAX_REASON_BYTES]
                await send({"type": "websocket.close", "code": WS_REFUSED_CLOSE_CODE,
                            "reason": reason.decode("utf-8", "ignore")})
            return
        if is_openai_path(path):
            code = "invalid_api_key" if r.status == 401 else r.code  # OpenAI's code for a bad key
            body = openai_body(RequestError(r.message, code=code, status=r.status))
        else:
            body = api_body(RequestError(r.message, code=r.code, status=r.status))
        payload = msgspec.json.encode(body)
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in r.headers.items()]
        # A CORS origin gets its headers on a refusal too, so its page can read the 401.
        await self._http_send(send, path, cors)({"type": "http.response.start", "status": r.status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})

    def _http_send(self, send: Send, path: str, cors: str | None) -> Send:
        cors_configured = bool(self.config.cors_origins)

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                add_security_headers(headers, path)
                if cors is not None:
                    headers["Access-Control-Allow-Origin"] = cors
                    headers["Access-Control-Expose-Headers"] = "Retry-After"
                if cors_configured:
                    headers.add_vary_header("Origin")
            await send(message)

        return wrapped

    @staticmethod
    def _ws_send(send: Send, offered: list[str], key_entry: str | None) -> Send:
        async def wrapped(message: Message) -> None:
            # A browser that offered subprotocols fails the handshake unless one is chosen.
            if message["type"] == "websocket.accept" and not message.get("subprotocol"):
                chosen = WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else key_entry
                if chosen is not None:
                    message = {**message, "subprotocol": chosen}
            await send(message)

        return wrapped


def _one(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def key_name(conn: HTTPConnection) -> str | None:
    """The API key's name (`SecurityMiddleware` sets it when keys are configured)."""
    return getattr(conn.state, "api_key_name", None)
