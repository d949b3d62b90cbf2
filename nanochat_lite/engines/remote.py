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
(`GET /models`) keeps `health()` current for `/api/health`. The wire format (request
body, chunks, error mapping) is in `openai_client.py`.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..generation import ContextOverflow, Delta, Done, EngineError, Prepared, SamplingParams
from .openai_client import (
    EngineBusy,
    EngineProtocolError,
    EngineRejected,
    EngineUnavailable,
    StreamState,
    Upstream,
    drop_oldest,
    error_for,
    request_body,
    why,
)

__all__ = ["EngineBusy", "EngineProtocolError", "EngineRejected", "EngineUnavailable", "RemoteEngine",
           "RemotePrepared", "Upstream"]

log = logging.getLogger("nanochat_lite")

CONNECT_TIMEOUT_S = 3.0  # a down upstream is a 503 well within 5 s
READ_TIMEOUT_S = 300.0  # silence from a connected upstream (a long prefill, its queue) before giving up
PROBE_INTERVAL_S = 2.0  # health probe period while nothing else talks to the upstream
FRESH_S = 1.0  # an upstream heard from this recently is not probed before a request
POOL_IDLE_S = 2.0  # keep-alive connections older than this are not reused (servers close them at ~5 s)
FIT_ATTEMPTS = 6  # context-overflow retries, each dropping more of the oldest turns
# The scheduler reserves prompt + answer tokens in a KV pool of this size; the upstream
# manages its own cache, so the pool is made large enough never to hold a request back.
UNBOUNDED_POOL = 1 << 40


@dataclass
class RemotePrepared(Prepared):
    """A request for the upstream: the conversation as it is, or a raw prompt."""

    messages: list[dict[str, str]] | None = None  # chat: sent to /chat/completions
    prompt: str | None = None  # legacy: sent to /completions


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
        self.kv_cache_bytes: int | None = None
        self.threads = 0  # none here: the upstream computes
        self.n_vocab: int | None = None
        self.closed = False
        self._ssl = ssl.create_default_context() if self.upstream.scheme == "https" else None
        self._lock = threading.Lock()
        self._pool: list[tuple[http.client.HTTPConnection, float]] = []  # idle keep-alive connections
        self._state = "unknown"  # "ok" | "unreachable" | "error"
        self._error: str | None = None
        self._last_ok = 0.0  # monotonic time the upstream last answered well
        self._checked = 0.0  # monotonic time of the last probe
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
    def prompts(self) -> RemoteEngine:
        """The prompt builder the server uses: this engine (it keeps messages as they are)."""
        return self

    def use_tokenizer(self, tokenizer: Any) -> None:
        """Ignored: the upstream tokenizes with its own vocabulary."""

    def shared_prefix(self) -> list[int]:
        """No tokens are computed here, so none are shared between slots."""
        return []

    def close(self) -> None:
        self.closed = True
        with self._lock:
            pool, self._pool = self._pool, []
        for conn, _ in pool:
            conn.close()
        with self._watch_cv:
            self._watch_cv.notify_all()

    # -- health -------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
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
            self._mark("unreachable", f"the engine upstream at {self.upstream.url} did not answer: {why(e)}")
            return False
        finally:
            conn.close()
        if resp.status != 200:
            err = error_for(resp.status, raw, self.upstream.url)
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
            raise EngineUnavailable(f"the engine upstream at {up.url} cannot be reached: {why(e)}. Check that "
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
        for attempt in range(FIT_ATTEMPTS + 1):
            try:
                st = self._stream(prep, messages, params, seed, emit, cancel)
                break
            except ContextOverflow:
                # Nothing was sent to the client yet: drop the oldest turns and ask again.
                fewer = drop_oldest(messages) if messages is not None and attempt < FIT_ATTEMPTS else None
                if fewer is None:
                    raise
                dropped += len(messages) - len(fewer)  # type: ignore[arg-type]
                messages = fewer
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

    def _stream(self, prep: RemotePrepared, messages: list[dict[str, str]] | None, params: SamplingParams,
                seed: int, emit: Callable[[Delta | Done], None], cancel: threading.Event) -> "StreamState":
        path, body = request_body(model=self.model, messages=messages, prompt=prep.prompt, max_new=prep.max_new,
                                  params=params, seed=seed)
        data = json.dumps(body).encode()
        st = StreamState(all_probs=[] if params.n_probs > 0 else None)
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
                    self._mark("unreachable", f"the engine upstream at {self.upstream.url} did not answer: {why(e)}")
                    raise EngineUnavailable(self._error or "the engine upstream did not answer") from None
            assert resp is not None and conn is not None
            if resp.status != 200:
                raw = resp.read(1 << 20)
                err = error_for(resp.status, raw, self.upstream.url)
                if isinstance(err, EngineUnavailable):
                    self._mark("error", str(err))
                raise err
            self._mark("ok", None)
            reusable = self._read_events(resp, st, emit, cancel, chat=messages is not None)
        except (OSError, http.client.HTTPException) as e:
            if cancel.is_set():
                st.finish = "cancelled"
            else:
                self._mark("unreachable", f"the engine upstream at {self.upstream.url} broke off: {why(e)}")
                raise EngineUnavailable(f"the engine upstream at {self.upstream.url} broke off the answer: "
                                        f"{why(e)}") from None
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

    def _read_events(self, resp: http.client.HTTPResponse, st: "StreamState", emit: Callable[[Delta | Done], None],
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
                raise error_for(500, value, self.upstream.url, in_stream=True)
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
                raise error_for(500, value, self.upstream.url, in_stream=True)
            self._last_ok = time.monotonic()
            st.take(chunk, emit, chat=chat)
