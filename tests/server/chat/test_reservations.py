"""Token reservations in-process (guards/quotas.py, turns.reserve/admit), with the fake
engine: a short reservation lowers every choice's max_tokens to its share (finish_reason
"length"), the day's count is what the clients were told and never passes the quota,
a refused request (429 quota_exceeded, Retry-After) stored and queued nothing on every
door, and a request refused after reserving (a full queue) gives its tokens back.
The real-server acceptance is tests/server/test_quota.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from fakes import FakeEngine, attach_fake
from nanochat_lite.history import ConversationStore
from nanochat_lite.server import Runtime, create_app
from nanochat_lite.server.guards.quotas import utc_day
from nanochat_lite.server.guards.security import SecurityConfig

KA, KB = "alice-" + "1f" * 16, "bob-" + "2e" * 16
QUOTA = 30
TEN = [f" w{i}" for i in range(10)]  # the fake's answer: ten tokens, unless cut


@pytest.fixture
def rt() -> Iterator[Runtime]:
    runtime = Runtime(store=ConversationStore(":memory:"), model_name="fake", resume_window_s=0)
    attach_fake(runtime, FakeEngine(reply=TEN))
    yield runtime
    runtime.close()
    runtime.store.close()


@pytest.fixture
def client(rt: Runtime) -> Iterator[TestClient]:
    security = SecurityConfig(keys={"alice": KA, "bob": KB}, daily_token_quotas={"alice": QUOTA},
                              allowed_hosts=("testserver",))
    with TestClient(create_app(rt, security=security), raise_server_exceptions=False) as c:
        yield c


def counted(rt: Runtime, owner: str) -> tuple[int, int]:
    """(used + reserved, reserved) of `owner` today, once the settlements have landed."""
    deadline = time.monotonic() + 5
    while True:
        rows = rt.store.usage(owner=owner, day=utc_day())
        row = rows[0] if rows else None
        if (row is not None and row.reserved_tokens == 0) or time.monotonic() > deadline:
            return (row.counted, row.reserved_tokens) if row else (0, 0)
        time.sleep(0.01)


def test_a_short_reservation_cuts_every_choice_to_its_share(client: TestClient, rt: Runtime) -> None:
    alice = {"Authorization": f"Bearer {KA}"}
    # Prompt "hi": 2 fake tokens. n=4 × 10 wanted, 28 left: each choice may generate 7.
    r = client.post("/v1/chat/completions", headers=alice,
                    json={"messages": [{"role": "user", "content": "hi"}], "n": 4, "max_tokens": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["finish_reason"] for c in body["choices"]] == ["length"] * 4
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 28, "total_tokens": 30}
    assert counted(rt, "alice") == (QUOTA, 0)
    # Nothing left: every door refuses at once, before storing or queueing anything.
    calls = len(rt.prompts.calls)  # type: ignore[union-attr]
    r = client.post("/v1/chat/completions", headers=alice, json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
    assert r.json()["error"]["type"] == "rate_limit_error" and int(r.headers["retry-after"]) > 0
    for stream in (False, True):
        r = client.post("/api/chat", headers=alice, json={"message": "hi", "stream": stream})
        assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded", r.text
        assert "used its daily quota of 30 tokens" in r.json()["error"]["message"]
    with client.websocket_connect("/ws", headers=alice) as ws:
        ws.send_json({"type": "chat", "message": "hi"})
        frame = ws.receive_json()
    assert frame["type"] == "error" and frame["code"] == "quota_exceeded"
    assert len(rt.prompts.calls) == calls  # type: ignore[union-attr]  (nothing reached the engine)
    assert client.get("/api/conversations", headers=alice).json()["data"]["total"] == 0
    assert counted(rt, "alice") == (QUOTA, 0)
    assert rt.stats.refused[(429, "quota_exceeded")] == 4
    # bob has no quota: served, and counted all the same.
    bob = {"Authorization": f"Bearer {KB}"}
    r = client.post("/api/chat", headers=bob, json={"message": "hi there", "max_tokens": 10})
    assert r.status_code == 200 and r.json()["data"]["finish_reason"] == "stop"
    assert counted(rt, "bob") == (3 + 10, 0)


def test_a_request_whose_prompt_does_not_fit_what_is_left_is_refused(client: TestClient, rt: Runtime) -> None:
    alice = {"Authorization": f"Bearer {KA}"}
    words = " ".join(["word"] * 25)  # 26 prompt tokens: 4 left after it for 1 choice, not for 5
    r = client.post("/v1/completions", headers=alice, json={"prompt": words, "n": 5, "max_tokens": 10})
    assert r.status_code == 429, r.text
    assert "30 of its daily 30 tokens left" in r.json()["error"]["message"]
    assert counted(rt, "alice") == (0, 0)  # nothing held
    r = client.post("/v1/completions", headers=alice, json={"prompt": words, "n": 1, "max_tokens": 10})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["total_tokens"] == QUOTA
    assert counted(rt, "alice") == (QUOTA, 0)


def test_streams_and_two_prompts_count_what_the_client_was_told(client: TestClient, rt: Runtime) -> None:
    alice = {"Authorization": f"Bearer {KA}"}
    # Two prompts × n=2 (each prompt counted once): 2 + 2 prompt tokens, 4 × 3 tokens.
    r = client.post("/v1/completions", headers=alice,
                    json={"prompt": ["a", "b"], "n": 2, "max_tokens": 3, "stream": True,
                          "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    usage = [line for line in r.text.splitlines() if '"usage"' in line][-1]
    assert '"total_tokens":16' in usage.replace(" ", "")
    assert counted(rt, "alice") == (16, 0)
    with client.websocket_connect("/ws", headers=alice) as ws:
        ws.send_json({"type": "chat", "message": "one two three four five", "max_tokens": 50})  # 6 + 8 left
        while (frame := ws.receive_json())["type"] != "done":
            pass
    assert frame["finish_reason"] == "length" and frame["usage"]["totalTokens"] == QUOTA - 16
    assert counted(rt, "alice") == (QUOTA, 0)


def test_a_full_queue_gives_the_reservation_back(client: TestClient, rt: Runtime) -> None:
    alice = {"Authorization": f"Bearer {KA}"}
    rt.scheduler.max_queue = 0  # type: ignore[union-attr]  (every request is refused as "busy")
    try:
        r = client.post("/api/chat", headers=alice, json={"message": "hi", "max_tokens": 5})
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy", r.text
    finally:
        rt.scheduler.max_queue = 64  # type: ignore[union-attr]
    assert counted(rt, "alice") == (0, 0)
    (row,) = rt.store.usage(owner="alice")
    assert row.requests == 0  # given back, not counted as a request
