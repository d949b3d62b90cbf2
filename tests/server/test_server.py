"""A real `nanochat-lite serve` process with the real model, driven by real clients:
httpx (REST and SSE), the official `openai` package, and `websockets`."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest
from websockets.sync.client import connect

from serverproc import ServerProc

LONG = {"message": "Write the numbers from 1 to 500, separated by commas.", "temperature": 0,
        "repeat_penalty": 1.0, "max_tokens": 1500}


@pytest.fixture(scope="module")
def server(tmp_path_factory, chat_model_path):
    tmp = tmp_path_factory.mktemp("server")
    # --resume-window 0: the disconnect tests below expect a dropped client to cancel its
    # answer at once (the resume window has its own tests: test_resume_server.py).
    with ServerProc(tmp, "--threads", "2", "--resume-window", "0") as s:  # the default model
        yield s


def post(server, path, body, timeout=60.0):
    return httpx.post(server.url + path, json=body, timeout=timeout)


def sse_events(response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[6:]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# Waiting for the engine to go idle is a wait, not a speed bound: on a shared 2-core
# machine a second can pass before a stop lands. Whether the generation really stopped
# is checked in tokens: an answer that ran on would reach max_tokens (LONG: 1500).
IDLE_WAIT_S = 120.0
STOPPED_WELL_BEFORE = LONG["max_tokens"] // 2


def assert_stopped_early(server, before: dict) -> dict:
    """Once idle: one more cancelled request, and the engine stopped far short of max_tokens.

    A client that leaves gets no Done, so the server counts none of that answer's tokens;
    the tokens the engine could still have made are the seconds it took to go idle times
    its own measured decode speed. Both scale alike when the machine is busy.
    """
    took = server.wait_idle(within=IDLE_WAIT_S)
    deadline = time.monotonic() + IDLE_WAIT_S  # the request's books close just after its last token
    while (after := server.stats())["requests"]["cancelled"] == before["requests"]["cancelled"]:
        assert time.monotonic() < deadline, f"no cancelled request counted: {after['requests']}"
        time.sleep(0.02)
    tokens_per_s = decode_speed(server)
    assert took * tokens_per_s < STOPPED_WELL_BEFORE, (took, tokens_per_s)
    return after


def decode_speed(server) -> float:
    """The server's own tokens/s (mean of the answers it finished; one short answer if none yet)."""
    if not server.stats()["decode_tokens_per_s"]["mean"]:
        post(server, "/api/chat", {"message": "Count to twenty.", "max_tokens": 24}, timeout=600)
    tokens_per_s = server.stats()["decode_tokens_per_s"]["mean"]
    assert tokens_per_s, server.stats()
    return float(tokens_per_s)


def test_health_and_models(server):
    h = httpx.get(server.url + "/api/health").json()
    assert h["status"] == "ok" and h["model"] == "smollm2-135m-instruct" and h["uptime"] >= 0
    m = httpx.get(server.url + "/v1/models").json()
    assert m["object"] == "list" and m["data"][0]["id"] == "smollm2-135m-instruct"


def test_api_chat_returns_a_real_answer(server):
    r = post(server, "/api/chat", {"message": "What is the capital of France? Answer in one sentence.",
                                   "temperature": 0, "max_tokens": 40})
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True
    d = body["data"]
    assert "Paris" in d["message"]
    assert d["model"] == "smollm2-135m-instruct"
    assert d["tokens"] == d["usage"]["completionTokens"] > 0
    assert d["usage"]["totalTokens"] == d["usage"]["promptTokens"] + d["usage"]["completionTokens"]
    assert d["processingTime"] > 0 and len(d["conversation_id"]) == 32


def test_conversation_continues_with_its_history(server):
    first = post(server, "/api/chat", {"message": "My name is Zorblax.", "max_tokens": 20, "temperature": 0}).json()
    cid = first["data"]["conversation_id"]
    # No repeat penalty here: llama.cpp counts the prompt in its window, and the name
    # the model must repeat is in the prompt.
    second = post(server, "/api/chat", {"message": "What is my name?", "conversation_id": cid,
                                        "max_tokens": 20, "temperature": 0, "repeat_penalty": 1.0}).json()
    assert second["data"]["conversation_id"] == cid
    # The second prompt holds the first turn (question and answer) plus the new message.
    u1, u2 = first["data"]["usage"], second["data"]["usage"]
    assert u2["promptTokens"] > u1["promptTokens"] + u1["completionTokens"]
    assert "Zorblax" in second["data"]["message"]


def test_unknown_conversation_is_404(server):
    r = post(server, "/api/chat", {"message": "hi", "conversation_id": "0" * 32})
    assert r.status_code == 404 and r.json()["error"]["code"] == "conversation_not_found"


