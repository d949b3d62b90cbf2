"""Peers that load foreign native code run in a child process, so a crash there is one
row that says so, not the end of the benchmark.

A llama-cpp-python compiled with `-march=native` dies with SIGSEGV/SIGILL on VMs whose CPU
reports AMX that the guest cannot run; loaded into the benchmark's own process it took
the whole run with it. Here the peer lives in `python -m nanochat_lite.bench.isolate`:

- `run_in_child(fn, **kwargs)`: one call, `fn(**kwargs)` in a fresh process, its
  JSON-able return value back;
- `Worker(factory, **init)`: a process that stays, for measurements that alternate with
  ours round by round. `factory(**init)` returns `(info, handle)`; `info` is sent once
  when ready, then every `Worker.call(request)` is answered by `handle(request)`.

Functions are named by module and qualified name (`module:qualname`), so they must be
importable at module level. Arguments, requests and answers are JSON, one object per
line, on a descriptor of its own: the child's fd 1 is pointed at its stderr, so what a
native library prints cannot corrupt the protocol. The child's stderr goes to a file
(a pipe nobody drains would block a chatty library); its tail explains a failure.

A child that dies by a signal raises `PeerCrashed` ("crashed (signal 11)"); one that
exits otherwise, or answers with an error, raises `PeerFailed`. Both are RuntimeErrors.
Not handled: hangs beyond the timeout (the child is killed and `PeerFailed` raised).
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, NoReturn

DEFAULT_TIMEOUT_S = 600.0  # per answer; loading a model in a slow child fits easily


class PeerFailed(RuntimeError):
    """The child exited, answered with an error or did not answer in time."""


class PeerCrashed(PeerFailed):
    """The child was killed by a signal; `str()` is the row text, "crashed (signal 11)"."""

    def __init__(self, signum: int, stderr_tail: str = "") -> None:
        super().__init__(f"crashed (signal {signum})")
        self.signum = signum
        self.stderr_tail = stderr_tail


def row_text(e: BaseException) -> str:
    """What a table row says for a peer that failed: "crashed (signal 11)" or "failed: ..."."""
    if isinstance(e, PeerCrashed):
        return str(e)
    if isinstance(e, PeerFailed):
        return f"failed: {e}"[:500]
    return f"failed: {type(e).__name__}: {e}"[:500]


def target_name(fn: Callable[..., Any] | str) -> str:
    """"module:qualname" of a module-level function (a string is taken as it is)."""
    if isinstance(fn, str):
        return fn
    if "<" in fn.__qualname__:  # a lambda or a nested function: the child could not import it
        raise ValueError(f"{fn.__qualname__} is not importable by name; use a module-level function")
    module = fn.__module__
    if module == "__main__":  # run as `python -m package.module`: the child imports it by that name
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is None:
            raise ValueError(f"{fn.__qualname__} lives in a script; run it with python -m")
        module = spec.name
    return f"{module}:{fn.__qualname__}"


class Worker:
    """A child process serving one peer (see the module docstring); use as a context manager."""

    def __init__(self, factory: Callable[..., Any] | str, *, env: dict[str, str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, python: str | None = None, **init: Any) -> None:
        """`python`: the interpreter to run the child with (default this one); another venv's
        must be able to import this package (put its folder on PYTHONPATH in `env`)."""
        self._log = tempfile.TemporaryFile()
        self.spawned = time.time()  # wall clock, comparable with a time.time() the child reports
        self.proc = subprocess.Popen([python or sys.executable, "-m", "nanochat_lite.bench.isolate"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     env={**os.environ, **(env or {})})
        self._buf = b""
        try:
            self._send({"mode": "serve", "target": target_name(factory), "kwargs": init})
            self.info: Any = self._answer(timeout)
        except BaseException:
            self.close()
            raise

    def call(self, request: Any, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
        """`handle(request)` in the child; its answer."""
        self._send(request)
        return self._answer(timeout)

    def close(self) -> None:
        """Close its stdin (the child's loop ends) and wait; kill it if it does not go."""
        if self.proc.poll() is None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f and not f.closed:
                try:
                    f.close()
                except OSError:
                    pass
        self._log.close()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol -------------------------------------------------------------------------
    def _send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # it died before reading: say how
            self._raise_exit()

    def _answer(self, timeout: float) -> Any:
        line = self._line(timeout)
        msg = json.loads(line)
        if "error" in msg:
            raise PeerFailed(msg["error"])
        return msg["ok"]

    def _line(self, timeout: float) -> bytes:
        """The next protocol line, waiting at most `timeout` seconds for it."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.proc.kill()
                self.proc.wait()
                raise PeerFailed(f"no answer in {timeout:.0f} s (killed); {self._tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self._raise_exit()
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _tail(self, limit: int = 1500) -> str:
        with open(f"/proc/self/fd/{self._log.fileno()}", "rb") as f:  # own offset: the child keeps writing
            return f.read().decode(errors="replace")[-limit:].strip()

    def _raise_exit(self) -> NoReturn:
        rc = self.proc.wait()
        tail = self._tail()
        if rc < 0:
            raise PeerCrashed(-rc, tail)
        raise PeerFailed(f"exited with code {rc}" + (f": {tail}" if tail else ""))


def run_in_child(fn: Callable[..., Any] | str, *, env: dict[str, str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, **kwargs: Any) -> Any:
    """`fn(**kwargs)` in a fresh Python process; its JSON-able return value."""
    with Worker("nanochat_lite.bench.isolate:_one_shot", env=env, timeout=timeout,
                target=target_name(fn), kwargs=kwargs) as w:
        return w.info


# -- the child --------------------------------------------------------------------------------
def _one_shot(target: str, kwargs: dict[str, Any]) -> tuple[Any, None]:
    return resolve(target)(**kwargs), None


def resolve(target: str) -> Callable[..., Any]:
    """The function a "module:qualname" names (imports the module)."""
    module, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def _child() -> int:
    # The protocol gets a descriptor of its own; fd 1 (what C code printf()s to) goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us

    def reply(fn: Callable[[], Any]) -> None:
        try:
            msg = {"ok": fn()}
        except Exception as e:  # reported to the parent, which decides what the row says
            traceback.print_exc()
            msg = {"error": f"{type(e).__name__}: {e}"}
        proto.write(json.dumps(msg) + "\n")

    header = json.loads(sys.stdin.readline())
    handle: list[Callable[[Any], Any] | None] = [None]

    def start() -> Any:
        info, handle[0] = resolve(header["target"])(**header["kwargs"])
        return info

    reply(start)
    if handle[0] is None:
        return 0
    for line in sys.stdin:
        request = json.loads(line)
        reply(lambda: handle[0](request))  # type: ignore[misc]
    return 0


if __name__ == "__main__":
    raise SystemExit(_child())
