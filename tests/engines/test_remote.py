"""RemoteEngine (nanochat_lite/engines/remote.py) on its own.

Against a real upstream (a second `nanochat-lite serve` process, which is
OpenAI-compatible): deltas add up to the answer, token counts are the upstream's,
cancelling closes the connection and the upstream counts the generation cancelled,
keep-alive connections are reused. Against an unreachable port: a 503-class error
within 5 s. Against a scripted HTTP server in this file (for answers a healthy
upstream never gives): each kind of upstream error maps to the right EngineError,
a stream without usage, a stream cut off, a context overflow fitted by dropping the
oldest turns.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from serverproc import ServerProc, free_port

from nanochat_lite.engines.openai_client import drop_oldest
from nanochat_lite.engines.remote import (
    EngineBusy,
    EngineProtocolError,
    EngineRejected,
    EngineUnavailable,
    RemoteEngine,
    Upstream,
)
from nanochat_lite.generation import ContextOverflow, Delta, Done, EngineError, SamplingParams

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0, max_tokens=24)


def run(engine: RemoteEngine, messages: list[dict], params: SamplingParams = GREEDY,
        cancel: threading.Event | None = None) -> tuple[list[Delta], Done]:
    events: list[Delta | Done] = []
    done = engine.run(engine.prepare(messages, params), params, emit=events.append, cancel=cancel)
    assert events[-1] is done
    return [e for e in events if isinstance(e, Delta)], done


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# -- a real upstream ---------------------------------------------------------------

@pytest.fixture(scope="module")
def upstream(tmp_path_factory, chat_model_path) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("upstream"), "--threads", "1", "--parallel", "2") as s:
        yield s


@pytest.fixture(scope="module")
def remote(upstream) -> Iterator[RemoteEngine]:
    engine = RemoteEngine(upstream.url, parallel=2)
    yield engine
    engine.close()


def test_answer_and_counts_are_the_upstreams(remote, upstream):
    import httpx

    assert remote.name == "smollm2-135m-instruct"  # learnt from its /v1/models
    assert remote.health()["state"] == "ok"
    deltas, done = run(remote, user("What is the capital of France?"))
    direct = httpx.post(upstream.url + "/v1/chat/completions", timeout=60, json={
        "messages": user("What is the capital of France?"), "max_tokens": 24, "temperature": 0,
        "repeat_penalty": 1.0, "top_k": GREEDY.top_k, "top_p": GREEDY.top_p, "min_p": GREEDY.min_p}).json()
    # Greedy: the same text as asking the upstream directly, token counts from its usage.
    assert done.text == direct["choices"][0]["message"]["content"] == "".join(d.text for d in deltas)
    assert (done.prompt_tokens, done.completion_tokens) == (direct["usage"]["prompt_tokens"],
                                                            direct["usage"]["completion_tokens"])
    assert len(deltas) >= 3 and done.finish_reason in ("stop", "length")
    assert 0 < done.ttft_ms <= done.total_ms and done.decode_tokens_per_s > 0


def test_stop_strings_and_max_tokens_reach_the_upstream(remote):
    _, done = run(remote, user("Count from 1 to 20, separated by commas."), GREEDY.with_overrides(max_tokens=5))
    assert done.completion_tokens == 5 and done.finish_reason == "length"
    _, done = run(remote, user("Count from 1 to 20, separated by commas."),
                  GREEDY.with_overrides(max_tokens=60, stop=("5",)))
    assert "5" not in done.text and done.finish_reason == "stop" and "4" in done.text


def test_cancel_closes_the_upstream_request(remote, upstream):
    before = upstream.stats()["requests"]["cancelled"]
    cancel = threading.Event()
    params = SamplingParams(max_tokens=400)
    prep = remote.prepare(user("Write a very long story about a dragon."), params)
    seen: list[Delta | Done] = []

    def emit(ev: Delta | Done) -> None:
        seen.append(ev)
        if len(seen) == 3:
            cancel.set()

    done = remote.run(prep, params, emit=emit, cancel=cancel)
    assert done.finish_reason == "cancelled" and done.completion_tokens < 50
    upstream.wait_idle(60.0)  # the upstream stopped generating ... (60 s: a hang guard only)
    deadline = time.monotonic() + 60
    while upstream.stats()["requests"]["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.stats()["requests"]["cancelled"] == before + 1  # ... because its client went away


class CountingProxy:
    """A TCP relay in front of the upstream, which sees what the upstream sees: each
    connection the engine opens, the requests each one carries (request lines
    counted in what the client sends), and how many are open at once."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: list[int] = []  # per connection, in the order they were opened
        self.open = self.max_open = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                index = len(self.requests)
                self.requests.append(0)
                self.open += 1
                self.max_open = max(self.max_open, self.open)
            self._start(self._connection, client, index)

    def _connection(self, client: socket.socket, index: int) -> None:
        with client, socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
            back = threading.Thread(target=self._relay, args=(upstream, client, None), daemon=True)
            back.start()
            self._relay(client, upstream, index)
            back.join()
        with self._lock:
            self.open -= 1

    def _relay(self, src: socket.socket, dst: socket.socket, index: int | None) -> None:
        try:
            while data := src.recv(65536):
                if index is not None:  # client -> upstream: count request lines
                    with self._lock:
                        self.requests[index] += data.count(b" HTTP/1.1\r\n")
                dst.sendall(data)
        except OSError:
            pass
        finally:  # one side is done: so is the other
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        for t in self._threads:
            t.join(10)


