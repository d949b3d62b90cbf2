"""`serve --port 0 --port-file PATH`: the server binds a port the OS picks and says which,
so whoever starts it (tests/serverproc.py, a supervisor) never races another process
for a port it guessed was free."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx

from serverproc import ServerProc


def test_port_zero_writes_the_bound_port_before_the_model_loads(tmp_path, chat_model_path):
    server = ServerProc(tmp_path, "--threads", "1")
    with server:
        written = int(server.port_file.read_text())
        assert written == server.port != 0
        assert httpx.get(f"http://127.0.0.1:{written}/api/health", timeout=5).status_code == 200
        deadline = time.monotonic() + 30  # the banner follows health by a few lines
        while not (ready := re.search(r"Ready at:\s+http://127\.0\.0\.1:(\d+)", server.log())):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        assert int(ready[1]) == written  # the banner names the port it got, not 0
    assert not list(tmp_path.glob(".*.tmp")), "the port file's temp file was left behind"


def test_unwritable_port_file_is_a_clear_error(tmp_path, chat_model_path):
    where = tmp_path / "no-such-folder" / "port"
    p = subprocess.run([sys.executable, "-m", "nanochat_lite", "serve", "--port", "0", "--port-file", str(where),
                        "--db", str(tmp_path / "db.sqlite3")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    assert f"--port-file {where}" in p.stderr and "writable" in p.stderr, p.stderr


def test_a_store_that_cannot_open_is_a_clear_error_while_the_model_loads(tmp_path, chat_model_path):
    """The store opens while the model loads (commands/boot.py): its error waits for the load
    and closes the engine before exiting, so the process ends with the message, not a crash."""
    (tmp_path / "a-file").write_text("not a folder")
    where = tmp_path / "a-file" / "db.sqlite3"
    p = subprocess.run([sys.executable, "-m", "nanochat_lite", "serve", "--port", "0", "--threads", "1",
                        "--db", str(where)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "Segmentation" not in p.stderr
    assert f"Cannot open the conversation store {where}" in p.stderr and "--db PATH" in p.stderr, p.stderr
