"""End-to-end latency, concurrency and memory of the servers (bench sections
"latency", "concurrency", "memory"), all peers started once and side by side.

Every peer (see `peers.py`) runs at once on the same GGUF and thread count, so requests
can alternate between them (a change in machine load then hits all alike); the idle
ones use no CPU. Each gets one warm-up request before anything is measured.

- latency: sequential streamed chats, alternating servers request by request.
- concurrency: 1, 4 and 10 clients sending at the same moment, each a NEW conversation
  with its own prompt (a distinct story number), so no server can answer from a cached
  prompt beyond the shared template start. Aggregate tokens/s = all completion tokens /
  wall time from the first request sent to the last one finished. nanochat-lite is also
  driven over its WebSocket.
- memory: RSS idle and the highest RSS during the 10-client wave (`memory.py`), and the
  KV-cache size each server allocated with these settings, when it says so.

Not measured here: prompt caching across turns, long prompts (see `fairness.py`).
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx

from .client import SAMPLING, Ask, Sample, http_request, request_body, summarize, ws_request
from .common import Proc, settle_nanochat
from .isolate import PeerCrashed
from .memory import RssSampler, embeddings_memory, kv_cache_bytes, proc_memory, steady_memory
from .peers import BASELINE, LLAMA_SERVER, NANO, NANO_DEFAULTS, Peer

# Varied, realistic user turns for the latency section: questions, instructions, small talk; cycled.
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
WARMUP_PROMPT = "Hello! Who are you?"
TOPICS = [
    "a lighthouse keeper", "a lost umbrella", "a robot gardener", "a dragon who bakes bread", "a night train",
    "a painter who cannot see blue", "a cat on a sailboat", "the last bookshop in town", "a snowman in July",
    "a clockmaker's apprentice", "a whale that sings jazz", "a village without mirrors", "a kite that flew away",
    "an astronaut's grandmother", "a forgotten birthday", "a bridge that talks", "a fox and a violin",
    "a city under the sea", "a detective who is a dog", "the first day of school on Mars",
]
# Each route of a server draws its prompts from its own range, so no prompt repeats on a server.
_ROUTE_PROMPT_BASE = {"http": 0, "ws": 10_000}


def story_prompt(n: int) -> str:
    """The n-th distinct new-conversation prompt. 0 -> 'Write a short story about a
    lighthouse keeper (story number 1).'"""
    return f"Write a short story about {TOPICS[n % len(TOPICS)]} (story number {n + 1})."


@dataclass
class Running:
    peer: Peer
    proc: Proc

    @property
    def url(self) -> str:
        return self.proc.url


# -- servers -----------------------------------------------------------------------------
def start_servers(peers: list[Peer], scratch: Path, log: Callable[[str], None] = print
                  ) -> tuple[dict[str, Running], dict[str, str]]:
    """Start every peer and wait until each is ready. nanochat-lite must start; another
    peer that fails is left out and reported: ({name: running}, {name: why it is absent})."""
    servers: dict[str, Running] = {}
    failed: dict[str, str] = {}
    try:
        for peer in peers:
            proc = peer.start(scratch)
            try:
                proc.wait_ready(peer.ready_path)
            except Exception as e:
                proc.stop()
                if peer.name == NANO:
                    raise
                failed[peer.name] = str(e) if isinstance(e, PeerCrashed) else f"failed to start: {e}"[:500]
                log(f"  {peer.name}: {failed[peer.name]}")
                continue
            servers[peer.name] = Running(peer, proc)
    except BaseException:
        stop_servers(servers)
        raise
    return servers, failed


def stop_servers(servers: dict[str, Running]) -> None:
    for r in servers.values():
        r.proc.stop()


def settle(servers: dict[str, Running]) -> None:
    """Let every nanochat-lite load its own tokenizer now (see `settle_nanochat`)."""
    for r in servers.values():
        if r.peer.nanochat:
            with contextlib.suppress(httpx.HTTPError):
                settle_nanochat(r.url)


