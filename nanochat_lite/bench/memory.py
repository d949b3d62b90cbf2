"""Memory of benchmarked processes, read from `/proc/PID/status` (Linux only).

VmRSS is resident memory now, VmHWM its peak since the process started. A sampler
thread catches the highest VmRSS during a load the peak alone would not separate
from start-up. The KV-cache size is what the server itself reports; nothing here
estimates it from the model's shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .common import Proc


def steady_memory(pid: int, *, step_s: float = 0.5, within: int = 1 << 20, limit_s: float = 10.0) -> dict[str, int]:
    """proc_memory once the idle process's RSS stops moving (two readings `step_s` apart
    within `within` bytes, at most `limit_s`): a server finishes its start-up work when
    it is first idle (nanochat-lite: the shared prefix, then it gives back the KV cache
    pages nothing wrote), and idle means after that, for every peer alike."""
    time.sleep(step_s)
    last = proc_memory(pid)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        time.sleep(step_s)
        now = proc_memory(pid)
        if abs(now["rss_bytes"] - last["rss_bytes"]) <= within:
            return now
        last = now
    return last


def proc_memory(pid: int) -> dict[str, int]:
    """{"rss_bytes", "peak_rss_bytes"} of a process, from /proc/PID/status (VmRSS, VmHWM)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key = "rss_bytes" if line.startswith("VmRSS") else "peak_rss_bytes"
                out[key] = int(line.split()[1]) * 1024  # kB -> bytes
    return out


def kv_cache_bytes(stats: Any) -> tuple[str, int] | None:
    """The KV-cache size a nanochat-lite /api/stats reports under "engine": the first
    number whose key path names both the KV cache ("kv_cache") and bytes. A count of cells
    or tokens is not a size, and other KV figures in bytes (what was given back) are not the
    cache's size, so neither is taken.

    {"engine": {"slots": 4, "kv_cache_bytes": 1024}} -> ("engine.kv_cache_bytes", 1024)
    {"engine": {"kv_cache": {"cells": 8192, "bytes": 96}}} -> ("engine.kv_cache.bytes", 96)
    {"engine": {"kv_cells": 8192}} -> None
    {"engine": {"kv_cache_bytes": None, "kv_released_bytes": 0}} -> None (nanochat-lite reports
    the size once idle)
    """
    found: list[tuple[str, int]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and "kv_cache" in path.lower():
            found.append((path, int(node)))

    if isinstance(stats, dict):
        walk(stats.get("engine"), "engine")
    in_bytes = [f for f in found if "byte" in f[0].lower()]
    return in_bytes[0] if in_bytes else None


class RssSampler:
    """Highest VmRSS of a process seen while the `with` block runs (sampled every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.max_rss = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.max_rss = max(self.max_rss, proc_memory(self.pid)["rss_bytes"])
            except (OSError, KeyError):
                return
            self._stop.wait(0.02)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


_EMBEDDER_CHILD = """
import json, sys
from pathlib import Path
from nanochat_lite.embeddings import Embedder
e = Embedder(Path(sys.argv[1]), threads=int(sys.argv[2]))
e.embed(json.loads(sys.argv[3]))
st = {l.split(':')[0]: int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(('VmRSS', 'VmHWM'))}
print(json.dumps({"rss_bytes": st["VmRSS"], "peak_rss_bytes": st["VmHWM"]}))
"""


def embeddings_memory(p: Proc, home: Path, threads: int, prompts: list[str]) -> dict[str, Any]:
    """nanochat-lite's memory with the embedding model loaded: through the server's
    /v1/embeddings when it has one, else an `Embedder` in a child process."""
    from .. import models

    texts = [prompts[i % len(prompts)] for i in range(32)]
    r = httpx.post(p.url + "/v1/embeddings", json={"input": texts, "model": models.DEFAULT_EMBEDDING}, timeout=300)
    if r.status_code == 200:
        return {"how": "nanochat-lite server after POST /v1/embeddings (32 texts), same process as the chat model",
                **proc_memory(p.pid)}
    model_dir = models.ensure(home, models.DEFAULT_EMBEDDING)
    child = subprocess.run([sys.executable, "-c", _EMBEDDER_CHILD, str(model_dir), str(threads), json.dumps(texts)],
                           capture_output=True, text=True, check=True, timeout=300)
    return {"how": f"the server has no /v1/embeddings (HTTP {r.status_code}); Embedder loaded in a separate "
                   "Python process that embedded 32 texts (interpreter + numpy + model)",
            **json.loads(child.stdout.strip().splitlines()[-1])}
