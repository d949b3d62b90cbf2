"""A remote engine beside local models in one real server process: `serve --model
gemma3-270m --model smollm2-135m-instruct --engine openai:URL`, whose upstream is a
second nanochat-lite process serving SmolLM2-135M (with an API key).

The upstream's model has the name of a local one, so its entry is told apart by the
upstream's address. Each model answers through its own name (the upstream's own
counters move only for the remote one; Gemma and SmolLM2 tokenize the same text apart),
a conversation stays with the remote, the WebSocket picks it; a streamed request for
the unloaded local SmolLM2 waits for its load (SSE comments while it does, when the
load lasts a second or more: their presence is asserted with a gated fake load in
tests/server/routes/test_models_remote.py); when the upstream goes away its entry is
listed `error` naming it, and the local models go on serving."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from nanochat_lite import models
from serverproc import ServerProc

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"
KEY = "upstream-key-77c2"
LIGHT = ("--threads", "1", "--parallel", "2", "--ctx-size", "1024")
TEXT = "The capital of France is"
TIMEOUT = 600.0  # a hang guard on a loaded 2-core machine, not a time limit

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, model_home: Path) -> Iterator[ServerProc]:
    models.ensure(model_home, SMOL, progress=print)
    with ServerProc(tmp_path_factory.mktemp("upstream"), *LIGHT, "--api-key", KEY) as s:
        yield s


@pytest.fixture(scope="module")
def front(tmp_path_factory, upstream: ServerProc, model_home: Path) -> Iterator[ServerProc]:
    models.ensure(model_home, GEMMA, progress=print)
    with ServerProc(tmp_path_factory.mktemp("front"), "--model", GEMMA, "--model", SMOL, "--engine",
                    f"openai:{upstream.url}/v1", *LIGHT, env={"NANOCHAT_LITE_ENGINE_KEY": KEY}) as s:
        yield s


def remote(upstream: ServerProc) -> str:
    return f"{SMOL}@127.0.0.1:{upstream.port}"


def rows(server: ServerProc) -> dict[str, dict]:
    r = httpx.get(server.url + "/api/models", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["data"]["models"]}


def generated(up: ServerProc) -> int:
    """Completion tokens the upstream has generated so far (its own count)."""
    return httpx.get(up.url + "/api/stats", headers={"Authorization": f"Bearer {KEY}"},
                     timeout=TIMEOUT).json()["tokens"]["completion"]


def post(server: ServerProc, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=TIMEOUT)


def test_the_upstream_is_listed_beside_the_local_models(front, upstream):
    listed = rows(front)
    name = remote(upstream)
    assert list(listed) == [GEMMA, SMOL, name]
    assert listed[GEMMA]["default"] is True and listed[GEMMA]["status"] == "loaded"
    up = listed[name]
    assert up["status"] == "loaded" and up["upstream"] == upstream.url + "/v1" and up["error"] is None, up
    assert up["memory_bytes"] is None and up["size_bytes"] is None and up["default"] is False
    assert [m["id"] for m in httpx.get(front.url + "/v1/models", timeout=TIMEOUT).json()["data"]] == list(listed)
    assert KEY not in front.log()


def test_a_streamed_request_for_an_unloaded_model_waits_for_its_load(front):
    """SmolLM2 here is loaded by this request. A comment line, if the load lasted long
    enough for one, comes before the first chunk and says which model loads."""
    assert rows(front)[SMOL]["status"] == "unloaded"
    with httpx.stream("POST", front.url + "/v1/completions", json={
            "model": SMOL, "prompt": TEXT, "max_tokens": 4, "temperature": 0, "stream": True}, timeout=TIMEOUT) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert all(re.fullmatch(rf": loading model {SMOL}, \d+ s", line) for line in lines[:first_data]), lines
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines[first_data:]), lines
    assert {json.loads(line[6:])["model"] for line in lines[first_data:-1]} == {SMOL}
    assert rows(front)[SMOL]["status"] == "loaded"


def test_each_model_answers_through_its_own_name(front, upstream):
    name = remote(upstream)
    before = generated(upstream)
    gemma = post(front, "/v1/completions", {"model": GEMMA, "prompt": TEXT, "max_tokens": 4, "temperature": 0})
    assert gemma.status_code == 200, gemma.text
    assert generated(upstream) == before  # Gemma answered here
    up = post(front, "/v1/completions", {"model": name, "prompt": TEXT, "max_tokens": 4, "temperature": 0})
    assert up.status_code == 200, up.text
    assert (gemma.json()["model"], up.json()["model"]) == (GEMMA, name)
    # The upstream generated exactly what the remote answer counts; the token counts are
    # each model's own: SmolLM2 5 pieces, no BOS; Gemma <bos> + 5 of its own.
    assert generated(upstream) - before == up.json()["usage"]["completion_tokens"] > 0
    assert (up.json()["usage"]["prompt_tokens"], gemma.json()["usage"]["prompt_tokens"]) == (5, 6)
    chat = post(front, "/v1/chat/completions", {"model": name, "max_tokens": 4, "temperature": 0,
                                                "messages": [{"role": "user", "content": "Say hi."}]})
    assert chat.status_code == 200 and chat.json()["model"] == name, chat.text


def test_a_conversation_with_the_upstream_stays_with_it(front, upstream):
    name = remote(upstream)
    before = generated(upstream)
    first = post(front, "/api/chat", {"message": "My name is Zorblax.", "model": name, "max_tokens": 8,
                                      "temperature": 0})
    assert first.status_code == 200 and first.json()["data"]["model"] == name, first.text
    cid = first.json()["data"]["conversation_id"]
    # No `model`: the conversation's own (Gemma, the default, has no chat template: a
    # turn that fell back to it would be a 400 no_chat_template).
    later = post(front, "/api/chat", {"message": "What is my name?", "conversation_id": cid, "max_tokens": 8,
                                      "temperature": 0})
    assert later.status_code == 200 and later.json()["data"]["model"] == name, later.text
    used = first.json()["data"]["usage"]["completionTokens"] + later.json()["data"]["usage"]["completionTokens"]
    assert generated(upstream) - before == used
    without = post(front, "/api/chat", {"message": "Say hi.", "max_tokens": 4})
    assert without.status_code == 400 and without.json()["error"]["code"] == "no_chat_template", without.text


def test_the_websocket_picks_the_upstream(front, upstream):
    name = remote(upstream)
    with connect(front.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "chat", "message": "Say hi.", "model": name, "max_tokens": 4}))
        frames = [json.loads(ws.recv(timeout=TIMEOUT))]
        while frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(ws.recv(timeout=TIMEOUT)))
    assert frames[0]["type"] == "start" and frames[0]["model"] == name and frames[-1]["type"] == "done", frames


def test_an_upstream_gone_is_listed_as_error_and_the_local_models_serve_on(front, upstream):
    """Last in this file: it stops the upstream."""
    name = remote(upstream)
    upstream.stop()
    deadline = time.monotonic() + TIMEOUT
    while (row := rows(front)[name])["status"] != "error":  # the front's probe notices within seconds
        assert time.monotonic() < deadline, row
        time.sleep(0.1)
    assert upstream.url + "/v1" in row["error"], row
    r = post(front, "/v1/completions", {"model": name, "prompt": TEXT, "max_tokens": 2})
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
    r = post(front, "/v1/completions", {"model": GEMMA, "prompt": TEXT, "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200 and r.json()["model"] == GEMMA, r.text
    assert "Traceback" not in front.log() and KEY not in front.log()
