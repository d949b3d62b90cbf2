"""The queue in front of the engine, seen through the HTTP and WebSocket doors (fake
engine, in-process): past `max_queue` waiting requests every door answers at once —
503 `server_busy` with Retry-After on `/api`, 429 in OpenAI's shape on `/v1`, an
error frame on the WebSocket — and nothing of the refused request is stored.
Slots in use and queued requests show in `/api/health` and `/api/stats`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from fakes import SLOW, FakeEngine, attach_fake
from starlette.testclient import TestClient

from nanochat_lite.engines.scheduler import Scheduler
from nanochat_lite.history import ConversationStore
from nanochat_lite.server import Runtime, create_app
from nanochat_lite.server.guards.security import SecurityConfig


@pytest.fixture
def busy_client() -> Iterator[tuple[TestClient, Runtime, FakeEngine]]:
    """One slot, room for one waiting request."""
    fake = FakeEngine(parallel=1)
    rt = Runtime(store=ConversationStore(":memory:"), model_name="fake")
    attach_fake(rt, fake, Scheduler(fake, max_queue=1))
    app = create_app(rt, security=SecurityConfig(allowed_hosts=("testserver",)))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, rt, fake
    rt.close()
    rt.store.close()


def _slow_chat(client: TestClient, results: list, i: int) -> None:
    r = client.post("/api/chat", json={"message": f"{SLOW} number {i}"})
    results.append(r.status_code)


def _wait(cond, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_full_queue_refuses_at_once_on_every_door_and_stores_nothing(busy_client):
    client, rt, fake = busy_client
    results: list[int] = []
    threads = [threading.Thread(target=_slow_chat, args=(client, results, i)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    _wait(lambda: rt.generating == 1 and rt.queued == 1)
    stored_before = rt.store.list()[1]

    health = client.get("/api/health").json()
    assert health["generating"] == 1 and health["queued"] == 1 and health["slots"] == 1
    engine = client.get("/api/stats").json()["engine"]
    assert engine["slots"] == 1 and engine["slots_in_use"] == 1 and engine["queued"] == 1

    r = client.post("/api/chat", json={"message": "one more"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"
    assert int(r.headers["retry-after"]) >= 1
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "one more"}]})
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "server_busy" and r.headers["retry-after"]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "stream": True})
    assert r.status_code == 429
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "chat", "message": "one more"})
        frame = ws.receive_json()
        assert frame["type"] == "error" and frame["code"] == "server_busy"
    # Refused at once, not after a wait: the slow answer is still running and the
    # queued one still waiting (a refusal that waited for a place would see them gone).
    assert rt.generating == 1 and rt.queued == 1
    assert fake.calls[0].finish_reason is None

    # Nothing of the refused requests was stored or reached the engine.
    assert rt.store.list()[1] == stored_before
    assert all("one more" not in c.messages[-1]["content"] for c in fake.calls)
    assert client.get("/api/stats").json()["requests"]["rejected_busy"] == 4

    rt.scheduler.close()  # ends the two slow ones
    for t in threads:
        t.join(10)
    assert sorted(results) == [200, 200]
