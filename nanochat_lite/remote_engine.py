"""A remote engine: generation by any OpenAI-compatible server upstream.

`RemoteEngine` speaks the engine surface the scheduler and the server use
(`prepare`, `run`, `erase_slot`; see `scheduler.EngineLike`), so the front keeps its
page, WebSocket, APIs, conversations, limits, auth and stats, and the tokens come
from vLLM, llama-server, Ollama or another Nanochat-Lite. `run` posts to the
upstream's `/chat/completions` (or `/completions` for a raw prompt) with
`stream: true` and `stream_options.include_usage`, turns its chunks into `Delta`s and
a `Done`, and closes the connection when the request is cancelled (the upstream then
stops generating). Token counts are the upstream's `usage`; timings are measured here.

What it does not do:
  - templates or tokenizing: the messages go upstream as they are and the upstream
    applies its own chat template; a conversation longer than the upstream's context
    is fitted by dropping its oldest turns and asking again, only when the upstream
    says it overflowed (before any text was sent);
  - token-id prompts (the front does not know the upstream's vocabulary);
  - slots: the upstream batches and caches as it likes. The scheduler's `parallel`
    is how many requests are in flight upstream at once; `erase_slot` has nothing to do.

Errors become `EngineError`s with a `status` the server answers with: an upstream
that cannot be reached, or answers 5xx, 401/403/404 (its key or model name is set up
wrong), is `EngineUnavailable` (503 `engine_unavailable`); a 4xx about the request
is `EngineRejected` (400, with the upstream's message). A background probe
(`GET /models`) keeps `health()` current for `/api/health`.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .engine import ContextOverflow, Delta, Done, EngineError, Prepared, SamplingParams

log = logging.getLogger("nanochat_lite")

CONNECT_TIMEOUT_S = 3.0  # a down upstream is a 503 well within 5 s
READ_TIMEOUT_S = 300.0  # silence from a connected upstream (a long prefill, its queue) before giving up
PROBE_INTERVAL_S = 2.0  # health probe period while nothing else talks to the upstream
FRESH_S = 1.0  # an upstream heard from this recently is not probed before a request
POOL_IDLE_S = 2.0  # keep-alive connections older than this are not reused (servers close them at ~5 s)
FIT_ATTEMPTS = 6  # context-overflow retries, each dropping more of the oldest turns
MAX_ERROR_CHARS = 500  # of an upstream's error message, quoted in ours
# The scheduler reserves prompt + answer tokens in a KV pool of this size; the upstream
# manages its own cache, so the pool is made large enough never to hold a request back.
UNBOUNDED_POOL = 1 << 40


class EngineUnavailable(EngineError):
    """The upstream cannot serve now: unreachable, failing, or set up wrong."""

    code = "engine_unavailable"
    status = 503


class EngineRejected(EngineError):
    """The upstream refused this request (a 4xx about its content)."""

    code = "invalid_request"
    status = 400


class EngineBusy(EngineError):
    """The upstream said 429: too many requests."""

    code = "server_busy"
    status = 503


class EngineProtocolError(EngineError):
    """The upstream's answer was not the OpenAI stream it should be."""

    code = "engine_protocol_error"
    status = 502


@dataclass
class RemotePrepared(Prepared):
    """A request for the upstream: the conversation as it is, or a raw prompt."""

    messages: list[dict[str, str]] | None = None  # chat: sent to /chat/completions
    prompt: str | None = None  # legacy: sent to /completions


@dataclass(frozen=True)
class Upstream:
    """Where the upstream is. `parse("http://gpu:8000")` -> base path "/v1"."""

    scheme: str
    host: str
    port: int
    base: str  # path prefix of the OpenAI routes, e.g. "/v1"

    @classmethod
    def parse(cls, url: str) -> "Upstream":
        """An OpenAI base URL; a URL without a path means its `/v1`. Raises ValueError."""
        u = urllib.parse.urlsplit(url.strip())
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL: expected e.g. http://127.0.0.1:8000/v1")
        if u.query or u.fragment or u.username or u.password:
            raise ValueError(f"{url!r}: give the key with --engine-key, and no query or fragment")
        try:
            port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"{url!r} has an invalid port") from None
        base = u.path.rstrip("/") or "/v1"
        return cls(u.scheme, u.hostname, port, base)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base}"


