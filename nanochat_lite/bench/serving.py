"""Cold start and decode speed, side by side in one run.

Cold start: process start -> health 200 -> first streamed token, for nanochat-lite
and `python -m llama_cpp.server` on the same GGUF and thread count, alternating,
median of N. Both get the same OpenAI-style streaming request (readiness for
llama_cpp.server, which has no health route, is its first 200 from /v1/models: it
loads the model before it listens).

Decode: tokens/s between the first and last streamed token of a long answer through
nanochat-lite's /api/chat, against llama-cpp-python's own `Llama.generate` loop on the
same prompt tokens in this process (the server idle meanwhile), alternating.

    python -m nanochat_lite.bench.serving [--runs 5] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import httpx

from .common import (Proc, fmt, free_port, have_llama_cpp_server, llama_cpp_server_cmd, machine, nanochat_cmd,
                     settle_nanochat, stream_openai, summary)

FIRST_MESSAGES = [{"role": "user", "content": "Hello! Who are you?"}]
LONG_PROMPT = "Write the numbers from 1 to 500, separated by commas."


def cold_start(model_path: Path, threads: int, ctx: int, runs: int, log=print) -> dict:
    peers = {"nanochat-lite": True, "llama_cpp.server": have_llama_cpp_server()}
    results: dict[str, dict[str, list[float]]] = {p: {"health_s": [], "first_token_s": []} for p in peers if peers[p]}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            for peer in results:
                port = free_port()
                if peer == "nanochat-lite":
                    cmd = nanochat_cmd(port, str(model_path), threads, ctx, Path(tmp) / f"db{i}.sqlite3")
                    ready_path = "/api/health"
                else:
                    cmd = llama_cpp_server_cmd(port, model_path, threads, ctx)
                    ready_path = "/v1/models"
                with Proc(cmd, port) as p:
                    health = p.wait_ready(ready_path)
                    first = stream_openai(p.url, FIRST_MESSAGES, max_tokens=4)["first"] - p.t0
                results[peer]["health_s"].append(health)
                results[peer]["first_token_s"].append(first)
                log(f"  run {i + 1}/{runs} {peer:<17} health {health * 1000:7.0f} ms   first token {first * 1000:7.0f} ms")
    out = {peer: {k: summary([v * 1000 for v in vals], 0) for k, vals in r.items()} for peer, r in results.items()}
    if "llama_cpp.server" in out:
        out["ratio_first_token"] = round(out["nanochat-lite"]["first_token_s"]["median"]
                                         / out["llama_cpp.server"]["first_token_s"]["median"], 3)
        out["ratio_health"] = round(out["nanochat-lite"]["health_s"]["median"]
                                    / out["llama_cpp.server"]["health_s"]["median"], 3)
    else:
        out["llama_cpp.server"] = "not installed (pip install 'llama-cpp-python[server]')"
    return out


def _raw_generate_tps(llm, tokens: list[int], n: int) -> float:
    first = last = None
    count = 0
    for _tok in llm.generate(tokens, temp=0.0, repeat_penalty=1.0, top_k=40, top_p=0.9, min_p=0.05):
        now = time.perf_counter()
        first = first or now
        last = now
        count += 1
        if count >= n:
            break
    return (count - 1) / (last - first)


def _server_tps(url: str, n: int) -> tuple[float, int]:
    body = {"message": LONG_PROMPT, "stream": True, "temperature": 0, "repeat_penalty": 1.0, "max_tokens": n}
    first = last = None
    tokens = 0
    with httpx.Client(timeout=300) as c, c.stream("POST", url + "/api/chat", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            ev = json.loads(line[6:])
            if ev["type"] == "token":
                now = time.perf_counter()
                first = first or now
                last = now
            elif ev["type"] == "done":
                tokens = ev["usage"]["completionTokens"]
    # Deltas can merge tokens (a multi-byte character); rate by the server's token count.
    return (tokens - 1) / (last - first), tokens


def decode_speed(model_path: Path, threads: int, ctx: int, runs: int, n_tokens: int = 256, log=print) -> dict:
    import llama_cpp

    from ..engine import Engine

    engine = Engine(model_path, n_ctx=ctx, threads=threads)  # only to build the identical prompt tokens
    tokens = engine.prompt_tokens([{"role": "user", "content": LONG_PROMPT}])
    del engine
    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=ctx, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    ours: list[float] = []
    raw: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        with Proc(nanochat_cmd(port, str(model_path), threads, ctx, Path(tmp) / "db.sqlite3"), port) as p:
            p.wait_ready("/api/health")
            settle_nanochat(p.url)
            _server_tps(p.url, 16)  # warm both
            _raw_generate_tps(llm, tokens, 16)
            for i in range(runs):
                tps, got = _server_tps(p.url, n_tokens)
                ours.append(tps)
                raw.append(_raw_generate_tps(llm, tokens, got))
                log(f"  run {i + 1}/{runs} nanochat-lite /api/chat {ours[-1]:6.1f} tok/s   "
                    f"llama-cpp-python generate {raw[-1]:6.1f} tok/s   ({got} tokens)")
    out = {"nanochat-lite": summary(ours), "llama-cpp-python generate": summary(raw)}
    out["ratio"] = round(out["nanochat-lite"]["median"] / out["llama-cpp-python generate"]["median"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ctx", type=int, default=2048, help="context size for both servers (llama_cpp.server's default)")
    ap.add_argument("--model", help="GGUF path (default: the pulled default model)")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--skip-decode", action="store_true")
    args = ap.parse_args(argv)
    from .. import models
    from ..config import default_home

    model_path = Path(args.model) if args.model else models.ensure(default_home(os.environ), models.DEFAULT_CHAT)
    info = machine()
    print(f"# Serving benchmark — {info['date']} — {info['cpu']}, {info['cores']} cores, "
          f"{args.threads} threads, ctx {args.ctx}, llama-cpp-python {info['llama_cpp_python']}, "
          f"load average at start {info['load_average']:.2f}")
    print(f"Model: {model_path}")
    print(f"\nCold start (median of {args.runs}, alternating; ms from process start):")
    cs = cold_start(model_path, args.threads, args.ctx, args.runs)
    for peer in ("nanochat-lite", "llama_cpp.server"):
        r = cs[peer]
        if isinstance(r, str):
            print(f"  {peer:<17} {r}")
        else:
            print(f"  {peer:<17} health 200: {fmt(r['health_s'], ' ms'):<24} first token: {fmt(r['first_token_s'], ' ms')}")
    if "ratio_first_token" in cs:
        print(f"  ratio nanochat-lite / llama_cpp.server: first token {cs['ratio_first_token']:.2f}×, "
              f"health {cs['ratio_health']:.2f}×")
    results = {"machine": info, "threads": args.threads, "ctx": args.ctx, "cold_start": cs}
    if not args.skip_decode:
        print(f"\nDecode speed (median of {args.runs}, tokens/s between first and last streamed token):")
        ds = decode_speed(model_path, args.threads, args.ctx, args.runs)
        print(f"  nanochat-lite /api/chat      {fmt(ds['nanochat-lite'], ' tok/s')}")
        print(f"  llama-cpp-python generate    {fmt(ds['llama-cpp-python generate'], ' tok/s')}")
        print(f"  ratio {ds['ratio']:.3f}×")
        results["decode"] = ds
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
