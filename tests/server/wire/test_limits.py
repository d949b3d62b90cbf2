"""Each limit in `nanochat_lite.server.wire.limits` at its bound and one step past it.

At the bound the request is accepted and the value reaches the engine; one step past,
it is rejected before anything is stored or generated. Fake engine, no model.
"""

from __future__ import annotations

from typing import Any

import pytest
from fakes import REPLY, FakeEngine
from server_helpers import (
    API_OVER,
    MIB,
    OK_MESSAGES,
    V1_OVER,
    A,
    V,
    assert_api_error,
    assert_error,
    assert_openai_error,
    chunks,
    padded,
    user,
)
from starlette.testclient import TestClient

from nanochat_lite.server import Runtime
from nanochat_lite.server.wire import limits as L

# The fake engine's character bound (its context x its longest token), as the server computes it.
FAKE_TEXT_CHARS = L.text_chars(FakeEngine.n_ctx, FakeEngine.token_chars)

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
    pytest.param("x" * FAKE_TEXT_CHARS, 200, None, id="max-chars"),
    pytest.param("x" * (FAKE_TEXT_CHARS + 1), 400, "message_too_long", id="max-chars+1"),
    # Characters, not bytes: 4-byte emoji count one each.
    pytest.param("\U0001F600" * FAKE_TEXT_CHARS, 200, None, id="max-emoji"),
    pytest.param("\U0001F600" * (FAKE_TEXT_CHARS + 1), 400, "message_too_long", id="max-emoji+1"),
    pytest.param("", 400, "invalid_request", id="empty"),
    pytest.param(" ", 400, "invalid_request", id="one-space"),
    pytest.param("\n\t \r\n", 400, "invalid_request", id="whitespace"),
    pytest.param(" " * (FAKE_TEXT_CHARS + 1), 400, None, id="long-whitespace"),
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


@pytest.mark.parametrize("n_ctx,token_chars,expected", [
    pytest.param(4096, 81, 331_776, id="smollm2"),  # its longest token: "\n" and 80 spaces
    pytest.param(4096, None, L.MAX_BODY_BYTES, id="vocabulary-unknown"),  # 4096 x 512 is past the body limit
    pytest.param(256, None, 256 * 512, id="small-context"),
    pytest.param(0, 81, L.MAX_BODY_BYTES, id="context-unknown"),  # a remote engine that did not say
])
def test_text_chars_known_answers(n_ctx: int, token_chars: int | None, expected: int) -> None:
    assert L.text_chars(n_ctx, token_chars) == expected


def test_a_message_past_the_character_bound_says_why(client: TestClient, fake: FakeEngine) -> None:
    # Refused before tokenizing, with the bound and what to do; nothing reached the engine.
    err = assert_api_error(client.post(A, json={"message": "x" * (FAKE_TEXT_CHARS + 1)}), 400, "message_too_long")
    assert f"{FAKE_TEXT_CHARS + 1:,} characters" in err["message"] and f"{FAKE_TEXT_CHARS:,}" in err["message"]
    assert "--ctx-size" in err["message"]
    assert fake.prepared == []


def test_the_bound_follows_the_vocabulary(client: TestClient, fake: FakeEngine) -> None:
    # Before the model's tokenizer is known the bound is the body limit's; once known, it
    # is context x the longest token (Runtime.text_chars reads it at each request).
    fake.token_chars = None
    assert client.get("/api/limits").json()["data"]["message_chars"] == L.MAX_BODY_BYTES
    assert client.post(A, json={"message": "x" * (FAKE_TEXT_CHARS + 1)}).status_code == 200
    fake.token_chars = 2
    assert client.get("/api/limits").json()["data"]["message_chars"] == fake.n_ctx * 2
    assert_api_error(client.post(A, json={"message": "x" * (fake.n_ctx * 2 + 1)}), 400, "message_too_long")


def test_history_is_windowed_by_the_context(client: TestClient, fake: FakeEngine) -> None:
    # /api/chat hands the prompt builder at most HISTORY_CHARS_PER_TOKEN x context
    # characters of history (the newest turns, and always the new message): 16,384 here.
    window = L.history_chars(fake.n_ctx)
    assert window == fake.n_ctx * L.HISTORY_CHARS_PER_TOKEN
    piece = FAKE_TEXT_CHARS // 2
    r = client.post(A, json={"message": "a" * piece})
    assert r.status_code == 200, r.text
    cid = r.json()["data"]["conversation_id"]
    for letter in "bcd":
        assert client.post(A, json={"message": letter * piece, "conversation_id": cid}).status_code == 200
    sent = fake.prepared[-1]
    assert sent[-1]["content"] == "d" * piece
    assert sum(len(m["content"]) for m in sent) <= window
    # Everything that fits the window is there: one more message would not.
    dropped = len(fake.prepared[-2]) + 2 - len(sent)
    assert dropped >= 1 and sum(len(m["content"]) for m in sent) + piece > window


@pytest.mark.parametrize("extra,status", [
    pytest.param(0, 200, id="max-chars"),
    pytest.param(1, 400, id="max-chars+1"),
])
def test_system_length_bound(client: TestClient, fake: FakeEngine, extra: int, status: int) -> None:
    system = "s" * (FAKE_TEXT_CHARS + extra)
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
    """User messages of at most FAKE_TEXT_CHARS // 4 each (several of them), `total_chars` in all."""
    piece = FAKE_TEXT_CHARS // 4  # each message well within the bound: only the total can break it
    sizes = [piece] * (total_chars // piece)
    if total_chars % piece:
        sizes.append(total_chars % piece)
    return [user("c" * n) for n in sizes]


@pytest.mark.parametrize("total,status", [
    pytest.param(FAKE_TEXT_CHARS, 200, id="max-chars"),
    pytest.param(FAKE_TEXT_CHARS + 1, 400, id="max-chars+1"),
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
    at_limit = padded(prefix, MIB)
    assert len(at_limit) == MIB
    r = client.post(route, content=chunks(at_limit)() if chunked else at_limit, headers=headers)
    assert r.status_code == 200, r.text[:300]  # valid JSON, exactly at the limit
    over = padded(prefix, MIB + 1)
    r = client.post(route, content=chunks(over)() if chunked else over, headers=headers)
    assert_error(r, route, 413, "body_too_large")
