"""The command line: clear one-paragraph errors (no tracebacks) and a working terminal chat."""

from __future__ import annotations

import re
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
    def session(first: str) -> tuple[str, str]:
        """The two answers of a terminal chat: `first`, /reset, "Say hi.", /exit."""
        p = cli("chat", "--seed", "1", input=f"{first}\n/reset\nSay hi.\n/exit\n", timeout=900)
        assert p.returncode == 0, p.stderr
        assert "(new conversation)" in p.stderr and "Traceback" not in p.stderr
        counts = re.findall(r"\[(\d+) tokens, \d+ tok/s\]", p.stderr)
        assert len(counts) == 2 and all(int(n) > 0 for n in counts), p.stderr  # one stats line per answer
        # stdout: the "> " prompt, each answer as it streams and a newline, and a prompt
        # for each line read (/reset's, then the one /exit answers).
        assert p.stdout.startswith("> ") and p.stdout.endswith("\n> "), p.stdout
        answers = p.stdout[2:-3].split("\n> > ")
        assert len(answers) == 2 and all(a.strip() for a in answers), p.stdout
        return answers[0], answers[1]

    france, after_france = session("What is the capital of France?")
    animal, after_animal = session("Name a large animal.")
    assert france != animal  # each answer is to its own question
    # After /reset the first turn is forgotten: with the same seed, the same answer to
    # "Say hi." whatever came before (had the first turn stayed, the prompts would differ).
    assert after_france == after_animal, (after_france, after_animal)