@pytest.fixture
def proxied(upstream) -> Iterator[tuple[RemoteEngine, CountingProxy]]:
    proxy = CountingProxy(upstream.port)
    engine = RemoteEngine(proxy.url, parallel=2, probe=False)  # no probe loop: only requests count
    yield engine, proxy
    engine.close()
    proxy.close()


def test_connections_are_reused(proxied):
    engine, proxy = proxied
    assert proxy.requests == [1]  # the start-up GET /models, on a connection of its own (closed)
    run(engine, user("Hi"), GREEDY.with_overrides(max_tokens=2))
    run(engine, user("Hello"), GREEDY.with_overrides(max_tokens=2))
    # The upstream saw one more connection, carrying both chats: the second reused the first's.
    assert proxy.requests == [1, 2], proxy.requests


def test_parallel_requests(proxied):
    engine, proxy = proxied
    results: list[Done] = []
    start = threading.Barrier(4)

    def one(i: int) -> None:
        start.wait()
        results.append(run(engine, user(f"Count from {i} to {i + 20}, separated by commas."))[1])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 4 and all(d.completion_tokens > 0 for d in results)
    # They overlapped: four connections, one request each (the engine opens one only when
    # none is idle), open at the upstream at once (it answers two at a time, the other
    # two wait in its queue), none waiting for another inside the engine.
    assert proxy.requests == [1, 1, 1, 1, 1] and proxy.max_open >= 4, (proxy.max_open, proxy.requests)


def test_unreachable_upstream_is_unavailable_within_5s():
    t0 = time.monotonic()
    engine = RemoteEngine(f"http://127.0.0.1:{free_port()}/v1", model="m", probe=False)
    assert engine.health()["state"] == "unreachable"
    with pytest.raises(EngineUnavailable, match="cannot be reached: Connection refused") as e:
        engine.prepare(user("hi"), GREEDY)
    assert e.value.status == 503 and e.value.code == "engine_unavailable"
    assert time.monotonic() - t0 < 5
    engine.close()


def test_hung_upstream_is_unavailable_within_5s():
    """An upstream that takes connections and never answers (a listen backlog nobody
    accepts from): the probe times out and requests are refused, not left waiting."""
    import socket

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        t0 = time.monotonic()
        engine = RemoteEngine(f"http://127.0.0.1:{hung.getsockname()[1]}/v1", model="m", probe=False,
                              connect_timeout=1.0)
        with pytest.raises(EngineUnavailable, match="did not answer: timed out"):
            engine.prepare(user("hi"), GREEDY)
        assert time.monotonic() - t0 < 5
        assert engine.health()["state"] == "unreachable"
        engine.close()


@pytest.mark.parametrize(("url", "expect"), [
    ("http://gpu:8000", "http://gpu:8000/v1"),
    ("http://gpu:8000/", "http://gpu:8000/v1"),
    ("https://api.example.org/openai/v1/", "https://api.example.org:443/openai/v1"),
    ("http://[::1]:11434/v1", "http://[::1]:11434/v1"),
])
def test_upstream_urls(url, expect):
    assert Upstream.parse(url).url == expect