class RemoteEngine:
    """The engine surface over an OpenAI-compatible server. Thread-safe."""

    def __init__(self, url: str, *, key: str | None = None, model: str | None = None, parallel: int = 10,
                 connect_timeout: float = CONNECT_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S,
                 probe: bool = True) -> None:
        """`url` is the upstream's OpenAI base URL (`http://host:8000/v1`). Without a
        `model`, the upstream's first listed model is used (asked now, briefly)."""
        self.upstream = Upstream.parse(url)
        self.key = key or None
        self.model = model or None
        self.parallel = max(1, parallel)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # What the server's reports read of an engine; unknown here, told by the upstream.
        self.n_ctx = 0
        self.kv_size = UNBOUNDED_POOL
        self.n_vocab: int | None = None
        self.tokenizer: Any = None  # the server may hand one over; unused (the upstream tokenizes)
        self.closed = False
        self._ssl = ssl.create_default_context() if self.upstream.scheme == "https" else None
        self._lock = threading.Lock()
        self._pool: list[tuple[http.client.HTTPConnection, float]] = []  # idle keep-alive connections
        self._state = "unknown"  # "ok" | "unreachable" | "error"
        self._error: str | None = None
        self._last_ok = 0.0  # monotonic time the upstream last answered well
        self._checked = 0.0  # monotonic time of the last probe
        self._active = 0
        self._watched: dict[int, tuple[threading.Event, socket.socket]] = {}
        self._watch_cv = threading.Condition()
        threading.Thread(target=self._watch, name="nanochat-remote-cancel", daemon=True).start()
        self.probe()
        if probe:
            threading.Thread(target=self._probe_loop, name="nanochat-remote-probe", daemon=True).start()

    @property
    def name(self) -> str:
        return self.model or f"openai:{self.upstream.host}"

    @property
    def busy(self) -> bool:
        return self._active > 0

    def close(self) -> None:
        self.closed = True
        with self._lock:
            pool, self._pool = self._pool, []
        for conn, _ in pool:
            conn.close()
        with self._watch_cv:
            self._watch_cv.notify_all()

    # -- health -------------------------------------------------------------------
    def health(self) -> dict:
        """The upstream's state as last seen (never blocks): for /api/health and /api/stats."""
        return {"engine": "openai", "url": self.upstream.url, "model": self.model, "state": self._state,
                "error": self._error, "checked_s_ago": round(time.monotonic() - self._checked, 1)
                if self._checked else None}

    @property
    def available(self) -> bool:
        return self._state == "ok"

    def probe(self) -> bool:
        """Ask the upstream for its models (GET /models); updates the state. Learns the
        model name when none was given. True when it answered 200."""
        self._checked = time.monotonic()
        try:
            conn = self._connect()
        except EngineUnavailable as e:
            self._mark("unreachable", str(e))
            return False
        try:
            assert conn.sock is not None
            conn.sock.settimeout(self.connect_timeout)  # a probe is answered at once, or the upstream hangs
            conn.request("GET", self.upstream.base + "/models", headers=self._headers())
            resp = conn.getresponse()
            try:
                raw = resp.read(1 << 20)
            finally:
                resp.close()
        except (OSError, http.client.HTTPException) as e:
            self._mark("unreachable", f"the engine upstream at {self.upstream.url} did not answer: {_why(e)}")
            return False
        finally:
            conn.close()
        if resp.status != 200:
            err = _error_for(resp.status, raw, self.upstream.url)
            self._mark("error", str(err))
            return False
        try:
            models = [m for m in json.loads(raw).get("data") or [] if isinstance(m, dict)]
        except (ValueError, AttributeError):
            self._mark("error", f"the engine upstream at {self.upstream.url} answered GET /models with no "
                                "model list: is it an OpenAI-compatible server?")
            return False
        if self.model is None and models and isinstance(models[0].get("id"), str):
            self.model = models[0]["id"]
        for m in models:
            if m.get("id") == self.model and isinstance(m.get("max_model_len"), int):  # vLLM tells it
                self.n_ctx = m["max_model_len"]
        self._mark("ok", None)
        return True

    def _mark(self, state: str, error: str | None) -> None:
        if state != self._state and state != "ok":
            log.warning("engine upstream %s: %s", self.upstream.url, error)
        elif state != self._state and self._state != "unknown":
            log.warning("engine upstream %s: available again", self.upstream.url)
        self._state, self._error = state, error
        if state == "ok":
            self._last_ok = time.monotonic()

    def _probe_loop(self) -> None:
        while not self.closed:
            time.sleep(PROBE_INTERVAL_S / 2 if self._state != "ok" else PROBE_INTERVAL_S)
            if self.closed:
                return
            if self._state != "ok" or time.monotonic() - self._last_ok >= PROBE_INTERVAL_S:
                self.probe()

    # -- connections --------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        return h

    def _connect(self) -> http.client.HTTPConnection:
        """A new connection, connected (so a down upstream shows here), or EngineUnavailable."""
        up = self.upstream
        conn: http.client.HTTPConnection
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(up.host, up.port, timeout=self.connect_timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(up.host, up.port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise EngineUnavailable(f"the engine upstream at {up.url} cannot be reached: {_why(e)}. Check that "
                                    "it runs and that --engine points at it.") from None
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(self.read_timeout)
        return conn

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle keep-alive connection (reused: True) or a new one."""
        now = time.monotonic()
        with self._lock:
            while self._pool:
                conn, since = self._pool.pop()
                if now - since < POOL_IDLE_S:
                    return conn, True
                conn.close()
        return self._connect(), False

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self.closed and len(self._pool) < self.parallel:
                self._pool.append((conn, time.monotonic()))
                return
        conn.close()

    # -- cancellation -------------------------------------------------------------
    def _watch(self) -> None:
        """Shut down the socket of every cancelled request: a read blocked on the
        upstream (its queue, a long prefill) returns at once, and the upstream sees
        its client gone and stops generating."""
        while not self.closed:
            with self._watch_cv:
                while not self._watched and not self.closed:
                    self._watch_cv.wait()
                hit = [k for k, (cancel, _) in self._watched.items() if cancel.is_set()]
                socks = [self._watched.pop(k)[1] for k in hit]
            for s in socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            time.sleep(0.02)

    def _watch_add(self, key: int, cancel: threading.Event, sock: socket.socket) -> None:
        with self._watch_cv:
            self._watched[key] = (cancel, sock)
            self._watch_cv.notify_all()

    def _watch_remove(self, key: int) -> None:
        with self._watch_cv:
            self._watched.pop(key, None)

    # -- the engine surface ---------------------------------------------------------
    def prepare(self, messages: Sequence[dict[str, str]], params: SamplingParams) -> Prepared:
        """Keep the conversation for the upstream (its template, its context). Raises
        EngineUnavailable now when the upstream cannot be reached."""
        if not messages:
            raise EngineError("a conversation needs at least one message")
        self._check_reachable()
        return RemotePrepared([], 0, params.max_tokens, messages=[dict(m) for m in messages])

    def prepare_text(self, text: str, params: SamplingParams) -> Prepared:
        """A raw prompt for the upstream's /completions."""
        if not text:
            raise EngineError("the prompt is empty")
        self._check_reachable()
        return RemotePrepared([], 0, params.max_tokens, prompt=text)

    def prepare_tokens(self, tokens: Sequence[int], params: SamplingParams) -> Prepared:
        raise EngineError("token-id prompts are not supported with a remote engine (--engine openai:...): "
                          "this server does not know the upstream's vocabulary; send the prompt as text")

    def detokenize(self, ids: Sequence[int]) -> str:
        raise EngineError("detokenizing needs the model's vocabulary, which a remote engine does not have here")

    def erase_slot(self, slot: int) -> None:
        """Nothing to erase: the upstream's cache is its own."""

    def _check_reachable(self) -> None:
        """Refuse at once when the upstream is known to be unreachable (asking it again
        at most every PROBE_INTERVAL_S / 2: a hung one costs connect_timeout per probe);
        else open a connection (pooled for the request) unless it answered just now."""
        now = time.monotonic()
        if self._state == "ok" and now - self._last_ok < FRESH_S:
            return
        if self._state == "unreachable":
            if now - self._checked < PROBE_INTERVAL_S / 2 or not self.probe():
                raise EngineUnavailable(self._error or f"the engine upstream at {self.upstream.url} is unreachable")
            return
        try:
            conn = self._connect()
        except EngineUnavailable as e:
            self._mark("unreachable", str(e))
            raise
        self._give(conn)

    def run(self, prep: Prepared, params: SamplingParams, *, emit: Callable[[Delta | Done], None],
            cancel: threading.Event | None = None, slot: int = -1) -> Done:
        """Stream the answer from the upstream, calling `emit` with each Delta and then
        the Done (also returned). Blocks the calling thread; a set `cancel` closes the
        connection within ~20 ms (or at the next chunk)."""
        if not isinstance(prep, RemotePrepared):
            raise EngineError("a remote engine runs only what its own prepare() built")
        t0 = time.perf_counter()
        cancel = cancel or threading.Event()
        seed = params.seed if params.seed is not None else random.getrandbits(31)
        messages = list(prep.messages) if prep.messages is not None else None
        dropped = 0
        with self._lock:
            self._active += 1
        try:
            for attempt in range(FIT_ATTEMPTS + 1):
                try:
                    st = self._stream(prep, messages, params, seed, emit, cancel)
                    break
                except ContextOverflow:
                    # Nothing was sent to the client yet: drop the oldest turns and ask again.
                    fewer = _drop_oldest(messages) if messages is not None and attempt < FIT_ATTEMPTS else None
                    if fewer is None:
                        raise
                    dropped += len(messages) - len(fewer)  # type: ignore[arg-type]
                    messages = fewer
        finally:
            with self._lock:
                self._active -= 1
        t_end = time.perf_counter()
        n = st.completion if st.completion is not None else st.chunks
        decode_s = (st.t_last - st.t_first) if (st.t_first and st.t_last and n > 1) else 0.0
        done = Done(text="".join(st.parts), finish_reason=st.finish, prompt_tokens=st.prompt,
                    completion_tokens=n, dropped_messages=dropped,
                    ttft_ms=((st.t_first or t_end) - t0) * 1000.0, total_ms=(t_end - t0) * 1000.0,
                    decode_tokens_per_s=((n - 1) / decode_s) if decode_s > 0 else 0.0, seed=seed,
                    cached_tokens=st.cached, logprobs=st.all_probs)
        emit(done)
        return done

    def _body(self, prep: RemotePrepared, messages: list[dict[str, str]] | None, params: SamplingParams,
              seed: int) -> tuple[str, dict]:
        body: dict[str, Any] = {
            "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": prep.max_new, "temperature": params.temperature, "top_p": params.top_p,
            "frequency_penalty": params.frequency_penalty, "presence_penalty": params.presence_penalty,
            "seed": seed,
            # Not OpenAI's, but read by llama-server, vLLM, Ollama and Nanochat-Lite (an
            # upstream that does not know one ignores it). vLLM names the penalty its own way.
            "top_k": params.top_k, "min_p": params.min_p,
            "repeat_penalty": params.repeat_penalty, "repetition_penalty": params.repeat_penalty,
        }
        if self.model:
            body["model"] = self.model
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logit_bias:
            body["logit_bias"] = {str(t): (-100 if b is False else float(b)) for t, b in params.logit_bias}
        if messages is not None:
            body["messages"] = messages
            if params.json_schema is not None:
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "answer", "schema": params.json_schema, "strict": True}}
            if params.n_probs > 0:
                body["logprobs"], body["top_logprobs"] = True, params.n_probs
            return "/chat/completions", body
        body["prompt"] = prep.prompt
        if params.json_schema is not None:
            raise EngineError("a JSON schema is not supported for raw prompts with a remote engine")
        if params.n_probs > 0:
            body["logprobs"] = params.n_probs
        return "/completions", body

    def _stream(self, prep: RemotePrepared, messages: list[dict[str, str]] | None, params: SamplingParams,
                seed: int, emit: Callable[[Delta | Done], None], cancel: threading.Event) -> "_StreamState":
        path, body = self._body(prep, messages, params, seed)
        data = json.dumps(body).encode()
        st = _StreamState(all_probs=[] if params.n_probs > 0 else None)
        if cancel.is_set():
            st.finish = "cancelled"
            return st
        key = id(st)
        conn: http.client.HTTPConnection | None = None
        reusable = False
        resp: http.client.HTTPResponse | None = None
        try:
            for attempt in range(2):  # a pooled connection the upstream closed meanwhile: once more, fresh
                try:
                    conn, reused = self._take() if attempt == 0 else (self._connect(), False)
                except EngineUnavailable as e:
                    self._mark("unreachable", str(e))
                    raise
                assert conn.sock is not None
                self._watch_add(key, cancel, conn.sock)
                try:
                    conn.request("POST", self.upstream.base + path, data, self._headers())
                    resp = conn.getresponse()
                    break
                except (OSError, http.client.HTTPException) as e:
                    self._watch_remove(key)
                    conn.close()
                    if cancel.is_set():
                        st.finish = "cancelled"
                        return st
                    if reused and isinstance(e, (ConnectionError, http.client.RemoteDisconnected,
                                                 http.client.BadStatusLine)):
                        continue
                    self._mark("unreachable", f"the engine upstream at {self.upstream.url} did not answer: {_why(e)}")
                    raise EngineUnavailable(self._error or "the engine upstream did not answer") from None
            assert resp is not None and conn is not None
            if resp.status != 200:
                raw = resp.read(1 << 20)
                err = _error_for(resp.status, raw, self.upstream.url)
                if isinstance(err, EngineUnavailable):
                    self._mark("error", str(err))
                raise err
            self._mark("ok", None)
            reusable = self._read_events(resp, st, emit, cancel, chat=messages is not None)
        except (OSError, http.client.HTTPException) as e:
            if cancel.is_set():
                st.finish = "cancelled"
            else:
                self._mark("unreachable", f"the engine upstream at {self.upstream.url} broke off: {_why(e)}")
                raise EngineUnavailable(f"the engine upstream at {self.upstream.url} broke off the answer: "
                                        f"{_why(e)}") from None
        finally:
            self._watch_remove(key)
            if resp is not None and not reusable:
                resp.close()  # a "Connection: close" response holds the socket, not the connection
            if conn is not None:
                if reusable and not cancel.is_set():
                    self._give(conn)
                else:
                    conn.close()
        return st

    def _read_events(self, resp: http.client.HTTPResponse, st: "_StreamState", emit: Callable[[Delta | Done], None],
                     cancel: threading.Event, *, chat: bool) -> bool:
        """Read the SSE stream into `st`, emitting Deltas. True when it ended cleanly
        (`[DONE]` and the body read to its end), so the connection can be reused."""
        while True:
            if cancel.is_set():
                st.finish = "cancelled"
                return False
            line = resp.readline()
            if not line:
                if cancel.is_set():
                    st.finish = "cancelled"
                    return False
                if st.finished:  # some servers end without [DONE]
                    return False
                raise EngineUnavailable(f"the engine upstream at {self.upstream.url} ended the stream before "
                                        "the answer was finished")
            line = line.strip()
            if not line or line.startswith(b":"):
                continue
            field, _, value = line.partition(b":")
            value = value.strip()
            if field == b"error":  # llama-server's error event
                raise _error_for(500, value, self.upstream.url, in_stream=True)
            if field != b"data":
                continue
            if value == b"[DONE]":
                resp.read()  # the end of the chunked body: the connection is clean
                return not resp.will_close
            try:
                chunk = json.loads(value)
            except ValueError:
                raise EngineProtocolError(f"the engine upstream at {self.upstream.url} sent a stream line that is "
                                          f"not JSON: {value[:100]!r}") from None
            if not isinstance(chunk, dict):
                raise EngineProtocolError(f"the engine upstream at {self.upstream.url} sent {value[:100]!r}")
            if "error" in chunk:
                raise _error_for(500, value, self.upstream.url, in_stream=True)
            self._last_ok = time.monotonic()
            st.take(chunk, emit, chat=chat)


