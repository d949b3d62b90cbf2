"""Fairness (bench section "fairness"): does one long prompt freeze everyone else?

Three clients start streaming long answers. Once they are all generating (or after a
bounded wait, for a server that serves one request at a time), a fourth client sends a
prompt of about 3,000 tokens built from distinct sentences (so no prompt cache can help)
and asks for a short answer. The notes come as a few user turns (each under nanochat-lite's
8,000-character message limit) in one new conversation: all of it is prompt to read. The three streams go on until that long request has its
first token (plus a short tail), then they are closed. Each stream reports its longest
gap between two streamed tokens, over its whole life and while the long prompt was
being read (sent -> its first token). A server that prefills the long prompt in one go
shows a gap as long as the prefill; one that interleaves chunks with the other streams'
tokens keeps every gap short.

Runs for nanochat-lite and, when given, llama-server, one server at a time, each with a
context big enough for the long prompt and three answers.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

from .client import SAMPLING
from .common import settle_nanochat
from .peers import Peer

STREAMS = 3
STREAM_PROMPT = "Count from 1 to 1000 in English words, one number per line (list {n})."
LONG_QUESTION = "Now tell me in one sentence which animal appears most often in these notes."
PART_CHARS = 6_000  # notes per user turn: under nanochat-lite's 8,000-character message limit
LONG_ANSWER_TOKENS = 16
TAIL_S = 1.0  # streams keep going this long after the long request's first token
COLORS = ["red", "blue", "green", "amber", "violet", "silver", "golden", "pale", "dark", "bright", "striped"]
ANIMALS = ["fox", "heron", "otter", "badger", "lynx", "owl", "hare", "beaver", "wren", "stoat", "moth", "newt", "crow"]
PLACES = ["river", "meadow", "orchard", "quarry", "harbour", "ridge", "marsh", "forest", "village", "canal"]


def long_prompt(count: Callable[[str], int], target_tokens: int) -> tuple[list[dict[str, str]], int]:
    """A new conversation whose message text has at least `target_tokens` tokens (by
    `count`; the chat template adds a few), made of distinct numbered sentences split into
    user turns of at most PART_CHARS characters, each but the last acknowledged by the
    assistant; returns (messages, tokens of message text). Sentence 0: 'Note 1: the red
    fox crossed the river near marker 0 on day 1.'"""
    sentences: list[str] = []

    def add() -> str:
        i = len(sentences)
        sentences.append(f"Note {i + 1}: the {COLORS[i % len(COLORS)]} {ANIMALS[(i * 7) % len(ANIMALS)]} crossed "
                         f"the {PLACES[(i // 3) % len(PLACES)]} near marker {i * 37 % 1009} on day {i + 1}.")
        return sentences[-1]

    # Sentences are counted one by one (counting the whole text each time is quadratic);
    # the turns' headers are then counted with the rest, and a short total gets more sentences.
    n = count(LONG_QUESTION)
    while n < target_tokens:
        n += count(" " + add())
    while True:
        messages = _turns(sentences)
        n = sum(count(m["content"]) for m in messages)
        if n >= target_tokens:
            return messages, n
        for _ in range(max(1, (target_tokens - n) // 10)):
            add()


def _turns(sentences: list[str]) -> list[dict[str, str]]:
    """Sentences as user turns of at most PART_CHARS characters, each but the last answered
    "Noted.", the last ending with the question."""
    parts: list[list[str]] = [[]]
    for sentence in sentences:
        if parts[-1] and sum(len(x) + 1 for x in parts[-1]) + len(sentence) > PART_CHARS:
            parts.append([])
        parts[-1].append(sentence)
    messages: list[dict[str, str]] = []
    for k, part in enumerate(parts, 1):
        text = f"Notes, part {k} of {len(parts)}:\n" + " ".join(part)
        if k < len(parts):
            messages += [{"role": "user", "content": text}, {"role": "assistant", "content": "Noted."}]
        else:
            messages.append({"role": "user", "content": f"{text}\n\n{LONG_QUESTION}"})
    return messages


@dataclass
class _Stream:
    stamps: list[float] = field(default_factory=list)  # perf_counter of each content delta
    error: str = ""
    closed_by_us: bool = False
    prompt_tokens: int | None = None  # the server's own count, when it reports usage


def _stream(url: str, body: dict[str, Any], out: _Stream, stop: threading.Event, deadline: float) -> None:
    try:
        with httpx.Client(timeout=httpx.Timeout(300.0, read=max(1.0, deadline - time.perf_counter()))) as c, \
                c.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                out.error = f"HTTP {r.status_code}: {r.read()[:200]!r}"
                return
            for line in r.iter_lines():
                if stop.is_set() or time.perf_counter() > deadline:
                    out.closed_by_us = True  # closing the stream cancels the generation
                    return
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for ch in chunk.get("choices") or []:
                    if (ch.get("delta") or {}).get("content"):
                        out.stamps.append(time.perf_counter())
                usage = chunk.get("usage")
                if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
                    out.prompt_tokens = usage["prompt_tokens"]
    except (httpx.HTTPError, ValueError) as e:
        out.error = f"{type(e).__name__}: {e}"


def max_gap_ms(stamps: list[float], start: float = float("-inf"), end: float = float("inf")) -> float | None:
    """Longest gap between consecutive stamps (seconds) in ms, counting gaps that overlap
    [start, end]. [0.0, 0.1, 0.5, 0.6] -> 400.0; [1.0] -> None."""
    gaps = [(b - a) * 1000 for a, b in zip(stamps, stamps[1:]) if b >= start and a <= end]
    return round(max(gaps), 1) if gaps else None


def _body(peer: Peer, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": messages, "max_tokens": max_tokens, "stream": True,
                            **SAMPLING}
    if peer.usage:
        body["stream_options"] = {"include_usage": True}
    if peer.n_predict:
        body["n_predict"] = max_tokens
    return body


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def measure(url: str, peer: Peer, prompt: list[dict[str, str]], prompt_tokens: int, *, stream_tokens: int,
            start_wait_s: float, time_box_s: float) -> dict[str, Any]:
    """Three streams, then the long prompt; see the module docstring."""
    stop = threading.Event()
    deadline = time.perf_counter() + time_box_s
    streams = [_Stream() for _ in range(STREAMS)]
    bodies = [_body(peer, _user(STREAM_PROMPT.format(n=i + 1)), stream_tokens) for i in range(STREAMS)]
    threads = [threading.Thread(target=_stream, daemon=True, args=(url, body, s, stop, deadline))
               for body, s in zip(bodies, streams)]
    for t in threads:
        t.start()
    wait_until = time.perf_counter() + start_wait_s
    while time.perf_counter() < wait_until and not all(len(s.stamps) >= 2 or s.error for s in streams):
        time.sleep(0.01)
    long = _Stream()
    never = threading.Event()  # the long request runs to its end (LONG_ANSWER_TOKENS)
    sent = time.perf_counter()
    generating_at_send = [bool(s.stamps) and t.is_alive() for s, t in zip(streams, threads)]
    long_thread = threading.Thread(target=_stream, daemon=True,
                                   args=(url, _body(peer, prompt, LONG_ANSWER_TOKENS), long, never, deadline))
    long_thread.start()
    while time.perf_counter() < deadline and not long.stamps and not long.error and long_thread.is_alive():
        time.sleep(0.005)
    first = long.stamps[0] if long.stamps else None
    time.sleep(TAIL_S if first else 0)
    stop.set()
    for t in [*threads, long_thread]:
        t.join(max(1.0, deadline - time.perf_counter() + 5))
    per_stream = []
    for s, was_generating in zip(streams, generating_at_send):
        per_stream.append({
            "tokens": len(s.stamps), "generating_when_long_prompt_sent": was_generating,
            "max_gap_ms": max_gap_ms(s.stamps),
            "max_gap_while_long_prompt_read_ms": max_gap_ms(s.stamps, sent, first) if first else None,
            "still_streaming_at_long_first_token": bool(first and s.stamps and s.stamps[-1] >= first),
            "error": s.error})
    gen = [s for s in per_stream if s["generating_when_long_prompt_sent"] and s["max_gap_ms"] is not None]
    return {"long_prompt_tokens": prompt_tokens, "long_prompt_tokens_by_server": long.prompt_tokens,
            "long_ttft_ms": round((first - sent) * 1000, 1) if first else None,
            "long_error": long.error or ("" if first else "no token before the time box"),
            "streams": per_stream,
            "streams_generating_when_sent": sum(generating_at_send),
            "max_gap_ms": max((s["max_gap_ms"] for s in gen), default=None)}


def run(peers: list[Peer], count: Callable[[str], int], *, prompt_tokens: int, stream_tokens: int,
        start_wait_s: float, time_box_s: float, absent: dict[str, str] | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """The fairness measurement for each peer in turn (each started alone, then stopped)."""
    prompt, n = long_prompt(count, prompt_tokens)
    out: dict[str, Any] = {"long_prompt_tokens": n, "streams": STREAMS, "stream_max_tokens": stream_tokens,
                           "peers": {}, "absent": dict(absent or {})}
    log(f"Fairness: {STREAMS} streams generating, then one prompt of {n} tokens of message text "
        f"in {sum(m['role'] == 'user' for m in prompt)} user turns")
    with tempfile.TemporaryDirectory() as tmp:
        for peer in peers:
            with peer.start(Path(tmp)) as p:
                try:
                    p.wait_ready(peer.ready_path)
                except RuntimeError as e:
                    out["peers"][peer.name] = {"error": str(e)[:500]}
                    log(f"  {peer.name}: {e}")
                    continue
                if peer.nanochat:
                    with contextlib.suppress(httpx.HTTPError):
                        settle_nanochat(p.url)
                warm = {k: v for k, v in _body(peer, _user("Hello!"), 4).items() if k != "stream_options"}
                with httpx.Client(timeout=300) as c:  # warm-up, not counted
                    c.post(p.url + "/v1/chat/completions", json={**warm, "stream": False})
                r = measure(p.url, peer, prompt, n, stream_tokens=stream_tokens, start_wait_s=start_wait_s,
                            time_box_s=time_box_s)
            out["peers"][peer.name] = r
            gaps = ", ".join(f"{s['max_gap_ms']}" for s in r["streams"])
            log(f"  {peer.name:<31} longest gap per stream {gaps} ms (max {r['max_gap_ms']} ms over "
                f"{r['streams_generating_when_sent']} streams generating when sent); "
                f"long prompt TTFT {r['long_ttft_ms']} ms ({r['long_prompt_tokens_by_server']} prompt tokens "
                "by the server's count)" + (f"; {r['long_error']}" if r["long_error"] else ""))
    return out
