"""A throwaway nginx for the tests, in front of replicas: the shipped site config
(deploy/nginx/nanochat-lite.conf, its proxy settings as they are) with its `listen` on
a free loopback port and an upstream list of the given replicas, in a temp prefix.

Run in the foreground (`daemon off`), logs and pid in the prefix. As root, its workers
run as root too (they must read the 0700 temp folder). `scripts/test.sh` installs
Debian's nginx when it is missing. nginx is required: without it the tests that need it
fail (tests/optout.py: NANOCHAT_TEST_SKIP=nginx skips them on purpose).

nginx cannot listen on port 0 and report the port, so the port is a free one picked
here; when another process takes it before nginx binds it, nginx is started again on
another.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from optout import missing, skip_if_opted_out
from serverproc import free_port

SITE = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "nanochat-lite.conf"
START_ATTEMPTS = 5  # ports tried when the picked one is taken meanwhile


def nginx_binary() -> str:
    """Path of nginx (Debian puts it in /usr/sbin, which a user's PATH may lack)."""
    skip_if_opted_out("nginx")
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found is None:
        missing("nginx", "nginx is not installed (not on PATH, not /usr/sbin/nginx)",
                "apt-get install nginx (scripts/test.sh does)")
    return found


class PortTaken(RuntimeError):
    """nginx could not bind its port: someone took it after we picked it."""


class Nginx:
    def __init__(self, prefix: Path, replicas: list[str]) -> None:
        """`replicas`: "127.0.0.1:PORT" of each replica."""
        self.binary = nginx_binary()
        self.prefix = prefix
        self.port = 0  # picked by start()
        prefix.mkdir(parents=True, exist_ok=True)
        # Short fail_timeout: a restarted replica is used again within a second.
        servers = "".join(f"    server {r} max_fails=1 fail_timeout=1s;\n" for r in replicas)
        (prefix / "nanochat-lite-upstream.conf").write_text(f"upstream nanochat_lite {{\n{servers}}}\n")
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temp = "".join(f"    {kind}_temp_path {prefix / kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (prefix / "nginx.conf").write_text(
            f"{user}worker_processes 1;\nerror_log {prefix / 'error.log'} warn;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{\n    access_log {prefix / 'access.log'};\n{temp}"
            f"    include {prefix / 'site.conf'};\n}}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def _listen_on(self, port: int) -> None:
        site, n = re.subn(r"^(\s*)listen\s+80;", rf"\1listen 127.0.0.1:{port};", SITE.read_text(), flags=re.M)
        assert n == 1, f"{SITE} has no `listen 80;` line"
        (self.prefix / "site.conf").write_text(site)
        self.port = port

    def start(self) -> Nginx:
        for attempt in range(START_ATTEMPTS):
            self._listen_on(free_port())
            try:
                return self._start_once()
            except PortTaken:
                if attempt == START_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> Nginx:
        cmd = [self.binary, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"),
               "-c", str(self.prefix / "nginx.conf"), "-g", f"daemon off; pid {self.prefix / 'nginx.pid'};"]
        test = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
        assert test.returncode == 0, f"nginx -t refused the config:\n{test.stderr}"
        seen = len(self.log())
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()  # closes its stderr pipe
                this_try = self.log()[seen:]
                if "Address already in use" in this_try:  # bind() to 127.0.0.1:N failed (98: ...)
                    raise PortTaken(f"port {self.port} was taken:\n{this_try}")
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {this_try}")
            try:
                httpx.get(self.url + "/api/health", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not answer within 20 s: {self.log()}")

    def log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