@dataclass
class _StreamState:
    all_probs: list[dict] | None = None
    parts: list[str] | None = None
    prompt: int = 0
    completion: int | None = None  # from the upstream's usage
    cached: int = 0
    chunks: int = 0  # content chunks seen: the count when the upstream sends no usage
    t_first: float | None = None
    t_last: float | None = None
    finish: str = "length"
    finished: bool = False

    def __post_init__(self) -> None:
        self.parts = []

    def take(self, chunk: dict, emit: Callable[[Delta | Done], None], *, chat: bool) -> None:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt = int(usage.get("prompt_tokens") or 0)
            self.completion = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict):
                self.cached = int(details.get("cached_tokens") or 0)
        choices = chunk.get("choices") or ()
        if not choices or not isinstance(choices[0], dict):
            return
        c = choices[0]
        if chat:
            delta = c.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
        else:
            text = c.get("text")
        probs = _probs(c.get("logprobs"), chat=chat) if self.all_probs is not None else None
        if text or probs:
            now = time.perf_counter()
            if text:
                if self.t_first is None:
                    self.t_first = now
                self.t_last = now
                self.chunks += 1
            assert self.parts is not None
            self.parts.append(text or "")
            if probs and self.all_probs is not None:
                self.all_probs.extend(probs)
            emit(Delta(text or "", probs if self.all_probs is not None else None))
        finish = c.get("finish_reason")
        if finish:
            self.finished = True
            self.finish = "length" if finish == "length" else "stop"


