"""Shared pieces of the benchmarks: processes on free loopback ports, polling,
streaming first-token timing, and summaries (median with min-max)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary(values: list[float], digits: int = 1) -> dict:
    """{"median", "min", "max", "n"} of a list of numbers."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}


def fmt(s: dict, unit: str = "") -> str:
    return f"{s['median']:g}{unit} ({s['min']:g}–{s['max']:g})"


def nanochat_cmd(port: int, model: str, threads: int, ctx: int, db: Path) -> list[str]:
    script = Path(sys.executable).with_name("nanochat-lite")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "nanochat_lite"]
    return head + ["serve", "--host", "127.0.0.1", "--port", str(port), "--model", model,
                   "--threads", str(threads), "--ctx-size", str(ctx), "--db", str(db)]


def llama_cpp_server_cmd(port: int, model_path: Path, threads: int, ctx: int,
                         extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
            "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
            "--n_ctx", str(ctx), *extra]


class Proc:
    """A server process started at `t0` (perf_counter), stopped on exit."""

    def __init__(self, cmd: list[str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        # A file, not a pipe: llama_cpp.server logs the whole GGUF header to stderr
        # and would block on a full pipe nobody reads.
        self.log = tempfile.TemporaryFile()
        self.t0 = time.perf_counter()
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})

    @property
    def pid(self) -> int:
        return self.p.pid

    def crashed(self) -> int | None:
        """The signal that ended the process, if one did."""
        rc = self.p.poll()
        return -rc if rc is not None and rc < 0 else None

    def log_text(self) -> str:
        """What the process has written to stderr so far. Read through a second open file:
        seeking the shared one would move the child's write position too."""
        with open(f"/proc/self/fd/{self.log.fileno()}", "rb") as f:
            return f.read().decode(errors="replace")

    def wait_ready(self, path: str, timeout: float = 120.0) -> float:
        """Seconds from process start until GET path answers 200."""
        deadline = time.perf_counter() + timeout
        with httpx.Client(timeout=1.0) as c:
            while time.perf_counter() < deadline:
                if self.p.poll() is not None:
                    tail = self.log_text()[-2000:]
                    if self.p.returncode < 0:  # a peer's native code died: the row says so
                        from .isolate import PeerCrashed

                        raise PeerCrashed(-self.p.returncode, tail)
                    raise RuntimeError(f"server exited with code {self.p.returncode}: {tail}")
                try:
                    if c.get(self.url + path).status_code == 200:
                        return time.perf_counter() - self.t0
                except httpx.HTTPError:
                    pass
                time.sleep(0.005)
        raise RuntimeError(f"not ready after {timeout}s")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()

    def __enter__(self) -> "Proc":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stream_openai(url: str, messages: list[dict], max_tokens: int, **extra) -> dict:
    """Stream a chat completion; return perf_counter stamps of the first and last
    content deltas and their count."""
    body = {"model": "m", "messages": messages, "max_tokens": max_tokens, "stream": True,
            "temperature": 0, **extra}
    first = last = None
    n = 0
    with httpx.Client(timeout=300) as c, c.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for ch in chunk.get("choices", []):
                if ch.get("delta", {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    n += 1
    return {"first": first, "last": last, "deltas": n}


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        lcp = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        lcp = "not installed"
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "llama_cpp_python": lcp, "load_average": os.getloadavg()[0]}


def settle_nanochat(url: str) -> None:
    """Make a started nanochat-lite load its own tokenizer now: it otherwise loads it
    (~0.4 s holding the GIL) after the first answer or 5 s of quiet, in the middle of
    whatever is being measured. POST /api/tokenize loads it and waits for it (a 422
    means the model's vocabulary is not supported: llama.cpp's tokenizer stays)."""
    httpx.post(url + "/api/tokenize", json={"text": "settle"}, timeout=60)
