"""A base model without a chat template (Gemma 3 270M), served by a real process: raw
prompts work on /v1/completions, every chat door answers 400 `no_chat_template` saying
how to fix it (and stores nothing), /api/health and /v1/models say so; with
`--chat-template chatml` the chat doors answer."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from nanochat_lite import models
from serverproc import ServerProc

GEMMA = "gemma3-270m"
# Light on a shared 2-core machine: one thread, two slots, a small context.
ARGS = ("--model", GEMMA, "--threads", "1", "--parallel", "2", "--ctx-size", "1024")
CHAT = {"message": "What is the capital of France?", "max_tokens": 8, "temperature": 0}
OPENAI_CHAT = {"model": GEMMA, "messages": [{"role": "user", "content": "What is the capital of France?"}],
               "max_tokens": 8, "temperature": 0}

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def gemma_path(model_home: Path) -> Path:
    """Pulled into the run's shared cache before a server needs it (once: ~253 MB)."""
    return models.ensure(model_home, GEMMA, progress=print)


@pytest.fixture(scope="module")
def base(tmp_path_factory, gemma_path):
    with ServerProc(tmp_path_factory.mktemp("gemma-base"), *ARGS) as s:
        yield s


def post(server: ServerProc, path: str, body: dict, timeout: float = 120.0) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=timeout)


def test_health_and_models_say_there_is_no_template(base):
    h = httpx.get(base.url + "/api/health").json()
    assert h["status"] == "ok" and h["model"] == GEMMA and h["has_chat_template"] is False
    m = httpx.get(base.url + "/v1/models").json()
    assert m["data"][0]["id"] == GEMMA and m["data"][0]["has_chat_template"] is False


def test_raw_completions_work(base):
    r = post(base, "/v1/completions", {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["text"].strip() and body["usage"]["completion_tokens"] >= 1
    # Gemma's own tokenizer (through llama.cpp): <bos> + 5 pieces. SmolLM2's would give 5, no BOS.
    assert body["usage"]["prompt_tokens"] == 6


def _assert_no_template(message: str) -> None:
    assert f"the model {GEMMA} has no chat template" in message
    assert "/v1/completions" in message and "--chat-template FILE|NAME" in message and "chatml" in message


@pytest.mark.parametrize("stream", [False, True])
def test_api_chat_is_a_400(base, stream):
    r = post(base, "/api/chat", {**CHAT, "stream": stream})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == "no_chat_template"
    _assert_no_template(body["error"]["message"])


@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat_is_a_400(base, stream):
    r = post(base, "/v1/chat/completions", {**OPENAI_CHAT, "stream": stream})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "no_chat_template" and error["type"] == "invalid_request_error"
    _assert_no_template(error["message"])


def test_websocket_chat_gets_an_error_frame_and_stays_open(base):
    with connect(base.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "chat", **CHAT}))
        frame = json.loads(ws.recv(timeout=60))
        assert frame["type"] == "error" and frame["code"] == "no_chat_template", frame
        _assert_no_template(frame["message"])
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}


def test_refused_chats_store_nothing(base):
    post(base, "/api/chat", CHAT)
    r = httpx.get(base.url + "/api/conversations", timeout=10)
    assert r.status_code == 200 and r.json()["data"]["total"] == 0, r.text


def test_chat_template_flag_makes_the_chat_doors_answer(tmp_path, gemma_path):
    with ServerProc(tmp_path, *ARGS, "--chat-template", "chatml") as s:
        h = httpx.get(s.url + "/api/health").json()
        assert h["has_chat_template"] is True
        assert httpx.get(s.url + "/v1/models").json()["data"][0]["has_chat_template"] is True
        r = post(s, "/api/chat", CHAT)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert data["model"] == GEMMA and data["usage"]["completionTokens"] >= 1
        assert data["finish_reason"] in ("stop", "length")
        r = post(s, "/v1/chat/completions", OPENAI_CHAT)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
        with connect(s.ws_url, open_timeout=10) as ws:
            ws.send(json.dumps({"type": "chat", **CHAT}))
            frames = [json.loads(ws.recv(timeout=60))]
            while frames[-1]["type"] not in ("done", "error"):
                frames.append(json.loads(ws.recv(timeout=60)))
        assert frames[0]["type"] == "start" and frames[-1]["type"] == "done", frames