@pytest.mark.parametrize("url", ["gpu:8000", "ftp://gpu/v1", "http://user:pw@gpu/v1", "http://gpu:99999/v1",
                                 "http://gpu/v1?key=1", ""])
def test_bad_upstream_urls(url):
    with pytest.raises(ValueError):
        Upstream.parse(url)


def test_drop_oldest_keeps_system_and_last():
    msgs = [{"role": "system", "content": "S"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": str(i)} for i in range(7)]
    fewer = drop_oldest(msgs)
    assert fewer is not None and fewer[0]["content"] == "S" and fewer[-1]["content"] == "6"
    assert fewer[1]["role"] == "user" and len(fewer) < len(msgs)
    assert drop_oldest([{"role": "system", "content": "S"}, {"role": "user", "content": "u"}]) is None


# -- a scripted upstream, for answers a healthy one never gives ----------------------

Handler = Callable[[http.server.BaseHTTPRequestHandler, dict], None]


class Scripted:
    """An HTTP server on a free loopback port whose POST answers come from `self.handler`."""

    def __init__(self) -> None:
        self.handler: Handler = lambda h, body: None
        self.bodies: list[dict] = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                send_json(self, 200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                outer.handler(self, body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_json(h: http.server.BaseHTTPRequestHandler, status: int, body: object) -> None:
    raw = json.dumps(body).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(raw)))
    h.end_headers()
    h.wfile.write(raw)


def send_stream(h: http.server.BaseHTTPRequestHandler, lines: list[bytes], *, close: bool = False) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/event-stream")
    h.send_header("Connection", "close")
    h.end_headers()
    for line in lines:
        h.wfile.write(line)
        h.wfile.flush()
    if close:
        h.close_connection = True


def chunk(text: str | None = None, finish: str | None = None, **extra: object) -> bytes:
    delta = {"content": text} if text is not None else {}
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                                   **extra}).encode() + b"\n\n"


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    s = Scripted()
    yield s
    while _made:
        _made.pop().close()
    s.close()


@pytest.mark.parametrize(("status", "body", "error", "says"), [
    (400, {"error": {"message": "temperature is too hot", "type": "invalid_request_error"}},
     EngineRejected, "temperature is too hot"),
    (401, {"error": {"message": "bad key"}}, EngineUnavailable, "--engine-key"),
    (404, {"error": {"message": "The model `x` does not exist."}}, EngineUnavailable, "--engine-model"),
    (429, {"error": {"message": "slow down"}}, EngineBusy, "slow down"),
    (500, {"detail": "CUDA out of memory"}, EngineUnavailable, "CUDA out of memory"),
    (503, "Service Unavailable", EngineUnavailable, "Service Unavailable"),
])
def test_upstream_errors_map_to_ours(scripted, status, body, error, says):
    scripted.handler = lambda h, b: send_json(h, status, body)
    engine = scripted_engine(scripted)
    with pytest.raises(error, match=says) as e:
        run(engine, user("hi"))
    assert e.value.status == {EngineRejected: 400, EngineUnavailable: 503, EngineBusy: 503}[error]


