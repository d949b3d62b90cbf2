"""One streamed chat request, timed, the same way for every server.

Every peer gets an OpenAI-style `POST /v1/chat/completions` with `stream: true` and the
same greedy sampling; nanochat-lite can also be asked over its WebSocket (`/ws`).
Times run from just before the request is sent. Answer length is the server's own
completion-token count when it reports usage (`stream_options.include_usage`), else
the streamed text re-encoded with the model's tokenizer; each sample says which.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx

from .peers import Peer

MAX_TOKENS = 64
# Greedy decoding with both servers' default repeat penalty: same work on every side.
SAMPLING = {"temperature": 0.0, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "repeat_penalty": 1.1, "seed": 42}
NO_DEADLINE = float("inf")


@dataclass(frozen=True)
class Ask:
    """How every request is made and measured: answer length and the token counter."""

    count: Callable[[str], int]  # text -> tokens (the model's tokenizer)
    max_tokens: int = MAX_TOKENS


@dataclass
class Sample:
    ok: bool
    ttft_ms: float = 0.0
    total_ms: float = 0.0
    tokens: int = 0  # streamed so far, also for a cut request
    decode_tok_s: float | None = None  # None for answers of a single token
    error: str = ""
    cut: bool = False  # stopped by the time box while streaming (not an error)
    usage: bool = False  # `tokens` is the server's own count, not re-encoded text


def percentiles(values: list[float], digits: int = 1) -> dict[str, Any]:
    """Median, nearest-rank p95/p99, min, max, n. [1, 2, 3, 4] -> median 2.5, p95 4."""
    if not values:
        return {"n": 0}
    s = sorted(values)

    def rank(q: float) -> float:
        return s[max(0, min(len(s) - 1, -(-q * len(s) // 100) - 1))]

    return {"median": round(statistics.median(s), digits), "p95": round(rank(95), digits),
            "p99": round(rank(99), digits), "min": round(s[0], digits), "max": round(s[-1], digits), "n": len(s)}


def summarize(samples: list[Sample]) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    bad = [s for s in samples if not s.ok and not s.cut]
    return {"requests": len(samples), "completed": len(ok), "errors": len(bad),
            "cut_by_time_box": sum(s.cut for s in samples), "error_examples": sorted({s.error for s in bad})[:3],
            "ttft_ms": percentiles([s.ttft_ms for s in ok]), "total_ms": percentiles([s.total_ms for s in ok]),
            "decode_tok_s": percentiles([s.decode_tok_s for s in ok if s.decode_tok_s is not None]),
            "tokens": percentiles([float(s.tokens) for s in ok], 0),
            "tokens_counted_by": _counted_by(ok)}


def _counted_by(ok: list[Sample]) -> str:
    kinds = {s.usage for s in ok}
    if kinds == {True}:
        return "server usage"
    return "re-encoded text" if kinds == {False} else "mixed: usage where reported, else re-encoded text"


class _Cut(Exception):
    """The time box ended while the answer was streaming."""


def _finish(t0: float, first: float | None, last: float | None, text: str, ask: Ask, *,
            cut: bool = False, usage_tokens: int | None = None) -> Sample:
    end = time.perf_counter()
    tokens = ask.count(text) if text else 0
    if cut:
        return Sample(ok=False, total_ms=(end - t0) * 1000, tokens=tokens, cut=True, error="cut by the time box")
    if first is None or last is None:
        return Sample(ok=False, total_ms=(end - t0) * 1000, error="no content in the answer")
    if usage_tokens is not None:
        tokens = usage_tokens
    tps = (tokens - 1) / (last - first) if tokens > 1 and last > first else None
    return Sample(ok=True, ttft_ms=(first - t0) * 1000, total_ms=(end - t0) * 1000, tokens=tokens,
                  decode_tok_s=tps, usage=usage_tokens is not None)


def request_body(peer: Peer, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The streamed chat request for `peer`: one new conversation of one user message."""
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": max_tokens, "stream": True, **SAMPLING}
    if peer.usage:
        body["stream_options"] = {"include_usage": True}
    if peer.n_predict:
        body["n_predict"] = max_tokens
    return body


def http_request(client: httpx.Client, url: str, body: dict[str, Any], ask: Ask,
                 deadline: float = NO_DEADLINE) -> Sample:
    """One streamed /v1/chat/completions. Past `deadline` the stream is closed (the
    server then cancels the generation)."""
    t0 = time.perf_counter()
    first = last = None
    usage_tokens = None
    parts: list[str] = []
    # A request still queued at the deadline gets no line to check it on: the read timeout cuts it.
    read_s = max(0.1, min(300.0, deadline - t0))
    try:
        with client.stream("POST", url + "/v1/chat/completions", json=body,
                           timeout=httpx.Timeout(300.0, read=read_s)) as r:
            if r.status_code != 200:
                return Sample(ok=False, error=f"HTTP {r.status_code}: {r.read()[:200]!r}")
            for line in r.iter_lines():
                if time.perf_counter() > deadline:
                    raise _Cut
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for ch in chunk.get("choices") or []:
                    if text := (ch.get("delta") or {}).get("content"):
                        last = time.perf_counter()
                        first = first or last
                        parts.append(text)
                usage = chunk.get("usage")
                if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                    usage_tokens = usage["completion_tokens"]
    except _Cut:
        return _finish(t0, first, last, "".join(parts), ask, cut=True)
    except httpx.ReadTimeout as e:
        if time.perf_counter() > deadline:
            return _finish(t0, first, last, "".join(parts), ask, cut=True)
        return Sample(ok=False, error=f"ReadTimeout: {e}")
    except (httpx.HTTPError, ValueError) as e:
        return Sample(ok=False, error=f"{type(e).__name__}: {e}")
    return _finish(t0, first, last, "".join(parts), ask, usage_tokens=usage_tokens)


def ws_request(ws: Any, prompt: str, ask: Ask, deadline: float = NO_DEADLINE) -> Sample:
    """One new chat over an open nanochat-lite WebSocket (frames: start, token..., done).
    Past `deadline` it stops waiting; the caller closes the socket, which cancels the generation."""
    t0 = time.perf_counter()
    first = last = None
    usage_tokens = None
    parts: list[str] = []
    try:
        ws.send(json.dumps({"type": "chat", "message": prompt, "max_tokens": ask.max_tokens, **SAMPLING}))
        while True:
            if time.perf_counter() > deadline:
                raise _Cut
            try:
                frame = json.loads(ws.recv(timeout=max(0.0, min(300.0, deadline - time.perf_counter()))))
            except TimeoutError:
                if time.perf_counter() > deadline:
                    raise _Cut from None
                raise
            if frame["type"] == "token" and frame["text"]:
                last = time.perf_counter()
                first = first or last
                parts.append(frame["text"])
            elif frame["type"] == "done":
                usage = frame.get("usage") or {}
                n = usage.get("completionTokens", usage.get("completion_tokens"))
                usage_tokens = n if isinstance(n, int) else None
                break
            elif frame["type"] == "error":
                return Sample(ok=False, error=f"{frame.get('code')}: {frame.get('message')}")
    except _Cut:
        return _finish(t0, first, last, "".join(parts), ask, cut=True)
    except Exception as e:  # websockets' ConnectionClosed, TimeoutError
        return Sample(ok=False, error=f"{type(e).__name__}: {e}")
    return _finish(t0, first, last, "".join(parts), ask, usage_tokens=usage_tokens)