def warm_up(servers: dict[str, Running], ask: Ask) -> None:
    """One request to every server, not counted."""
    with httpx.Client(timeout=300) as c:
        for r in servers.values():
            http_request(c, r.url, request_body(r.peer, WARMUP_PROMPT, ask.max_tokens), ask)


# -- sections ----------------------------------------------------------------------------
def end_to_end(servers: dict[str, Running], requests: int, ask: Ask, budget_s: float,
               log: Callable[[str], None] = print) -> dict:
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
            for name, r in servers.items():
                body = request_body(r.peer, PROMPTS[i % len(PROMPTS)], ask.max_tokens)
                samples[name].append(http_request(clients[name], r.url, body, ask))
            if (i + 1) % 10 == 0 or i + 1 == requests:
                log(f"  {i + 1}/{requests} requests per server")
    finally:
        for c in clients.values():
            c.close()
    return {"planned_per_server": requests, "budget_s": budget_s, "max_tokens": ask.max_tokens, "sampling": SAMPLING,
            "prompts": len(PROMPTS), "transport": "HTTP, OpenAI /v1/chat/completions streaming",
            "peers": {name: summarize(s) for name, s in samples.items()}}


def _client_loop(send: Callable[[str, float], Sample], prompts: list[str], time_box_s: float,
                 start: threading.Barrier, out: list[Sample]) -> None:
    start.wait()
    deadline = time.perf_counter() + time_box_s
    for prompt in prompts:
        if time.perf_counter() > deadline:
            return  # requests not sent are reported as such, not estimated
        out.append(send(prompt, deadline))


def run_level(server: Running, transport: str, clients: int, per_client: int, time_box_s: float,
              ask: Ask, first_prompt: int = 0) -> dict[str, Any]:
    """`clients` simultaneous clients, each sending `per_client` new conversations one after
    another (prompts `story_prompt(first_prompt)` onwards, all distinct), for at most
    `time_box_s` seconds (answers still streaming then are cut and counted)."""
    barrier = threading.Barrier(clients + 1)
    results: list[list[Sample]] = [[] for _ in range(clients)]
    with contextlib.ExitStack() as stack:  # closing a socket cancels what it still streams
        conns: list[Any] = []
        for _ in range(clients):
            if transport == "ws":
                from websockets.sync.client import connect

                ws_url = server.url.replace("http://", "ws://") + "/ws"
                conns.append(stack.enter_context(connect(ws_url, max_size=4 << 20)))
            else:
                conns.append(stack.enter_context(httpx.Client(timeout=300)))
        threads = []
        for i, conn in enumerate(conns):
            def send(prompt: str, deadline: float, conn: Any = conn) -> Sample:
                if transport == "ws":
                    return ws_request(conn, prompt, ask, deadline)
                return http_request(conn, server.url, request_body(server.peer, prompt, ask.max_tokens), ask,
                                    deadline)

            prompts = [story_prompt(first_prompt + i * per_client + j) for j in range(per_client)]
            threads.append(threading.Thread(target=_client_loop, daemon=True,
                                            args=(send, prompts, time_box_s, barrier, results[i])))
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    samples = [s for r in results for s in r]
    out = summarize(samples)
    out.update(clients=clients, planned=clients * per_client, wall_s=round(wall, 2),
               aggregate_tok_s=round(sum(s.tokens for s in samples) / wall, 1),
               time_boxed=len(samples) < clients * per_client or any(s.cut for s in samples))
    return out


