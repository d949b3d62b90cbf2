"""`GET /api/models`, the `model` field of the chat doors and `/api/health`'s `loading`,
over a runtime serving two fake engines through the model registry: which engine a
request reaches is read from the engines' own records, not from the reply's label."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeEngine
from server_helpers import TEST_SECURITY
from starlette.testclient import TestClient

from nanochat_lite.engines.scheduler import Scheduler
from nanochat_lite.history import ConversationStore
from nanochat_lite.server import Runtime, create_app
from nanochat_lite.server.chat.models import MB, Loaded, ModelSpec, Registry

HANG_GUARD_S = 120.0  # only guards against a hang; the conditions are polled


class Two:
    """A runtime serving `first` (loaded at start) and `other` (loaded on demand, when
    `gate` is open)."""

    def __init__(self) -> None:
        self.first, self.other = FakeEngine(name="first"), FakeEngine(name="other")
        self.gate = threading.Event()
        self.gate.set()
        self.loads = 0
        self.rt = Runtime(store=ConversationStore(":memory:"), model_name="first", resume_window_s=0)
        specs = [ModelSpec(name="first", path=Path("first.gguf"), size_bytes=MB, need_bytes=MB),
                 ModelSpec(name="other", path=Path("other.gguf"), size_bytes=2 * MB, need_bytes=2 * MB,
                           has_chat_template=True)]
        self.rt.registry = Registry(specs, self._load)
        scheduler = Scheduler(self.first)
        self.rt.registry.adopt("first", Loaded(scheduler=scheduler, prompts=self.first, memory_bytes=MB,
                                               close=scheduler.close))
        self.rt.attach(scheduler, self.first)

    def _load(self, spec: ModelSpec) -> Loaded:
        assert self.gate.wait(HANG_GUARD_S)
        self.loads += 1
        scheduler = Scheduler(self.other)
        return Loaded(scheduler=scheduler, prompts=self.other, memory_bytes=2 * MB, close=scheduler.close)


@pytest.fixture
def two() -> Iterator[Two]:
    t = Two()
    yield t
    t.gate.set()
    t.rt.close()
    t.rt.store.close()


@pytest.fixture
def client(two: Two) -> Iterator[TestClient]:
    with TestClient(create_app(two.rt, security=TEST_SECURITY), raise_server_exceptions=False) as c:
        yield c


def rows(client: TestClient) -> dict[str, dict]:
    r = client.get("/api/models")
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["data"]["models"]}


def test_models_listed_then_loaded_on_first_request(client: TestClient, two: Two) -> None:
    listed = rows(client)
    assert [(n, m["status"], m["default"]) for n, m in listed.items()] == [("first", "loaded", True),
                                                                          ("other", "unloaded", False)]
    assert listed["other"]["size_bytes"] == 2 * MB and listed["other"]["memory_bytes"] is None
    r = client.post("/api/chat", json={"message": "hello there", "model": "other", "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["model"] == "other"
    assert len(two.other.prepared) == 1 and two.first.prepared == []  # the other engine answered
    assert rows(client)["other"]["status"] == "loaded" and rows(client)["other"]["memory_bytes"] == 2 * MB
    assert two.loads == 1


def test_a_conversation_keeps_its_model(client: TestClient, two: Two) -> None:
    r = client.post("/api/chat", json={"message": "one", "model": "other", "max_tokens": 4})
    cid = r.json()["data"]["conversation_id"]
    r = client.post("/api/chat", json={"message": "two", "conversation_id": cid, "max_tokens": 4})
    assert r.status_code == 200 and r.json()["data"]["model"] == "other", r.text
    assert len(two.other.prepared) == 2 and two.first.prepared == []
    r = client.post("/api/chat", json={"message": "three", "max_tokens": 4})  # a new conversation
    assert r.json()["data"]["model"] == "first" and len(two.first.prepared) == 1


def test_openai_doors_pick_the_model_and_refuse_an_unknown_one(client: TestClient, two: Two) -> None:
    r = client.post("/v1/chat/completions", json={"model": "other", "messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 4})
    assert r.status_code == 200 and r.json()["model"] == "other", r.text
    r = client.post("/v1/completions", json={"model": "first", "prompt": "hi", "max_tokens": 4})
    assert r.status_code == 200 and r.json()["model"] == "first", r.text
    assert len(two.other.prepared) == 1 and len(two.first.prepared) == 1
    for path, body in [("/v1/completions", {"model": "gpt-4o", "prompt": "hi"}),
                       ("/api/chat", {"message": "hi", "model": "gpt-4o"})]:
        r = client.post(path, json=body)
        assert r.status_code == 404, r.text
        err = r.json()["error"]
        assert err["code"] == "model_not_found" and "first, other" in err["message"], err
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["first", "other"]


def test_health_names_the_model_loading_while_its_request_waits(client: TestClient, two: Two) -> None:
    two.gate.clear()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(
        client.post("/v1/completions", json={"model": "other", "prompt": "hi", "max_tokens": 2}).status_code))
    t.start()
    deadline = time.monotonic() + HANG_GUARD_S
    while (h := client.get("/api/health").json()).get("loading") != ["other"]:
        assert time.monotonic() < deadline and t.is_alive(), h
        time.sleep(0.01)
    assert h["status"] == "ok" and h["model"] == "first"  # the default serves meanwhile
    assert rows(client)["other"]["status"] == "loading"
    two.gate.set()
    t.join(HANG_GUARD_S)
    assert result == [200]
    assert "loading" not in client.get("/api/health").json()


def test_admin_unload_then_the_next_request_loads_again(client: TestClient, two: Two) -> None:
    client.post("/v1/completions", json={"model": "other", "prompt": "hi", "max_tokens": 2})
    r = client.post("/api/models/other/unload")
    assert r.status_code == 200 and r.json()["data"]["unloaded"] is True, r.text
    assert rows(client)["other"]["status"] == "unloaded"
    r = client.post("/api/models/other/load")
    assert r.status_code == 200 and r.json()["data"]["status"] == "loaded", r.text
    assert two.loads == 2
    r = client.post("/api/models/nope/unload")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text


def test_the_websocket_hears_loading_frames_while_its_model_loads(client: TestClient, two: Two,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from server_helpers import Frames

    from nanochat_lite.server.chat import runtime

    monkeypatch.setattr(runtime, "LOADING_FRAME_S", 0.01)
    two.gate.clear()  # the load waits until the test has seen a loading frame
    with client.websocket_connect("/ws") as ws:
        frames = Frames(ws)
        frames.send({"type": "chat", "message": "hello", "model": "other", "max_tokens": 2})
        first = frames.next()
        assert first["type"] == "loading" and first["model"] == "other" and first["size_bytes"] == 2 * MB, first
        assert isinstance(first["elapsed_ms"], int)
        two.gate.set()
        seen = [first]
        while seen[-1]["type"] != "done":
            seen.append(frames.next())
        kinds = [f["type"] for f in seen]
        assert kinds.index("start") > max(i for i, k in enumerate(kinds) if k == "loading"), kinds
        assert seen[-1]["model"] == "other"
    assert two.loads == 1


def test_a_request_that_goes_away_while_its_model_loads_does_not_keep_it_busy(two: Two) -> None:
    """The load goes on without its client; the model it acquired is released, so it
    can be unloaded (a busy model never is)."""
    import asyncio

    async def gone(frame: dict) -> None:
        raise ConnectionError("the socket closed")

    async def run() -> None:
        two.gate.clear()
        with pytest.raises(ConnectionError):
            async with two.rt.using("other", waiting=gone):
                pass
        two.gate.set()
        deadline = time.monotonic() + HANG_GUARD_S
        while rows_of(two)["other"] != "loaded" or two.rt.registry.entry("other").busy:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

    # A thread of its own: asyncio.run() refuses a thread where an event loop is running
    # (an earlier test's TestClient may have left one in this one).
    failures: list[BaseException] = []
    worker = threading.Thread(target=lambda: _record(failures, lambda: asyncio.run(run())))
    worker.start()
    worker.join(HANG_GUARD_S)
    assert not worker.is_alive() and failures == [], failures
    assert two.rt.registry.unload("other") is True  # type: ignore[union-attr]


def _record(failures: list[BaseException], fn) -> None:  # noqa: ANN001
    try:
        fn()
    except BaseException as e:  # the test's assertion, seen by the test's own thread
        failures.append(e)


def rows_of(two: Two) -> dict[str, str]:
    return {m["name"]: m["status"] for m in two.rt.registry.describe()}  # type: ignore[union-attr]
