#!/usr/bin/env python3
"""Switching models when only one fits (issue #22): request → first token for a model that
must be loaded first, against llama-server's router mode (`--models-dir`, `--models-max 1`).

Both servers hold SmolLM2-135M and Gemma 3 270M (files in the page cache after the first
round) and may keep one loaded: nanochat-lite through `--models-memory` set just above the
larger model's estimate, llama-server through `--models-max 1`. Requests alternate between
the two models (streamed `/v1/completions`, 8 tokens: Gemma is a base model), one at a
time, servers alternating round by round; each request's time to its first token includes
the other model's unload and this one's load. The first request of each server is left
out (cold files, first start).

    .venv/bin/python scripts/model_switch.py --llama-server PATH [--rounds 6]

Figures are only worth reading on a quiet machine; the load average is printed.
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

from nanochat_lite import models
from nanochat_lite.bench.common import Proc, free_port

SMOL, GEMMA = "smollm2-135m-instruct", "gemma3-270m"
CTX = 2048


def first_token_ms(client: httpx.Client, url: str, model: str) -> float:
    body = {"model": model, "prompt": "The capital of France is", "max_tokens": 8, "stream": True,
            "temperature": 0}
    t0 = time.perf_counter()
    with client.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url} {model}: {r.status_code} {r.read()[:300]!r}")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if any(c.get("text") for c in chunk.get("choices", [])):
                    return (time.perf_counter() - t0) * 1000
    raise RuntimeError(f"{url} {model}: no token")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-server", help="a llama-server binary with router mode")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    home = Path(os.environ.get("NANOCHAT_LITE_HOME", Path.home() / ".cache" / "nanochat-lite"))
    paths = {name: models.ensure(home, name, progress=lambda *_: None) for name in (SMOL, GEMMA)}
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    nano = Path(sys.executable).with_name("nanochat-lite")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "models"
        folder.mkdir()
        names = {}
        for name, path in paths.items():
            (folder / Path(path).name).symlink_to(path)
            names[name] = Path(path).stem
        servers: dict[str, tuple[Proc, dict[str, str]]] = {}
        port = free_port()
        cmd = [str(nano), "serve", "--host", "127.0.0.1", "--port", str(port), "--db", f"{tmp}/n.db",
               "--threads", str(args.threads), "--ctx-size", str(CTX), "--model", SMOL, "--model", GEMMA]
        probe = Proc(cmd, port)
        try:
            probe.wait_ready("/api/health")
            rows = httpx.get(probe.url + "/api/models", timeout=30).json()["data"]
            rows = rows["models"] if isinstance(rows, dict) else rows
            biggest = max(r["estimated_memory_bytes"] for r in rows)
        finally:
            probe.stop()
        budget_mb = biggest // (1 << 20) + 16  # one fits, not two
        port = free_port()
        cmd = cmd[:5] + [str(port)] + cmd[6:] + ["--models-memory", str(budget_mb)]
        servers["nanochat-lite"] = (Proc(cmd, port), {SMOL: SMOL, GEMMA: GEMMA})
        if args.llama_server:
            port = free_port()
            servers["llama-server (router)"] = (Proc(
                [args.llama_server, "--models-dir", str(folder), "--models-max", "1", "--host", "127.0.0.1",
                 "--port", str(port), "-c", str(CTX), "-t", str(args.threads), "--no-webui"], port),
                {SMOL: names[SMOL], GEMMA: names[GEMMA]})
        try:
            for name, (proc, alias) in servers.items():
                proc.wait_ready("/health" if "llama" in name else "/api/health")
                if "llama" in name:  # the router's own names for the files
                    listed = [m["id"] for m in httpx.get(proc.url + "/v1/models", timeout=30).json()["data"]]
                    for model, stem in list(alias.items()):
                        alias[model] = next((m for m in listed if stem in m or m in stem), stem)
                    print(f"llama-server router lists {listed}")
            times: dict[str, list[float]] = {name: [] for name in servers}
            with httpx.Client() as client:
                for i in range(args.rounds * 2 + 1):
                    model = (SMOL, GEMMA)[i % 2]
                    for name, (proc, alias) in (servers.items() if i % 2 == 0 else reversed(servers.items())):
                        ms = first_token_ms(client, proc.url, alias[model])
                        if i > 0:
                            times[name].append(ms)
                        print(f"  {name:<24} {model:<22} first token {ms:8.1f} ms", flush=True)
        finally:
            for proc, _ in servers.values():
                proc.stop()
    print(f"nanochat-lite --models-memory {budget_mb} MB (one model fits); llama-server --models-max 1")
    for name, ts in times.items():
        print(f"{name:<24} switch → first token: median {statistics.median(ts):.0f} ms "
              f"(min {min(ts):.0f}, max {max(ts):.0f}, n {len(ts)})")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
