"""SIGTERM in the first second after "ready", while the scheduler copies the shared
prompt prefix into the slots in the background: the process exits 0. (Closing the engine
under that copy crashed the process — exit 134 or 139, about one start in six here —
until Scheduler.close() waited for the threads that call the engine.)"""

from __future__ import annotations

import signal

import pytest

from serverproc import ServerProc

DELAYS_S = (0.3, 0.35, 0.4, 0.45, 0.5, 0.6)  # the prefix job starts 0.3 s after the last request


@pytest.mark.parametrize("delay", DELAYS_S)
def test_sigterm_while_the_prefix_is_shared_exits_0(tmp_path, chat_model_path, delay: float) -> None:
    import time

    server = ServerProc(tmp_path, "--threads", "1").start()
    try:
        time.sleep(delay)
        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(30)
    finally:
        server.kill()
        server._log.close()
    assert rc == 0, f"exit {rc} after SIGTERM {delay} s after ready:\n{server.log()[-2000:]}"
