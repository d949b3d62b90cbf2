"""Start a real `nanochat-lite serve` process on a loopback port, the way llama.cpp's
server tests do: poll /api/health until 200, fail fast if it died.

The server picks its own port: it binds port 0 and writes the port it got to
`--port-file`, which `start()` reads. Choosing a free port here and passing it down
would leave a gap between closing our probe socket and the child's bind, in which a
parallel run can take the port. `port=N` is only for a restart on the address an
earlier server had (clients reconnect to it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def free_port() -> int:
    """A port nothing listens on right now: for "connection refused" tests only.
    Never bind it later (another process may take it first); bind port 0 instead."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(r: httpx.Response) -> bool:
    return r.status_code == 200


class ServerProc:
    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None,
                 db: Path | None = None) -> None:
        self._port = port  # None until start() has read the port file
        self.db = db or tmp / "conversations.sqlite3"
        stamp = time.monotonic_ns()
        self.log_path = tmp / f"server-{stamp}.log"
        self.port_file = tmp / f"server-{stamp}.port"
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server's port is known once start() has read it from --port-file")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, timeout: float = 60.0, ready: Callable[[httpx.Response], bool] = _healthy) -> ServerProc:
        """Launch, then wait until /api/health satisfies `ready` (default: 200)."""
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "nanochat_lite", "serve", "--host", "127.0.0.1",
               "--port", str(self._port or 0), "--port-file", str(self.port_file), "--db", str(self.db), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()  # else an unclosed-file ResourceWarning (an error under pytest's settings)
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if self._read_port():
                try:
                    if ready(httpx.get(self.url + "/api/health", timeout=1.0)):
                        return self
                except (httpx.HTTPError, ValueError):  # ValueError: a body that is not JSON yet
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout}s:\n{self.log()}")

    def _read_port(self) -> bool:
        """True once the port is known (given, or written by the server: whole, it renames)."""
        if self._port is None:
            try:
                self._port = int(self.port_file.read_text())
            except FileNotFoundError:
                return False
        return True

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

    def __enter__(self) -> ServerProc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
