"""Start a real `nanochat-lite serve` process on a free loopback port, the way
llama.cpp's server tests do: poll /api/health until 200, fail fast if it died."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProc:
    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None,
                 db: Path | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.db = db or tmp / "conversations.sqlite3"
        self.log_path = tmp / f"server-{self.port}-{time.monotonic_ns()}.log"
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "ServerProc":
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "nanochat_lite", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--db", str(self.db), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()  # else an unclosed-file ResourceWarning (an error under pytest's settings)
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not healthy within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def stats(self) -> dict:
        return httpx.get(self.url + "/api/stats", timeout=5).json()

    def wait_idle(self, within: float) -> float:
        """Seconds until the engine reports no generation running; raises after `within`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < within:
            if self.stats()["requests"]["generating"] == 0:
                return time.monotonic() - t0
            time.sleep(0.02)
        raise AssertionError(f"engine still generating {within}s later: {self.stats()}")

    def __enter__(self) -> "ServerProc":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