def test_api_chat_stream(server):
    with httpx.stream("POST", server.url + "/api/chat", json={"message": "Say hello.", "stream": True,
                                                              "max_tokens": 30}, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[0]["type"] == "start" and events[0]["conversation_id"]
    tokens = [e["text"] for e in events if e["type"] == "token"]
    done = events[-1]
    assert done["type"] == "done" and tokens
    assert "".join(tokens) == done["message"]
    assert done["usage"]["completionTokens"] >= 1 and done["timings"]["ttft_ms"] > 0


def test_context_overflow_is_a_400(server):
    r = post(server, "/api/chat", {"message": "🙂" * 7000})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_overflow"


def test_openai_client_non_stream(server, openai_client):
    client = openai_client(base_url=server.url + "/v1", api_key="unused")
    resp = client.chat.completions.create(
        model="smollm2-135m-instruct", max_tokens=40, temperature=0,
        messages=[{"role": "system", "content": "You answer in one sentence."},
                  {"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_openai_client_stream(server, openai_client):
    client = openai_client(base_url=server.url + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct", max_tokens=30, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Say hello."}])
    text, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    assert "".join(text).strip()
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens >= 1


def test_openai_stream_ends_with_done(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": True}) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert events[-2]["usage"]["total_tokens"] > 0


def test_openai_errors_have_openai_shape(server, openai_client):
    client = openai_client(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], temperature=5)
    assert "temperature" in str(e.value)


def test_websocket_protocol(server):
    with connect(server.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}
        ws.send("not json")
        err = json.loads(ws.recv(timeout=10))
        assert err["type"] == "error" and err["code"] == "invalid_json"
        ws.send(json.dumps({"type": "chat", "message": "Say hello.", "max_tokens": 20}))
        frames = []
        while True:
            f = json.loads(ws.recv(timeout=60))
            frames.append(f)
            if f["type"] in ("done", "error"):
                break
        assert frames[0]["type"] == "start"
        done = frames[-1]
        assert done["type"] == "done", frames
        assert "".join(f["text"] for f in frames if f["type"] == "token") == done["message"]
        assert done["usage"]["completionTokens"] >= 1
        # Continue the same conversation over the socket.
        ws.send(json.dumps({"type": "chat", "message": "Again.", "max_tokens": 5,
                            "conversation_id": done["conversation_id"]}))
        start = json.loads(ws.recv(timeout=60))
        # Resumable answers (docs/protocol.md) add seq 0, answer_id and events_url.
        assert start == {"type": "start", "conversation_id": done["conversation_id"], "model": "smollm2-135m-instruct",
                         "seq": 0, "answer_id": start["answer_id"],
                         "events_url": f"/api/answers/{start['answer_id']}/events"}
        assert start["answer_id"] != frames[0]["answer_id"]
        while json.loads(ws.recv(timeout=60))["type"] != "done":
            pass


def test_websocket_stop_ends_generation(server):
    before = server.stats()
    with connect(server.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "chat", **LONG}))
        assert json.loads(ws.recv(timeout=60))["type"] == "start"
        for _ in range(5):
            assert json.loads(ws.recv(timeout=60))["type"] == "token"
        ws.send(json.dumps({"type": "stop"}))
        while True:
            f = json.loads(ws.recv(timeout=10))
            if f["type"] == "done":
                break
        assert f["finish_reason"] == "cancelled"
        assert f["usage"]["completionTokens"] < 1500
    after = assert_stopped_early(server, before)
    # The engine stopped where the done frame says: no tokens generated after it.
    assert after["tokens"]["completion"] - before["tokens"]["completion"] == f["usage"]["completionTokens"]


def test_websocket_close_ends_generation(server):
    before = server.stats()
    with connect(server.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "chat", **LONG}))
        for _ in range(5):
            ws.recv(timeout=60)
    assert_stopped_early(server, before)


def test_sse_disconnect_ends_generation(server):
    before = server.stats()
    with httpx.stream("POST", server.url + "/api/chat", json={**LONG, "stream": True}, timeout=60) as r:
        n = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                n += 1
            if n >= 5:
                break
    assert_stopped_early(server, before)


