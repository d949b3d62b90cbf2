"""End-to-end latency, concurrency and memory of the servers (bench sections 3-5).

Both servers run at once on the same GGUF, thread count and context size, so requests
can alternate between them (a change in machine load then hits both alike); the idle
one uses no CPU. Every request is an OpenAI-style streaming chat completion over HTTP
with the same sampling (greedy, seed fixed); nanochat-lite is also driven over its
WebSocket (`/ws`). Tokens are counted by re-encoding each streamed answer with the
model's tokenizer, the same way for every peer.

llama_cpp.server runs with `--interrupt_requests false`: by default a waiting request
cuts the streaming one short, which would turn concurrency into truncated answers.

Memory (see `memory.py`) is read from `/proc/PID/status` of each server process.

Not measured here: prompt caching across turns, long prompts, batching (neither
server batches requests: both serve one generation at a time, first come first served).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx

from .common import Proc, free_port, have_llama_cpp_server, llama_cpp_server_cmd, nanochat_cmd, settle_nanochat
from .memory import RssSampler, embeddings_memory, proc_memory

# Varied, realistic user turns: questions, instructions, small talk; cycled in order.
PROMPTS = [
    "What is the capital of France, and what is it famous for?",
    "Give me three tips for sleeping better.",
    "Write a haiku about autumn leaves.",
    "Explain what a CPU cache is in two sentences.",
    "How do I boil an egg so the yolk stays soft?",
    "Suggest a name for a small coffee shop near a library.",
    "What's the difference between weather and climate?",
    "Translate 'good morning, how are you?' into Spanish.",
    "List some healthy snacks I can take on a long hike.",
    "Why is the sky blue?",
]
MAX_TOKENS = 64
# Greedy decoding with both servers' default repeat penalty: same work on both sides.
SAMPLING = {"temperature": 0.0, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "repeat_penalty": 1.1, "seed": 42}
LLAMA_EXTRA = ("--interrupt_requests", "false")
NANO, LLAMA = "nanochat-lite", "llama_cpp.server"


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


def percentiles(values: list[float], digits: int = 1) -> dict[str, Any]:
    """Median, nearest-rank p95/p99, min, max, n. [1, 2, 3, 4] -> median 2.5, p95 4."""
    if not values:
        return {"n": 0}
    s = sorted(values)

    def rank(q: float) -> float:
        return s[max(0, min(len(s) - 1, -(-q * len(s) // 100) - 1))]

    return {"median": round(statistics.median(s), digits), "p95": round(rank(95), digits),
            "p99": round(rank(99), digits), "min": round(s[0], digits), "max": round(s[-1], digits), "n": len(s)}


# -- one request ------------------------------------------------------------------------
NO_DEADLINE = float("inf")


class _Cut(Exception):
    """The time box ended while the answer was streaming."""


def _finish(t0: float, first: float | None, last: float | None, text: str, ask: Ask,
            cut: bool = False) -> Sample:
    end = time.perf_counter()
    tokens = ask.count(text) if text else 0
    if cut:
        return Sample(ok=False, total_ms=(end - t0) * 1000, tokens=tokens, cut=True, error="cut by the time box")
    if first is None or last is None:
        return Sample(ok=False, total_ms=(end - t0) * 1000, error="no content in the answer")
    tps = (tokens - 1) / (last - first) if tokens > 1 and last > first else None
    return Sample(ok=True, ttft_ms=(first - t0) * 1000, total_ms=(end - t0) * 1000, tokens=tokens, decode_tok_s=tps)


def http_request(client: httpx.Client, url: str, prompt: str, ask: Ask,
                 deadline: float = NO_DEADLINE) -> Sample:
    """One streamed /v1/chat/completions; times from just before the request is sent.
    Past `deadline` the stream is closed (the server then cancels the generation)."""
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": ask.max_tokens,
            "stream": True, **SAMPLING}
    t0 = time.perf_counter()
    first = last = None
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
                for ch in json.loads(line[6:]).get("choices", []):
                    if text := ch.get("delta", {}).get("content"):
                        last = time.perf_counter()
                        first = first or last
                        parts.append(text)
    except _Cut:
        return _finish(t0, first, last, "".join(parts), ask, cut=True)
    except httpx.ReadTimeout as e:
        if time.perf_counter() > deadline:
            return _finish(t0, first, last, "".join(parts), ask, cut=True)
        return Sample(ok=False, error=f"ReadTimeout: {e}")
    except (httpx.HTTPError, ValueError) as e:
        return Sample(ok=False, error=f"{type(e).__name__}: {e}")
    return _finish(t0, first, last, "".join(parts), ask)


def ws_request(ws: Any, prompt: str, ask: Ask, deadline: float = NO_DEADLINE) -> Sample:
    """One chat over an open nanochat-lite WebSocket (frames: start, token..., done).
    Past `deadline` it stops waiting; the caller closes the socket, which cancels the generation."""
    t0 = time.perf_counter()
    first = last = None
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
                break
            elif frame["type"] == "error":
                return Sample(ok=False, error=f"{frame.get('code')}: {frame.get('message')}")
    except _Cut:
        return _finish(t0, first, last, "".join(parts), ask, cut=True)
    except Exception as e:  # websockets' ConnectionClosed, TimeoutError
        return Sample(ok=False, error=f"{type(e).__name__}: {e}")
    return _finish(t0, first, last, "".join(parts), ask)


# -- servers -----------------------------------------------------------------------------
def start_servers(model_path: Path, threads: int, ctx: int, tmp: Path, *, llama: bool) -> dict[str, Proc]:
    servers: dict[str, Proc] = {}
    try:
        port = free_port()
        servers[NANO] = Proc(nanochat_cmd(port, str(model_path), threads, ctx, tmp / "bench.sqlite3"), port)
        servers[NANO].wait_ready("/api/health")
        if llama and have_llama_cpp_server():
            port = free_port()
            servers[LLAMA] = Proc(llama_cpp_server_cmd(port, model_path, threads, ctx, LLAMA_EXTRA), port)
            servers[LLAMA].wait_ready("/v1/models")
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: dict[str, Proc]) -> None:
    for p in servers.values():
        p.stop()


# -- sections ----------------------------------------------------------------------------
def _sample_summary(samples: list[Sample]) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    bad = [s for s in samples if not s.ok and not s.cut]
    return {"requests": len(samples), "completed": len(ok), "errors": len(bad),
            "cut_by_time_box": sum(s.cut for s in samples), "error_examples": sorted({s.error for s in bad})[:3],
            "ttft_ms": percentiles([s.ttft_ms for s in ok]), "total_ms": percentiles([s.total_ms for s in ok]),
            "decode_tok_s": percentiles([s.decode_tok_s for s in ok if s.decode_tok_s is not None]),
            "tokens": percentiles([float(s.tokens) for s in ok], 0)}


def end_to_end(servers: dict[str, Proc], requests: int, ask: Ask, budget_s: float,
               log=print) -> dict:
    """Up to `requests` sequential streamed chats per server, alternating servers request by
    request; no new round starts after `budget_s` seconds (the count sent is reported)."""
    samples: dict[str, list[Sample]] = {name: [] for name in servers}
    clients = {name: httpx.Client(timeout=300) for name in servers}
    stop_at = time.perf_counter() + budget_s
    try:
        for i in range(requests):
            if time.perf_counter() > stop_at:
                log(f"  time budget of {budget_s:.0f} s reached after {i} requests per server")
                break
            for name, p in servers.items():
                samples[name].append(http_request(clients[name], p.url, PROMPTS[i % len(PROMPTS)], ask))
            if (i + 1) % 10 == 0 or i + 1 == requests:
                log(f"  {i + 1}/{requests} requests per server")
    finally:
        for c in clients.values():
            c.close()
    return {"planned_per_server": requests, "budget_s": budget_s, "max_tokens": ask.max_tokens, "sampling": SAMPLING,
            "prompts": len(PROMPTS), "transport": "HTTP, OpenAI /v1/chat/completions streaming",
            "peers": {name: _sample_summary(s) for name, s in samples.items()}}


def _client_loop(send: Callable[[str, float], Sample], index: int, per_client: int, time_box_s: float,
                 start: threading.Barrier, out: list[Sample]) -> None:
    start.wait()
    deadline = time.perf_counter() + time_box_s
    for j in range(per_client):
        if time.perf_counter() > deadline:
            return  # requests not sent are reported as such, not estimated
        out.append(send(PROMPTS[(index * per_client + j) % len(PROMPTS)], deadline))


def run_level(url: str, transport: str, clients: int, per_client: int, time_box_s: float,
              ask: Ask) -> dict[str, Any]:
    """`clients` simultaneous clients, each sending `per_client` requests one after another,
    for at most `time_box_s` seconds (answers still streaming then are cut and counted)."""
    barrier = threading.Barrier(clients + 1)
    results: list[list[Sample]] = [[] for _ in range(clients)]
    with contextlib.ExitStack() as stack:  # closing a socket cancels what it still streams
        conns: list[Any] = []
        for _ in range(clients):
            if transport == "ws":
                from websockets.sync.client import connect

                conns.append(stack.enter_context(connect(url.replace("http://", "ws://") + "/ws", max_size=4 << 20)))
            else:
                conns.append(stack.enter_context(httpx.Client(timeout=300)))
        threads = []
        for i, conn in enumerate(conns):
            def send(prompt: str, deadline: float, conn: Any = conn) -> Sample:
                if transport == "ws":
                    return ws_request(conn, prompt, ask, deadline)
                return http_request(conn, url, prompt, ask, deadline)

            threads.append(threading.Thread(target=_client_loop, daemon=True,
                                             args=(send, i, per_client, time_box_s, barrier, results[i])))
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    samples = [s for r in results for s in r]
    out = _sample_summary(samples)
    out.update(clients=clients, planned=clients * per_client, wall_s=round(wall, 2),
               aggregate_tok_s=round(sum(s.tokens for s in samples) / wall, 1),
               time_boxed=len(samples) < clients * per_client or any(s.cut for s in samples))
    return out


def concurrency(servers: dict[str, Proc], levels: list[int], per_client: int, time_box_s: float,
                ask: Ask, *, ws: bool = True, memory_at: int | None = None,
                log=print) -> tuple[dict, dict[str, int]]:
    """Each level for every (server, transport), alternating; returns (results, max RSS at `memory_at`)."""
    routes = [(name, "http") for name in servers] + ([(NANO, "ws")] if ws and NANO in servers else [])
    out: dict[str, dict[str, Any]] = {f"{name} {t.upper()}": {} for name, t in routes}
    load_rss: dict[str, int] = {}
    for level in levels:
        for name, transport in routes:
            p = servers[name]
            with RssSampler(p.pid) as rss:
                r = run_level(p.url, transport, level, per_client, time_box_s, ask)
            if level == memory_at and transport == "http":
                load_rss[name] = rss.max_rss
            out[f"{name} {transport.upper()}"][str(level)] = r
            log(f"  {name:<17} {transport.upper():<4} {level:>2} clients: ttft p50 {r['ttft_ms'].get('median', '-')} ms, "
                f"{r['aggregate_tok_s']} tok/s total, {r['completed']}/{r['planned']} completed, {r['errors']} errors"
                + (" (time box reached)" if r["time_boxed"] else ""))
    return {"levels": levels, "requests_per_client": per_client, "time_box_s": time_box_s,
            "max_tokens": ask.max_tokens, "results": out}, load_rss


def run(model_path: Path, threads: int, ctx: int, *, sections: set[str], requests: int, budget_s: float,
        levels: list[int], per_client: int, time_box_s: float, home: Path, max_tokens: int = MAX_TOKENS,
        llama: bool = True, ws: bool = True, log=print) -> dict[str, Any]:
    """Sections "latency", "concurrency", "memory" (any subset) against one start of each server."""
    from ..tokenizer import Tokenizer

    ask = Ask(Tokenizer.from_gguf(model_path).count, max_tokens)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers = start_servers(model_path, threads, ctx, Path(tmp), llama=llama)
        try:
            settle_nanochat(servers[NANO].url)
            time.sleep(0.5)
            idle = {name: proc_memory(p.pid) for name, p in servers.items()}
            with httpx.Client(timeout=300) as c:
                for p in servers.values():  # warm-up, not counted
                    http_request(c, p.url, PROMPTS[0], ask)
            if "latency" in sections:
                log(f"End-to-end latency: {requests} streamed chats per server, alternating")
                out["latency"] = end_to_end(servers, requests, ask, budget_s, log)
            mem_level = max(levels)
            if "concurrency" in sections or "memory" in sections:
                lv = levels if "concurrency" in sections else [mem_level]
                log(f"Concurrency: {lv} clients x {per_client} requests each (time box {time_box_s:.0f} s per run)")
                conc, load_rss = concurrency(servers, lv, per_client, time_box_s, ask,
                                             ws=ws and "concurrency" in sections, memory_at=mem_level, log=log)
                if "concurrency" in sections:
                    out["concurrency"] = conc
            if "memory" in sections:
                mem: dict[str, Any] = {"load_clients": mem_level, "peers": {}}
                for name, p in servers.items():
                    after = proc_memory(p.pid)
                    mem["peers"][name] = {"idle_rss_bytes": idle[name]["rss_bytes"],
                                          "idle_peak_rss_bytes": idle[name]["peak_rss_bytes"],
                                          "load_max_rss_bytes": load_rss.get(name, 0),
                                          "peak_rss_bytes": after["peak_rss_bytes"]}
                try:
                    mem["nanochat-lite + embeddings"] = embeddings_memory(servers[NANO], home, threads,
                                                                         PROMPTS)
                except Exception as e:  # the chat numbers stand on their own
                    mem["nanochat-lite + embeddings"] = {"error": f"{type(e).__name__}: {e}"}
                out["memory"] = mem
        finally:
            stop_servers(servers)
    return out
