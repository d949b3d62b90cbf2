"""SIGTERM while the scheduler evaluates the shared prompt prefix in the background, just
after "ready": the engine closes only once that engine call has ended, and the process
exits 0. (Closing the engine under the call crashed the process — exit 134 or 139 —
until Scheduler.close() waited for the threads that call the engine.)

The real copy takes ~0.2 s, so a SIGTERM after a fixed sleep missed it one run in three.
The server's test hook (commands/boot.py, NANOCHAT_LITE_TEST_PREFIX_TOKENS) makes the
prefix PREFIX_TOKENS long and prints a line just before the engine starts on it; the
signal goes out when that line appears, so it lands inside the engine call every run.
A crash is only the likely outcome of closing the engine under that call (6 runs in 10
here), so the hook also prints, as the engine closes, the prefix tokens the slots hold:
all of them only if close() waited for the call to end."""

from __future__ import annotations

import re
import signal
import time

import pytest

from nanochat_lite.commands.boot import PREFIX_HOOK_EXIT, PREFIX_HOOK_LINE, TEST_PREFIX_ENV
from nanochat_lite.engines.scheduler import CLOSE_WAIT_S
from serverproc import ServerProc

# Tokens: 1-3 s of prefill on one busy core here (50-120 tokens/s): far past the ~0.1 s
# uvicorn takes to act on the signal, well inside the CLOSE_WAIT_S close() waits at most.
PREFIX_TOKENS = 128
RUNS = 2


def _wait_for_line(server: ServerProc, line: str, within: float) -> float:
    """Seconds until `line` is in the server's log; fails if the server died or never wrote it."""
    t0 = time.monotonic()
    while line not in server.log():
        assert server.proc is not None and server.proc.poll() is None, f"server exited:\n{server.log()[-2000:]}"
        assert time.monotonic() - t0 < within, f"no {line!r} within {within} s:\n{server.log()[-2000:]}"
        time.sleep(0.005)
    return time.monotonic() - t0


@pytest.mark.parametrize("run", range(RUNS))
def test_sigterm_while_the_prefix_is_evaluated_exits_0(tmp_path, chat_model_path, run: int) -> None:
    server = ServerProc(tmp_path, "--threads", "1", env={TEST_PREFIX_ENV: str(PREFIX_TOKENS)}).start()
    assert server.proc is not None
    try:
        waited = _wait_for_line(server, PREFIX_HOOK_LINE, within=30)
        server.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        rc = server.proc.wait(CLOSE_WAIT_S + 20)
        took = time.monotonic() - t0
    finally:
        server.kill()
        server.stop()  # closes its log
    log = server.log()
    at_close = re.search(re.escape(PREFIX_HOOK_EXIT) + r" (\d+)", log)
    print(f"\nSIGTERM {waited:.2f} s after ready, on the hook's line: exit {rc} {took:.2f} s later, "
          f"{at_close[1] if at_close else 'no'} prefix tokens in the slots as the engine closed")
    assert rc == 0, f"exit {rc} after a SIGTERM during the prefix's engine call:\n{log[-2000:]}"
    assert at_close and int(at_close[1]) == PREFIX_TOKENS, f"the engine closed under the prefix's call:\n{log[-2000:]}"
