"""The command line: clear one-paragraph errors (no tracebacks) and a working terminal chat."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def cli(*args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanochat_lite", *args], input=input, capture_output=True,
                          text=True, timeout=timeout)


def assert_clean_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr


def test_missing_model_file(tmp_path):
    p = cli("serve", "--model", str(tmp_path / "nope.gguf"), "--port", "0")
    assert_clean_error(p, "nope.gguf", "--model /path/to/model.gguf")


def test_not_a_gguf_file(tmp_path):
    f = tmp_path / "weights.gguf"
    f.write_bytes(b"<html>not a model</html>")
    p = cli("chat", "--model", str(f))
    assert_clean_error(p, "weights.gguf", "is not a GGUF model file")


def test_truncated_gguf(tmp_path, chat_model_path):
    f = tmp_path / "cut.gguf"
    f.write_bytes(chat_model_path.read_bytes()[:20_000_000])
    p = cli("serve", "--model", str(f), "--port", "0", "--db", str(tmp_path / "db.sqlite3"))
    assert_clean_error(p, "cut.gguf", "truncated")


def test_folder_as_model(tmp_path):
    assert_clean_error(cli("chat", "--model", str(tmp_path)), "is a folder")


def test_port_in_use(tmp_path, chat_model_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = cli("serve", "--port", str(port), "--db", str(tmp_path / "db.sqlite3"))
    assert_clean_error(p, f"127.0.0.1:{port}", "--port")


@pytest.mark.parametrize("args,needle", [
    (("serve", "--threads", "0"), "--threads"),
    (("serve", "--ctx-size", "1"), "--ctx-size"),
    (("pull", "no-such-model"), "Known models"),
])
def test_bad_flags(args, needle):
    assert_clean_error(cli(*args), needle)


def test_unreadable_db(tmp_path, chat_model_path):
    db = tmp_path / "db.sqlite3"
    db.write_bytes(b"this is not a database" * 100)
    p = cli("serve", "--port", "0", "--db", str(db))
    assert_clean_error(p, "db.sqlite3", "--db")


def test_models_lists_known(chat_model_path):
    p = cli("models")
    assert p.returncode == 0
    assert "smollm2-135m-instruct" in p.stdout and "ready" in p.stdout


def test_terminal_chat(chat_model_path):
    p = cli("chat", "--seed", "1", input="What is the capital of France?\n/reset\nSay hi.\n/exit\n")
    assert p.returncode == 0, p.stderr
    assert "(new conversation)" in p.stderr
    assert p.stderr.count("tokens,") == 2  # one stats line per answer
    assert len(p.stdout.strip()) > 5
