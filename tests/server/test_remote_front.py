"""`nanochat-lite serve --engine openai:URL` as a front for another server.

Two real processes: an upstream `nanochat-lite serve` with the model and an API key
(it is OpenAI-compatible), and a front that has no model and sends generation there.
Through the front: `/api/chat` (JSON and SSE), conversations that keep their history,
the WebSocket with stop (the upstream counts the generation cancelled and stops),
`/v1/chat/completions` with the official client, health and stats naming the upstream.
An upstream that is down, or goes down, is a 503 `engine_unavailable` within 5 s; the
front recovers when it is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from serverproc import ServerProc, free_port

KEY = "upstream-key-5e1f"
AUTH = {"Authorization": f"Bearer {KEY}"}


def upstream_stats(up: ServerProc) -> dict:
    return httpx.get(up.url + "/api/stats", headers=AUTH, timeout=10).json()


def wait_upstream_idle(up: ServerProc, within: float) -> None:
    t0 = time.monotonic()
    while upstream_stats(up)["requests"]["generating"] and time.monotonic() - t0 < within:
        time.sleep(0.05)
    assert upstream_stats(up)["requests"]["generating"] == 0


def start_front(tmp: Path, upstream_url: str, *args: str, key: str | None = KEY,
                healthy: bool = True) -> ServerProc:
    env = {"NANOCHAT_LITE_ENGINE_KEY": key} if key else {}
    front = ServerProc(tmp, "--engine", f"openai:{upstream_url}/v1", *args, env=env)
    if healthy:
        return front.start()
    # A front whose upstream is down answers /api/health 503 engine_unavailable: wait for that.
    return front.start(ready=lambda r: r.json().get("status") == "engine_unavailable")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, chat_model_path) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("upstream"), "--threads", "1", "--parallel", "4",
                    "--api-key", KEY) as s:
        yield s


@pytest.fixture(scope="module")
def front(tmp_path_factory, upstream) -> Iterator[ServerProc]:
    f = start_front(tmp_path_factory.mktemp("front"), upstream.url, "--parallel", "4")
    yield f
    f.stop()


def test_health_and_stats_name_the_upstream(front, upstream):
    h = httpx.get(front.url + "/api/health").json()
    assert h["status"] == "ok" and h["model"] == "smollm2-135m-instruct"
    assert h["upstream"]["state"] == "ok" and h["upstream"]["url"] == upstream.url + "/v1"
    s = httpx.get(front.url + "/api/stats").json()
    assert s["engine"]["upstream"]["model"] == "smollm2-135m-instruct" and s["engine"]["slots"] == 4
    assert "Traceback" not in front.log() and KEY not in front.log()


def test_api_chat_json_and_stream(front, upstream):
    before = upstream_stats(upstream)["tokens"]["completion"]
    r = httpx.post(front.url + "/api/chat", json={"message": "What is the capital of France?", "max_tokens": 16,
                                                  "temperature": 0}, timeout=120)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["message"] and d["model"] == "smollm2-135m-instruct" and d["finish_reason"] in ("stop", "length")
    # Token counts are the upstream's own.
    assert d["usage"]["completionTokens"] == upstream_stats(upstream)["tokens"]["completion"] - before > 0
    assert d["usage"]["promptTokens"] > 5
    # Greedy, so the answer (and its number of deltas) does not depend on the sampling seed:
    # a sampled "Count to five." was once two tokens long.
    with httpx.stream("POST", front.url + "/api/chat", json={"message": "Count from 1 to 10, separated by commas.",
                                                             "max_tokens": 16, "temperature": 0, "stream": True},
                      timeout=120) as s:
        assert s.status_code == 200
        frames = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("token") >= 3
    assert frames[-1]["message"] == "".join(f["text"] for f in frames if f["type"] == "token")
    stored = httpx.get(f"{front.url}/api/conversations/{frames[0]['conversation_id']}").json()["data"]["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"] and stored[1]["content"] == frames[-1]["message"]
    assert stored[1]["completion_tokens"] == frames[-1]["usage"]["completionTokens"]


def test_conversation_continues_with_its_history(front):
    first = httpx.post(front.url + "/api/chat", json={"message": "My name is Zorblax.", "max_tokens": 20,
                                                      "temperature": 0}, timeout=120).json()["data"]
    # No repeat penalty: llama.cpp counts the prompt in its window, and the name the
    # model must repeat is in the prompt.
    second = httpx.post(front.url + "/api/chat", json={
        "message": "What is my name?", "conversation_id": first["conversation_id"], "max_tokens": 20,
        "temperature": 0, "repeat_penalty": 1.0}, timeout=120).json()["data"]
    assert second["usage"]["promptTokens"] > first["usage"]["promptTokens"] + first["usage"]["completionTokens"]
    assert "Zorblax" in second["message"]


def test_websocket_stop_cancels_the_upstream_generation(front, upstream):
    before = upstream_stats(upstream)["requests"]["cancelled"]
    with connect(front.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "chat", "message": "Write the numbers from 1 to 500, separated by commas.",
                            "max_tokens": 800}))
        tokens = 0
        while True:
            f = json.loads(ws.recv(timeout=60))
            if f["type"] == "token":
                tokens += 1
                if tokens == 5:
                    ws.send(json.dumps({"type": "stop"}))
            elif f["type"] in ("done", "error"):
                break
    assert f["type"] == "done" and f["finish_reason"] == "cancelled", f
    assert f["usage"]["completionTokens"] < 100
    wait_upstream_idle(upstream, 5.0)
    deadline = time.monotonic() + 5
    while upstream_stats(upstream)["requests"]["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream_stats(upstream)["requests"]["cancelled"] == before + 1


def test_openai_client_through_the_front(front):
    from openai import OpenAI

    client = OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=12, temperature=0,
                                       messages=[{"role": "user", "content": "Say hello."}])
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="x", max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "Say hello."}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens > 0 and chunks[-1].choices == []
    # Structured output goes upstream as response_format.
    # Greedy, and a schema with nothing but the age: the answer ends well within max_tokens
    # (a sampled answer once invented five more fields and was cut at 40 tokens).
    r = client.chat.completions.create(model="x", max_tokens=40, temperature=0,
                                       messages=[{"role": "user", "content": "A person."}],
                                       response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": {
                                           "type": "object", "properties": {"age": {"type": "integer"}},
                                           "required": ["age"], "additionalProperties": False}}})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content)["age"], int)


def test_upstream_refusal_is_our_400(front):
    # max_tokens past the front's limit is the front's 400; a token-id prompt, which
    # only the upstream's vocabulary could check, is refused with a reason.
    r = httpx.post(front.url + "/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 4})
    assert r.status_code == 400 and "send the prompt as text" in r.json()["error"]["message"]
    r = httpx.post(front.url + "/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 4})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0


def test_down_upstream_is_503_within_5s(tmp_path):
    front = start_front(tmp_path, f"http://127.0.0.1:{free_port()}", healthy=False)
    try:
        for path, body in [("/api/chat", {"message": "hi"}), ("/api/chat", {"message": "hi", "stream": True}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})]:
            t0 = time.monotonic()
            r = httpx.post(front.url + path, json=body, timeout=10)
            assert time.monotonic() - t0 < 5 and r.status_code == 503, r.text
            err = r.json()["error"]
            assert err["code"] == "engine_unavailable" and "cannot be reached" in err["message"]
        with connect(front.ws_url, open_timeout=10) as ws:
            ws.send(json.dumps({"type": "chat", "message": "hi"}))
            f = json.loads(ws.recv(timeout=5))
        assert f["type"] == "error" and f["code"] == "engine_unavailable"
        h = httpx.get(front.url + "/api/health")
        assert h.status_code == 503 and h.json()["upstream"]["state"] == "unreachable"
        assert "Traceback" not in front.log()
    finally:
        front.stop()


def test_upstream_that_goes_down_and_comes_back(tmp_path, chat_model_path):
    up = ServerProc(tmp_path, "--threads", "1", "--parallel", "2", "--api-key", KEY).start()
    port = up.port  # the restart below comes back on it
    front = start_front(tmp_path, up.url)
    try:
        ok = httpx.post(front.url + "/api/chat", json={"message": "hi", "max_tokens": 4}, timeout=60)
        assert ok.status_code == 200
        up.kill()
        up.stop()  # closes its log
        t0 = time.monotonic()
        r = httpx.post(front.url + "/api/chat", json={"message": "hi", "max_tokens": 4}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        assert time.monotonic() - t0 < 5
        up = ServerProc(tmp_path, "--threads", "1", "--parallel", "2", "--api-key", KEY, port=port).start()
        deadline = time.monotonic() + 10
        while httpx.get(front.url + "/api/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        r = httpx.post(front.url + "/api/chat", json={"message": "hi", "max_tokens": 4}, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        front.stop()
        up.stop()


def test_wrong_key_is_a_clear_503(tmp_path, upstream):
    front = start_front(tmp_path, upstream.url, key="wrong", healthy=False)
    try:
        r = httpx.post(front.url + "/api/chat", json={"message": "hi", "max_tokens": 4}, timeout=10)
        assert r.status_code == 503 and "--engine-key" in r.json()["error"]["message"]
    finally:
        front.stop()


@pytest.mark.parametrize("engine", ["http://x/v1", "openai:", "openai:ftp://x", "vllm:http://x"])
def test_bad_engine_flag_is_a_message(tmp_path, engine):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "nanochat_lite", "serve", "--port", "0",
                        "--db", str(tmp_path / "c.sqlite3"), "--engine", engine],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "expected openai:URL" in r.stderr and "Traceback" not in r.stderr
