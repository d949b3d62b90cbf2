"""Malformed requests to the server get a 4xx JSON error in their route's style, never a 5xx.

`/api/*` and other paths answer `{"success": false, "error": {"code", "message"}}`,
`/v1/*` OpenAI's `{"error": {"message", "type", "param", "code"}}`. Also: nasty but
valid text is accepted verbatim, and a WebSocket to an unknown path is refused.
The app runs under Starlette's TestClient with a fake engine (fixtures in conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fakes import OVERFLOW, FakeEngine
from server_helpers import API_OVER, MIB, OK_MESSAGES, V1_OVER, A, V, assert_error, chunks, deep, j, padded, user
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from nanochat_lite.server import Runtime
from nanochat_lite.server.wire import limits as L

# The fake engine's character bound (its context x its longest token), as the server computes it.
FAKE_TEXT_CHARS = L.text_chars(FakeEngine.n_ctx, FakeEngine.token_chars)

# -- 1. malformed requests: 4xx JSON in the route's style, never 5xx -----------------


def oai(**kw: Any) -> bytes:
    return j({"messages": OK_MESSAGES, **kw})


@dataclass(frozen=True)
class Bad:
    id: str
    method: str
    path: str
    body: bytes | Callable[[], Any] | None = None  # a callable makes big or streamed bodies lazily
    status: int = 400
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _over_limit(route_prefix: bytes) -> Callable[[], bytes]:
    return lambda: padded(route_prefix, MIB + 1)


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
    Bad("api-message-too-long", "POST", A, lambda: j({"message": "x" * (FAKE_TEXT_CHARS + 1)}),
        code="message_too_long"),
    Bad("api-system-too-long", "POST", A, lambda: j({"message": "hi", "system": "s" * (FAKE_TEXT_CHARS + 1)}),
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
    Bad("api-deep-nesting-in-message", "POST", A, b'{"message": ' + deep(5000) + b"}", code="invalid_request"),
    Bad("api-deep-nesting-in-unknown-field", "POST", A, b'{"message": "hi", "x": ' + deep(5000) + b"}"),
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
    Bad("api-body-over-1MiB-chunked", "POST", A, lambda: chunks(padded(API_OVER, MIB + 1))(),
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
    Bad("v1-deep-nesting-in-unknown-field", "POST", V, V1_OVER + b', "metadata": ' + deep(5000) + b"}"),
    Bad("v1-too-many-messages", "POST", V, lambda: j({"messages": [user("x")] * (L.MAX_MESSAGES + 1)}),
        code="too_many_messages"),
    Bad("v1-message-too-long", "POST", V, lambda: j({"messages": [user("x" * (FAKE_TEXT_CHARS + 1))]}),
        code="message_too_long"),
    Bad("v1-context-overflow", "POST", V, j({"messages": [user("hi " + OVERFLOW)]}),
        code="context_length_exceeded"),
    Bad("v1-body-over-1MiB", "POST", V, _over_limit(V1_OVER), status=413, code="body_too_large"),
    Bad("v1-body-over-1MiB-chunked", "POST", V, lambda: chunks(padded(V1_OVER, MIB + 1))(),
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
