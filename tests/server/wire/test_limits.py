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
    at_limit = padded(prefix, MIB)
    assert len(at_limit) == MIB
    r = client.post(route, content=chunks(at_limit)() if chunked else at_limit, headers=headers)
    assert r.status_code == 200, r.text[:300]  # valid JSON, exactly at the limit
    over = padded(prefix, MIB + 1)
    r = client.post(route, content=chunks(over)() if chunked else over, headers=headers)
    assert_error(r, route, 413, "body_too_large")
