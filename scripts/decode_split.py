#!/usr/bin/env python3
"""Where one stream's decode speed goes, between llama-bench and `nanochat-lite serve` (issue #24).

    .venv/bin/python scripts/decode_split.py --llama-bench BIN --llama-server BIN [--runs 5] [--tokens 256]

`nanochat-lite bench --sections decode` compares our /api/chat stream with llama-bench's tg128,
which runs no server, no sampling and no client. This splits that gap, alternating round by
round, each figure tokens/s between the first and the last token (rate by token count):
- llama-bench tg128: llama.cpp's decode alone.
- llama-server /completion: the same llama.cpp server loop our engine runs (slots, sampling,
  its JSON stream), in its own process, read by an httpx client as SSE.
- our engine in-process (`Engine.run`, the emit callback doing nothing): that loop inside this
  Python process, each token crossing into Python once -- no HTTP, no event loop.
The last step, engine -> /api/chat, is `bench --sections decode` (run it in the same sitting).
Every server answers the same token ids with the same sampling (the bench's: temperature 0,
no repeat penalty) and the end-of-text tokens banned, so every answer is `--tokens` long.
Only worth reading on a quiet machine: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from nanochat_lite.bench.common import Proc, free_port
from nanochat_lite.bench.peers import llama_bench_tg
from nanochat_lite.bench.serving import LLAMA_BENCH_TG, LONG_PROMPT
from nanochat_lite.engines.local import Engine
from nanochat_lite.generation import Prepared, SamplingParams


def _server_rate(url: str, tokens: list[int], n: int, ban: list[int]) -> float:
    body = {"prompt": tokens, "n_predict": n, "stream": True, "temperature": 0, "repeat_penalty": 1.0,
            "cache_prompt": False, "logit_bias": [[t, False] for t in ban]}
    stamps: list[float] = []
    with httpx.Client(timeout=300) as c, c.stream("POST", url + "/completion", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:]).get("content"):
                stamps.append(time.perf_counter())
    if len(stamps) < n // 2:
        raise RuntimeError(f"llama-server streamed {len(stamps)} tokens of {n}")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _median(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.1f} ({min(xs):.1f}-{max(xs):.1f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-bench", type=Path, required=True)
    ap.add_argument("--llama-server", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--model", type=Path)
    args = ap.parse_args()
    if args.model is None:
        from nanochat_lite import models
        from nanochat_lite.config import default_home

        args.model = models.model_path(default_home(os.environ), models.lookup("smollm2-135m-instruct"))
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    engine = Engine(args.model, n_ctx=2048, parallel=1, threads=args.threads)
    prep = engine.prompts.prepare([{"role": "user", "content": LONG_PROMPT}], SamplingParams(max_tokens=args.tokens))
    # the end-of-turn and end-of-text tokens, each a single special token in chat vocabularies
    ban = sorted({ids[0] for text in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>")
                  if len(ids := engine._engine_tokenize(text, True)) == 1})
    params = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=args.tokens,
                            logit_bias=tuple((t, False) for t in ban))
    rates: dict[str, list[float]] = {f"llama-bench tg{LLAMA_BENCH_TG}": [], "llama-server /completion": [],
                                     "our engine in-process": []}
    port = free_port()
    server = Proc([str(args.llama_server), "-m", str(args.model), "--threads", str(args.threads), "-c", "2048",
                   "--host", "127.0.0.1", "--port", str(port), "--no-webui"], port)
    url = server.url
    try:
        server.wait_ready("/health")
        _server_rate(url, prep.tokens, 16, ban)  # warm both up
        engine.run(Prepared(prep.tokens, 0, 16), params, emit=lambda _e: None)
        for i in range(args.runs):
            rates[f"llama-bench tg{LLAMA_BENCH_TG}"].append(
                llama_bench_tg(args.llama_bench, args.model, args.threads, LLAMA_BENCH_TG))
            rates["llama-server /completion"].append(_server_rate(url, prep.tokens, args.tokens, ban))
            done = engine.run(Prepared(prep.tokens, 0, args.tokens), params, emit=lambda _e: None)
            if done.completion_tokens < args.tokens // 2:
                raise RuntimeError(f"our engine answered {done.completion_tokens} tokens of {args.tokens}")
            rates["our engine in-process"].append(done.decode_tokens_per_s)
            print(f"run {i + 1}/{args.runs}: " + "  ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)
    finally:
        server.stop()
        engine.close()
    base = statistics.median(rates[f"llama-bench tg{LLAMA_BENCH_TG}"])
    print(f"\ntokens/s, median (min-max) of {args.runs}; ratio to llama-bench tg{LLAMA_BENCH_TG}")
    for name, xs in rates.items():
        print(f"  {name:28s} {_median(xs)}  {statistics.median(xs) / base:.3f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        sys.exit(main())
