"""The OpenAI wire format, as the remote engine speaks it: the upstream's URL, the
request body, the stream's chunks read into deltas and counts, and the upstream's
errors as `EngineError`s with the HTTP status our server answers with.

No sockets here (`remote.py` does the talking), and nothing about our own API.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..generation import ContextOverflow, Delta, Done, EngineError, SamplingParams

MAX_ERROR_CHARS = 500  # of an upstream's error message, quoted in ours


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


@dataclass
class StreamState:
    """What one streamed answer has told so far."""

    all_probs: list[dict[str, Any]] | None = None
    parts: list[str] = field(default_factory=list)
    prompt: int = 0
    completion: int | None = None  # from the upstream's usage
    cached: int = 0
    chunks: int = 0  # content chunks seen: the count when the upstream sends no usage
    t_first: float | None = None
    t_last: float | None = None
    finish: str = "length"
    finished: bool = False

    def take(self, chunk: dict[str, Any], emit: Callable[[Delta | Done], None], *, chat: bool) -> None:
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
            self.parts.append(text or "")
            if probs and self.all_probs is not None:
                self.all_probs.extend(probs)
            emit(Delta(text or "", probs if self.all_probs is not None else None))
        finish = c.get("finish_reason")
        if finish:
            self.finished = True
            self.finish = "length" if finish == "length" else "stop"


def _probs(lp: Any, *, chat: bool) -> list[dict[str, Any]] | None:
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


def drop_oldest(messages: list[dict[str, str]] | None) -> list[dict[str, str]] | None:
    """The conversation with about half of its droppable turns gone (oldest first; the
    leading system message and the last message stay; the kept part does not open
    with an assistant turn). None when nothing is left to drop.

    >>> [m["content"] for m in drop_oldest([{"role": "user", "content": c} for c in "abcde"])]
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


def why(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def error_for(status: int, raw: bytes, url: str, *, in_stream: bool = False) -> EngineError:
    """An upstream error (HTTP status and body, or an error event) as an EngineError."""
    message, code = error_text(raw)
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


def error_text(raw: bytes) -> tuple[str, str | None]:
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


def request_body(*, model: str | None, messages: list[dict[str, str]] | None, prompt: str | None,
                 max_new: int, params: SamplingParams, seed: int) -> tuple[str, dict[str, Any]]:
    """The route (under the base) and JSON body of a streamed request: chat when
    `messages` is given, else a legacy completion of `prompt`."""
    body: dict[str, Any] = {
        "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": max_new, "temperature": params.temperature, "top_p": params.top_p,
        "frequency_penalty": params.frequency_penalty, "presence_penalty": params.presence_penalty,
        "seed": seed,
        # Not OpenAI's, but read by llama-server, vLLM, Ollama and Nanochat-Lite (an
        # upstream that does not know one ignores it). vLLM names the penalty its own way.
        "top_k": params.top_k, "min_p": params.min_p,
        "repeat_penalty": params.repeat_penalty, "repetition_penalty": params.repeat_penalty,
    }
    if model:
        body["model"] = model
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
    body["prompt"] = prompt
    if params.json_schema is not None:
        raise EngineError("a JSON schema is not supported for raw prompts with a remote engine")
    if params.n_probs > 0:
        body["logprobs"] = params.n_probs
    return "/completions", body