def test_openai_stream_disconnect_ends_generation(server):
    before = server.stats()
    body = {"messages": [{"role": "user", "content": LONG["message"]}], "temperature": 0, "repeat_penalty": 1.0,
            "max_tokens": 1500, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 8:
                break
    assert_stopped_early(server, before)


def stored_text(server, client_id: str) -> str:
    """The text the store holds so far for the answer to user message `client_id` (saved
    as it streams, a plain JSON request's too); "" while there is none."""
    listed = httpx.get(server.url + "/api/conversations?limit=5", timeout=10).json()["data"]["conversations"]
    for c in listed:  # newest first: ours is among them
        messages = httpx.get(f"{server.url}/api/conversations/{c['id']}", timeout=10).json()["data"]["messages"]
        if any(m["client_id"] == client_id for m in messages):
            return "".join(m["content"] for m in messages if m["role"] == "assistant")
    return ""


def test_non_stream_disconnect_ends_generation(server):
    before = server.stats()
    client_id = f"disconnect-{time.monotonic_ns()}"
    body = json.dumps({**LONG, "client_id": client_id}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    # Leave once tokens are flowing (past the prompt): the answer's first text is stored.
    deadline = time.monotonic() + 60  # only against a hang
    while not stored_text(server, client_id):
        assert time.monotonic() < deadline, f"no token stored within 60 s: {server.stats()['requests']}"
        time.sleep(0.05)
    sock.close()
    assert_stopped_early(server, before)


def test_health_answers_while_generating(server):
    def background_answer() -> None:
        # 300 tokens: seconds on a quiet machine, minutes on a busy one. How it ends does
        # not matter here, only that it is being generated while /api/health is asked.
        try:
            post(server, "/api/chat", {**LONG, "max_tokens": 300}, timeout=600)
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=background_answer)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while server.stats()["requests"]["generating"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.stats()["requests"]["generating"] == 1
        assert httpx.get(server.url + "/api/health", timeout=5).status_code == 200
        # Answered while the same answer is still being generated (300 tokens: seconds),
        # not after it: the event loop is not blocked by generation.
        assert server.stats()["requests"]["generating"] == 1
    finally:
        t.join(610)


def test_concurrent_requests_queue_fairly(tmp_path, chat_model_path):
    """One slot: requests that arrive while it is busy are answered first come, first served."""
    order: list[int] = []
    results: dict[int, dict] = {}

    with ServerProc(tmp_path, "--threads", "2", "--parallel", "1") as one_slot:
        def ask(i: int) -> None:
            # The first holds the slot (60 tokens: a second or more) while the others arrive.
            body = {**LONG, "max_tokens": 60} if i == 0 else {"message": f"Say the number {i}.", "max_tokens": 10}
            try:
                results[i] = post(one_slot, "/api/chat", body, timeout=600).json()
            except Exception as e:  # reported by the assertion below
                results[i] = {"success": False, "error": repr(e)}
            order.append(i)

        def wait_for(what: str, n: int) -> None:
            deadline = time.monotonic() + 60
            while one_slot.stats()["requests"][what] < n:
                assert time.monotonic() < deadline, f"never {n} {what}: {one_slot.stats()['requests']}"
                time.sleep(0.01)

        first = threading.Thread(target=ask, args=(0,))
        first.start()
        wait_for("generating", 1)
        threads = [first]  # the others queue behind it, in a known order of arrival
        for i in (1, 2, 3):
            t = threading.Thread(target=ask, args=(i,))
            t.start()
            threads.append(t)
            wait_for("queued", i)
        for t in threads:
            t.join(610)
    assert all(results.get(i, {}).get("success") for i in range(4)), results
    assert order == [0, 1, 2, 3], order


def test_stats_reflect_traffic(server):
    before = server.stats()
    post(server, "/api/chat", {"message": "Hi", "max_tokens": 5})
    after = server.stats()
    assert after["requests"]["total"] == before["requests"]["total"] + 1
    assert after["tokens"]["completion"] > before["tokens"]["completion"]
    assert after["latency_ms"]["p50"] > 0 and after["latency_ms"]["p99"] >= after["latency_ms"]["p50"]
    assert after["ttft_ms"]["p95"] > 0
    assert after["decode_tokens_per_s"]["mean"] > 0
    assert after["memory"]["rss_bytes"] > 50_000_000
    assert after["startup_ms"] > 0


def test_tokenize_matches_llama_cpp_and_usage(server, llama_ref):
    text = "Héllo wörld! 12345 <|im_start|> 🙂 こんにちは"
    r = httpx.post(server.url + "/api/tokenize", json={"text": text, "with_pieces": True}).json()
    ids = [t["id"] for t in r["tokens"]]
    assert ids == llama_ref.tokenize(text)
    assert r["count"] == len(ids)
    assert "".join(t["text"] for t in r["tokens"][:2]).startswith("H")
    special = httpx.post(server.url + "/api/tokenize", json={"text": "<|im_start|>", "special": True,
                                                             "with_pieces": False}).json()
    assert special == {"tokens": [1], "count": 1}
    back = httpx.post(server.url + "/api/detokenize", json={"tokens": ids}).json()
    assert back == {"text": text}
    bad = httpx.post(server.url + "/api/detokenize", json={"tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_token"
    # The chat's promptTokens equal llama.cpp's count of the rendered prompt.
    d = post(server, "/api/chat", {"message": text, "max_tokens": 1}).json()["data"]
    prompt = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
              "<|im_start|>user\n")
    expected = (len(llama_ref.tokenize(prompt, special=True))
                + len(llama_ref.tokenize(text))
                + len(llama_ref.tokenize("<|im_end|>\n<|im_start|>assistant\n", special=True)))
    assert d["usage"]["promptTokens"] == expected