def _probs(lp: Any, *, chat: bool) -> list[dict] | None:
    """An upstream chunk's logprobs as the engine's entries ({"token", "logprob",
    "bytes", "top_logprobs": [...]}); the legacy completions shape is converted."""
    if not isinstance(lp, dict):
        return None
    if chat:
        content = lp.get("content")
        return [e for e in content if isinstance(e, dict)] if isinstance(content, list) else None
    tokens, values, tops = lp.get("tokens") or [], lp.get("token_logprobs") or [], lp.get("top_logprobs") or []
    out = []
    for i, tok in enumerate(tokens):
        alts = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        out.append({"token": tok, "logprob": values[i] if i < len(values) else None,
                    "bytes": list(str(tok).encode()),
                    "top_logprobs": [{"token": t, "logprob": v, "bytes": list(str(t).encode())}
                                     for t, v in alts.items()]})
    return out


def _drop_oldest(messages: list[dict[str, str]] | None) -> list[dict[str, str]] | None:
    """The conversation with about half of its droppable turns gone (oldest first; the
    leading system message and the last message stay; the kept part does not open
    with an assistant turn). None when nothing is left to drop.

    >>> [m["content"] for m in _drop_oldest([{"role": "user", "content": c} for c in "abcde"])]
    ['c', 'd', 'e']
    """
    if not messages:
        return None
    head = messages[:1] if messages[0]["role"] == "system" else []
    body = messages[len(head):]
    if len(body) <= 1:
        return None
    drop = len(body) // 2
    while drop < len(body) - 1 and body[drop]["role"] == "assistant":
        drop += 1
    return head + body[drop:]