def aggregate_ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Aggregate tokens/s of nanochat-lite over each comparable peer, per level (HTTP routes).

    {"nanochat-lite HTTP": {"10": {"aggregate_tok_s": 150}}, "llama-server HTTP": {"10": {"aggregate_tok_s": 100}}}
    -> {"nanochat-lite / llama-server": {"10": 1.5}}
    """
    ours = results.get(f"{NANO} HTTP", {})
    out: dict[str, dict[str, float]] = {}
    for other in (LLAMA_SERVER, BASELINE):
        theirs = results.get(f"{other} HTTP", {})
        pairs = {lv: (ours[lv]["aggregate_tok_s"], theirs[lv]["aggregate_tok_s"]) for lv in ours if lv in theirs}
        ratios = {lv: round(a / b, 2) for lv, (a, b) in pairs.items() if b > 0}
        if ratios:
            out[f"{NANO} / {other}"] = ratios
    return out


def concurrency(servers: dict[str, Running], levels: list[int], per_client: int, time_box_s: float,
                ask: Ask, *, ws: bool = True, memory_at: int | None = None,
                log: Callable[[str], None] = print) -> tuple[dict, dict[str, int]]:
    """Each level for every (server, transport), alternating; returns (results, max RSS at `memory_at`)."""
    routes = [(name, "http") for name in servers] + ([(NANO, "ws")] if ws and NANO in servers else [])
    out: dict[str, dict[str, Any]] = {f"{name} {t.upper()}": {} for name, t in routes}
    next_prompt = {route: _ROUTE_PROMPT_BASE[route[1]] for route in routes}
    load_rss: dict[str, int] = {}
    for level in levels:
        for name, transport in routes:
            server = servers[name]
            with RssSampler(server.proc.pid) as rss:
                r = run_level(server, transport, level, per_client, time_box_s, ask,
                              first_prompt=next_prompt[(name, transport)])
            next_prompt[(name, transport)] += level * per_client
            if level == memory_at and transport == "http":
                load_rss[name] = rss.max_rss
            out[f"{name} {transport.upper()}"][str(level)] = r
            ttft = r["ttft_ms"]
            log(f"  {name:<31} {transport.upper():<4} {level:>2} clients: {r['completed']}/{r['planned']} completed, "
                f"{r['aggregate_tok_s']} tok/s total, TTFT p50 {ttft.get('median', '-')} ms p95 {ttft.get('p95', '-')}"
                f" ms, {r['errors']} errors" + (" (time box reached)" if r["time_boxed"] else ""))
    ratios = aggregate_ratios(out)
    for pair, by_level in ratios.items():
        log(f"  aggregate tok/s {pair}: " + ", ".join(f"{lv} clients {v:.2f}×" for lv, v in by_level.items()))
    return {"levels": levels, "requests_per_client": per_client, "time_box_s": time_box_s,
            "max_tokens": ask.max_tokens, "prompts": "new conversations, distinct story prompts",
            "results": out, "ratios": ratios}, load_rss


KV_REPORT_WAIT_S = 10.0  # how long a nanochat-lite may take to report its KV-cache size


def _kv_cache(server: Running) -> dict[str, Any]:
    """KV-cache bytes the server allocated, from its /api/stats (nanochat-lite) or its log (llama.cpp)."""
    if server.peer.nanochat:
        # The server fills the figure in after IDLE_BEFORE_LOAD_S (2 s) of quiet: read
        # right after settle() it was missing one start in three. Poll for it a while.
        deadline = time.monotonic() + KV_REPORT_WAIT_S
        while True:
            try:
                found = kv_cache_bytes(httpx.get(server.url + "/api/stats", timeout=30).json())
            except (httpx.HTTPError, ValueError) as e:
                return {"bytes": None, "source": f"not reported (/api/stats: {type(e).__name__})"}
            if found:
                return {"bytes": found[1], "source": f"/api/stats {found[0]}"}
            if time.monotonic() > deadline:
                return {"bytes": None, "source": "not reported (/api/stats has no KV-cache size under engine)"}
            time.sleep(0.1)
    from .peers import kv_cache_from_log

    n = kv_cache_from_log(server.proc.log_text())
    return {"bytes": n, "source": "its start-up log (llama_kv_cache: size = …)" if n else "not reported"}


def run(model_path: Path, threads: int, *, peers: list[Peer], absent: dict[str, str], sections: set[str],
        requests: int, budget_s: float, levels: list[int], per_client: int, time_box_s: float, home: Path,
        max_tokens: int, ws: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Sections "latency", "concurrency", "memory" (any subset) against one start of each peer."""
    from ..tokenizer import Tokenizer

    ask = Ask(Tokenizer.from_gguf(model_path).count, max_tokens)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers, failed = start_servers(peers, Path(tmp), log)
        absent = {**absent, **failed}
        try:
            settle(servers)
            idle = {name: steady_memory(r.proc.pid) for name, r in servers.items()}
            kv = {name: _kv_cache(r) for name, r in servers.items()}
            warm_up(servers, ask)
            if "latency" in sections:
                log(f"End-to-end latency: {requests} streamed chats per server, alternating")
                out["latency"] = {**end_to_end(servers, requests, ask, budget_s, log), "absent": absent}
            mem_level = max(levels)
            if "concurrency" in sections or "memory" in sections:
                lv = levels if "concurrency" in sections else [mem_level]
                log(f"Concurrency: {lv} simultaneous new conversations x {per_client} each, "
                    f"{max_tokens} tokens (time box {time_box_s:.0f} s per run)")
                conc, load_rss = concurrency(servers, lv, per_client, time_box_s, ask,
                                             ws=ws and "concurrency" in sections, memory_at=mem_level, log=log)
                if "concurrency" in sections:
                    out["concurrency"] = {**conc, "absent": absent}
            if "memory" in sections:
                mem: dict[str, Any] = {"load_clients": mem_level, "peers": {}, "absent": absent}
                for name, r in servers.items():
                    after = proc_memory(r.proc.pid)
                    mem["peers"][name] = {"idle_rss_bytes": idle[name]["rss_bytes"],
                                          "idle_peak_rss_bytes": idle[name]["peak_rss_bytes"],
                                          "load_max_rss_bytes": load_rss.get(name, 0),
                                          "peak_rss_bytes": after["peak_rss_bytes"],
                                          "kv_cache_bytes": kv[name]["bytes"], "kv_cache_source": kv[name]["source"]}
                    log(f"  {name:<31} idle {idle[name]['rss_bytes'] >> 20} MB, max under {mem_level} chats "
                        f"{load_rss.get(name, 0) >> 20} MB, KV cache "
                        + (f"{kv[name]['bytes'] / (1 << 20):.1f} MB" if kv[name]["bytes"] else kv[name]["source"]))
                try:
                    mem["nanochat-lite + embeddings"] = embeddings_memory(servers[NANO].proc, home, threads,
                                                                         PROMPTS)
                except Exception as e:  # the chat numbers stand on their own
                    mem["nanochat-lite + embeddings"] = {"error": f"{type(e).__name__}: {e}"}
                out["memory"] = mem
        finally:
            stop_servers(servers)
        if "memory" in sections:
            out["memory"]["defaults"] = _default_settings_memory(model_path, threads, Path(tmp), log)
    return out


def _default_settings_memory(model_path: Path, threads: int, scratch: Path,
                             log: Callable[[str], None]) -> dict[str, Any]:
    """Idle RSS and KV cache of nanochat-lite started with its default settings (no
    --ctx-size, no --serve-args): what a plain `nanochat-lite serve` allocates."""
    from .peers import nanochat_defaults

    servers, failed = start_servers([nanochat_defaults(model_path, threads)], scratch, log)
    if NANO_DEFAULTS not in servers:  # the measured rows stand on their own
        return {"error": failed.get(NANO_DEFAULTS, "did not start")}
    try:
        settle(servers)
        r = servers[NANO_DEFAULTS]
        kv = _kv_cache(r)
        out = {**steady_memory(r.proc.pid), "kv_cache_bytes": kv["bytes"], "kv_cache_source": kv["source"]}
    finally:
        stop_servers(servers)
    log(f"  {NANO_DEFAULTS:<31} idle {out['rss_bytes'] >> 20} MB, KV cache "
        + (f"{kv['bytes'] / (1 << 20):.1f} MB" if kv["bytes"] else kv["source"]))
    return out
