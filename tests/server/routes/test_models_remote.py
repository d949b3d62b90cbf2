"""A remote engine as one model entry beside a local one, and the SSE comments a
streamed request hears while its model loads, over a runtime of fake engines: which
engine answered is read from the engines' own records, not from the reply's label.

`local` is loaded at start (the default); `remote` stands for `--engine openai:URL`
(no file, no memory here, its status from its upstream's health); `slow` is a local
model whose load waits for the test (a gate), so a request for it is known to be
waiting while the test looks."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeEngine
from server_helpers import TEST_SECURITY, Frames
from starlette.testclient import TestClient

from nanochat_lite.engines.scheduler import Scheduler
from nanochat_lite.history import ConversationStore
from nanochat_lite.server import Runtime, create_app
from nanochat_lite.server.chat import loading, runtime
from nanochat_lite.server.chat.models import MB, Loaded, ModelSpec, Registry

HANG_GUARD_S = 120.0  # only guards against a hang; conditions are waited for, never slept on
UPSTREAM = "http://upstream.test:8000/v1"
COMMENT = re.compile(r"^: loading model slow, \d+ s$")


class Upstream:
    """What the registry reads of a remote engine: its health, as RemoteEngine reports it."""

    def __init__(self) -> None:
        self.state, self.error = "ok", None

    def health(self) -> dict[str, Any]:
        return {"engine": "openai", "url": UPSTREAM, "state": self.state, "error": self.error}


class Served:
    def __init__(self) -> None:
        self.local, self.remote, self.slow = FakeEngine(name="local"), FakeEngine(name="remote"), FakeEngine(name="slow")
        self.upstream = Upstream()
        self.gate = threading.Event()
        self.gate.set()
        self.rt = Runtime(store=ConversationStore(":memory:"), model_name="local", resume_window_s=0)
        specs = [ModelSpec(name="local", path=Path("local.gguf"), size_bytes=MB, need_bytes=MB),
                 ModelSpec(name="remote", path=None, upstream=UPSTREAM),
                 ModelSpec(name="slow", path=Path("slow.gguf"), size_bytes=2 * MB, need_bytes=2 * MB)]
        # Room for one local model at a time: loading `slow` must unload `local`, never `remote`.
        self.rt.registry = Registry(specs, self._load, budget_bytes=2 * MB)
        first, up = Scheduler(self.local), Scheduler(self.remote)
        self.rt.registry.adopt("local", Loaded(scheduler=first, prompts=self.local, memory_bytes=MB,
                                               close=first.close))
        self.rt.registry.adopt("remote", Loaded(scheduler=up, prompts=self.remote, memory_bytes=0, close=up.close,
                                                health=self.upstream.health))
        self.rt.attach(first, self.local)

    def _load(self, spec: ModelSpec) -> Loaded:
        assert spec.name == "slow", spec  # the remote entry is never loaded here
        assert self.gate.wait(HANG_GUARD_S)
        scheduler = Scheduler(self.slow)
        return Loaded(scheduler=scheduler, prompts=self.slow, memory_bytes=2 * MB, close=scheduler.close)


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.gate.set()
    s.rt.close()
    s.rt.store.close()


@pytest.fixture
def client(served: Served) -> Iterator[TestClient]:
    with TestClient(create_app(served.rt, security=TEST_SECURITY), raise_server_exceptions=False) as c:
        yield c


def rows(client: TestClient) -> dict[str, dict]:
    r = client.get("/api/models")
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["data"]["models"]}


def test_the_remote_entry_is_listed_with_its_upstream_and_no_memory(client: TestClient, served: Served) -> None:
    remote = rows(client)["remote"]
    assert remote["status"] == "loaded" and remote["upstream"] == UPSTREAM and remote["default"] is False
    assert remote["size_bytes"] is None and remote["memory_bytes"] is None and remote["error"] is None
    assert "upstream" not in rows(client)["local"]
    v1 = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert list(v1) == ["local", "remote", "slow"] and v1["remote"]["status"] == "loaded"
    served.upstream.state, served.upstream.error = "unreachable", f"the engine upstream at {UPSTREAM} cannot be reached"
    remote = rows(client)["remote"]
    assert remote["status"] == "error" and UPSTREAM in remote["error"], remote
    assert client.get("/api/models").json()["data"]["loaded_memory_bytes"] == MB  # the local model only


def test_the_model_field_routes_every_door_to_the_remote(client: TestClient, served: Served) -> None:
    r = client.post("/api/chat", json={"message": "hi", "model": "remote", "max_tokens": 4})
    assert r.status_code == 200 and r.json()["data"]["model"] == "remote", r.text
    r = client.post("/v1/chat/completions", json={"model": "remote", "max_tokens": 4,
                                                  "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["model"] == "remote", r.text
    r = client.post("/v1/completions", json={"model": "remote", "prompt": "hi", "max_tokens": 4})
    assert r.status_code == 200 and r.json()["model"] == "remote", r.text
    with client.websocket_connect("/ws") as ws:
        frames = Frames(ws)
        frames.send({"type": "chat", "message": "hello", "model": "remote", "max_tokens": 2})
        while (f := frames.next())["type"] != "done":
            pass
        assert f["model"] == "remote"
    assert len(served.remote.calls) == 4 and served.local.calls == []
    r = client.post("/v1/completions", json={"model": "local", "prompt": "hi", "max_tokens": 4})
    assert r.status_code == 200 and len(served.local.calls) == 1


def test_a_conversation_with_the_remote_stays_with_it(client: TestClient, served: Served) -> None:
    cid = client.post("/api/chat", json={"message": "one", "model": "remote", "max_tokens": 4}
                      ).json()["data"]["conversation_id"]
    r = client.post("/api/chat", json={"message": "two", "conversation_id": cid, "max_tokens": 4})
    assert r.status_code == 200 and r.json()["data"]["model"] == "remote", r.text
    assert len(served.remote.prepared) == 2 and served.local.prepared == []
    assert served.remote.prepared[1][-1] == {"role": "user", "content": "two"} and len(served.remote.prepared[1]) == 3


def test_the_remote_is_never_unloaded_to_make_room_nor_by_an_admin(client: TestClient, served: Served) -> None:
    # `local` used last: the remote is the least recently used, the first in line were it not exempt.
    assert client.post("/v1/completions", json={"model": "local", "prompt": "hi", "max_tokens": 2}).status_code == 200
    r = client.post("/v1/completions", json={"model": "slow", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200, r.text
    listed = rows(client)
    assert (listed["local"]["status"], listed["remote"]["status"], listed["slow"]["status"]) == (
        "unloaded", "loaded", "loaded")
    r = client.post("/api/models/remote/unload")
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_remote", r.text
    assert UPSTREAM in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"model": "remote", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200 and len(served.remote.calls) == 1 and served.remote.calls[0].messages


# -- SSE comments while a model loads ------------------------------------------------

@pytest.fixture
def commented(monkeypatch: pytest.MonkeyPatch, served: Served) -> threading.Event:
    """Loading frames every 10 ms; the load of `slow` waits until a comment was written,
    so every request below is known to have waited (no timing involved)."""
    monkeypatch.setattr(runtime, "LOADING_FRAME_S", 0.01)
    written = threading.Event()
    real = loading.comment

    def comment(frame: dict[str, Any]) -> bytes:
        written.set()
        return real(frame)

    monkeypatch.setattr(loading, "comment", comment)
    served.gate.clear()

    def open_gate() -> None:
        if written.wait(HANG_GUARD_S):
            served.gate.set()

    threading.Thread(target=open_gate, daemon=True).start()
    return written


def lines(r: Any) -> list[str]:
    return [line for line in r.text.split("\n") if line]


def test_a_streamed_api_chat_hears_comments_then_its_answer(client: TestClient, served: Served,
                                                            commented: threading.Event) -> None:
    r = client.post("/api/chat", json={"message": "hi", "model": "slow", "max_tokens": 4, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    got = lines(r)
    first_data = next(i for i, line in enumerate(got) if not line.startswith(":"))
    assert first_data >= 1 and all(COMMENT.match(line) for line in got[:first_data]), got
    frames = [json.loads(line[6:]) for line in got if line.startswith("data: ")]
    assert frames[0]["type"] == "start" and frames[-1]["type"] == "done" and frames[-1]["model"] == "slow"
    assert len(served.slow.calls) == 1 and served.local.calls == []


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/completions", {"prompt": "hi"}),
])
def test_streamed_openai_doors_hear_comments_then_their_chunks(client: TestClient, served: Served,
                                                               commented: threading.Event, path: str,
                                                               body: dict) -> None:
    r = client.post(path, json={**body, "model": "slow", "max_tokens": 4, "stream": True})
    assert r.status_code == 200, r.text
    got = lines(r)
    first_data = next(i for i, line in enumerate(got) if not line.startswith(":"))
    assert first_data >= 1 and all(COMMENT.match(line) for line in got[:first_data]), got
    assert got[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in got[first_data:]), got
    chunks = [json.loads(line[6:]) for line in got[first_data:-1]]
    assert {c["model"] for c in chunks} == {"slow"} and len(served.slow.calls) == 1


def test_an_error_after_the_stream_started_is_its_last_event(client: TestClient, commented: threading.Event
                                                             ) -> None:
    """`suffix` is refused once the model is known, after the comments: the status is
    sent by then, so the refusal is an error event in OpenAI's shape."""
    r = client.post("/v1/completions", json={"model": "slow", "prompt": "hi", "suffix": "x", "stream": True})
    assert r.status_code == 200, r.text
    got = lines(r)
    assert COMMENT.match(got[0]) and got[-1].startswith("data: "), got
    assert json.loads(got[-1][6:])["error"]["code"] == "unsupported_parameter"


def test_no_comment_when_the_model_is_loaded_and_errors_stay_statuses(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "local", "prompt": "hi", "max_tokens": 2, "stream": True})
    assert r.status_code == 200 and lines(r)[0].startswith("data: ") and ": loading" not in r.text, r.text
    r = client.post("/v1/completions", json={"model": "nope", "prompt": "hi", "stream": True})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    r = client.post("/api/chat", json={"message": "hi", "model": "nope", "stream": True})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text


def test_a_non_streamed_request_just_waits(client: TestClient, served: Served, commented: threading.Event) -> None:
    """No comment can be written into a JSON body: the test's gate opens on its own."""
    served.gate.set()
    r = client.post("/v1/completions", json={"model": "slow", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "slow" and not commented.is_set(), r.text