def _why(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _error_for(status: int, raw: bytes, url: str, *, in_stream: bool = False) -> EngineError:
    """An upstream error (HTTP status and body, or an error event) as an EngineError."""
    message, code = _error_text(raw)
    said = f"the engine upstream at {url} answered {status}: {message}" if not in_stream else \
        f"the engine upstream at {url} failed mid-answer: {message}"
    low = f"{code} {message}".lower()
    if code == "context_length_exceeded" or code == "context_overflow" or "exceed_context" in low or (
            "context" in low and ("length" in low or "exceed" in low or "too long" in low)):
        return ContextOverflow(f"the conversation does not fit the engine's context: {message}")
    if in_stream:
        return EngineUnavailable(said)
    if status in (401, 403):
        return EngineUnavailable(f"the engine upstream at {url} refused this server's key ({status}: {message}); "
                                 "check --engine-key")
    if status == 404:
        return EngineUnavailable(f"the engine upstream at {url} answered 404 ({message}): check the URL "
                                 "(the OpenAI base, e.g. http://host:8000/v1) and --engine-model")
    if status == 429:
        return EngineBusy(f"the engine upstream is busy: {message}; retry in a few seconds")
    if 400 <= status < 500:
        return EngineRejected(f"the engine refused the request: {message}")
    return EngineUnavailable(said)


def _error_text(raw: bytes) -> tuple[str, str | None]:
    """(message, code) from an OpenAI-style error body, or the body's start."""
    try:
        body = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace").strip()
        return (text[:MAX_ERROR_CHARS] or "no details"), None
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        msg = err.get("message") or err.get("detail") or json.dumps(err)[:MAX_ERROR_CHARS]
        code = err.get("code")
        return str(msg)[:MAX_ERROR_CHARS], code if isinstance(code, str) else None
    return str(err)[:MAX_ERROR_CHARS], None