def test_stream_without_usage_counts_chunks(scripted):
    scripted.handler = lambda h, b: send_stream(h, [chunk("Hel"), chunk("lo"), chunk("!"), chunk(finish="stop"),
                                                    b"data: [DONE]\n\n"])
    deltas, done = run(scripted_engine(scripted), user("hi"))
    assert [d.text for d in deltas] == ["Hel", "lo", "!"]
    assert (done.text, done.completion_tokens, done.finish_reason) == ("Hello!", 3, "stop")
    body = scripted.bodies[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "scripted" and body["messages"] == user("hi")
    assert body["temperature"] == 0 and body["max_tokens"] == 24 and body["repeat_penalty"] == 1.0


_made: list[RemoteEngine] = []


def scripted_engine(s: Scripted) -> RemoteEngine:
    engine = RemoteEngine(s.url, probe=False)
    _made.append(engine)
    return engine


def test_stream_cut_off_is_unavailable(scripted):
    scripted.handler = lambda h, b: send_stream(h, [chunk("Hel")], close=True)
    with pytest.raises(EngineUnavailable, match="ended the stream"):
        run(scripted_engine(scripted), user("hi"))


def test_garbage_stream_is_a_protocol_error(scripted):
    scripted.handler = lambda h, b: send_stream(h, [b"data: <html>oops</html>\n\n"])
    with pytest.raises(EngineProtocolError) as e:
        run(scripted_engine(scripted), user("hi"))
    assert e.value.status == 502


def test_error_event_mid_stream(scripted):
    scripted.handler = lambda h, b: send_stream(h, [chunk("a"), b'error: {"message": "slot crashed"}\n\n'])
    with pytest.raises(EngineUnavailable, match="slot crashed"):
        run(scripted_engine(scripted), user("hi"))


def test_cancel_while_the_upstream_has_not_answered_yet(scripted):
    """A cancel during the wait for the first byte (a long prefill, a queue) returns
    `cancelled` and closes the connection. The upstream here takes the request and never
    sends a byte, so a run that waited for one would never return: no clock needed, only
    events (each wait's limit guards against a hang, it measures nothing)."""
    received, closed = threading.Event(), threading.Event()

    def silent(h: http.server.BaseHTTPRequestHandler, body: dict) -> None:
        received.set()
        h.close_connection = True
        h.connection.settimeout(120)  # a hang guard: the client should close long before
        try:
            gone = h.connection.recv(1) == b""  # EOF: the client closed its side
        except ConnectionError:
            gone = True
        except TimeoutError:
            gone = False
        if gone:
            closed.set()

    scripted.handler = silent
    engine = scripted_engine(scripted)
    params = GREEDY.with_overrides(max_tokens=200)
    prep = engine.prepare(user("Summarise this. " + "The quick brown fox jumps over the lazy dog. " * 150), params)
    cancel = threading.Event()
    result: list[Done] = []
    seen: list[Delta | Done] = []
    worker = threading.Thread(target=lambda: result.append(engine.run(prep, params, emit=seen.append, cancel=cancel)),
                              daemon=True)
    worker.start()
    assert received.wait(60), "the request never reached the upstream"
    assert not result, "run() returned before the upstream answered anything"
    cancel.set()
    worker.join(60)
    assert not worker.is_alive(), "run() still waits for the upstream's first byte after the cancel"
    (done,) = result
    assert done.finish_reason == "cancelled" and done.completion_tokens == 0 and seen == [done]
    assert closed.wait(60), "the upstream never saw the connection closed"


def test_context_overflow_drops_the_oldest_turns(scripted):
    def handler(h, body) -> None:
        if len(body["messages"]) > 3:
            send_json(h, 400, {"error": {"message": "the request exceeds the available context size",
                                         "code": "context_length_exceeded"}})
        else:
            send_stream(h, [chunk("ok", "stop", usage={"prompt_tokens": 9, "completion_tokens": 1}),
                            b"data: [DONE]\n\n"])

    scripted.handler = handler
    msgs = [{"role": "system", "content": "S"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(9)]
    _, done = run(scripted_engine(scripted), msgs)
    sent = scripted.bodies[-1]["messages"]
    assert done.text == "ok" and done.prompt_tokens == 9 and done.dropped_messages == len(msgs) - len(sent)
    assert sent[0]["content"] == "S" and sent[-1]["content"] == "m8" and len(sent) <= 3
    # A single message that cannot fit is a ContextOverflow (the server's 400).
    scripted.handler = lambda h, b: send_json(h, 400, {"error": {"message": "too long",
                                                                 "code": "context_length_exceeded"}})
    with pytest.raises(ContextOverflow):
        run(scripted_engine(scripted), user("x" * 100))


def test_schema_logprobs_and_bias_are_sent_the_openai_way(scripted):
    scripted.handler = lambda h, b: send_stream(h, [chunk("{}", "stop"), b"data: [DONE]\n\n"])
    params = GREEDY.with_overrides(json_schema={"type": "object"}, n_probs=2, logit_bias=((7, False), (9, 1.5)),
                                   stop=("END",))
    run(scripted_engine(scripted), user("json please"), params)
    body = scripted.bodies[-1]
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    assert body["logit_bias"] == {"7": -100, "9": 1.5} and body["stop"] == ["END"]


def test_token_prompts_are_refused_clearly(scripted):
    with pytest.raises(EngineError, match="send the prompt as text"):
        scripted_engine(scripted).prepare_tokens([1, 2, 3], GREEDY)
