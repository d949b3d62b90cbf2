"""Bad model input on the command line: a corrupt GGUF (truncated, wrong magic, empty,
an unsupported version, an architecture llama.cpp does not know) and a bad
--chat-template each end `serve` with exit status 2 and one message that names the file
(once), the problem and the fix — never a traceback."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from nanochat_lite.commands.common import CLIError, chat_template_source
from nanochat_lite.config import Config
from nanochat_lite.engines.template import CHATML, MAX_TEMPLATE_BYTES


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nanochat_lite", "serve", "--port", "0", "--threads", "1",
           "--db", str(tmp_path / "db.sqlite3"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def assert_refused(p: subprocess.CompletedProcess, path: Path | None, *needles: str) -> str:
    """Exit status 2, no traceback, the needles in the message; the file named once."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    message = p.stderr.strip().splitlines()[-1]
    assert message.startswith("nanochat-lite: "), p.stderr
    if path is not None:
        assert message.count(str(path)) == 1, message
    for needle in needles:
        assert needle in message, message
    return message


def corrupt(chat_model_path: Path, out: Path, how: str) -> Path:
    data = chat_model_path.read_bytes()
    if how == "cut-in-tensors":
        data = data[:20_000_000]
    elif how == "cut-in-header":
        data = data[:100]
    elif how == "wrong-magic":
        data = b"GGML" + data[4:200]
    elif how == "empty":
        data = b""
    elif how == "version":
        data = data[:4] + struct.pack("<I", 99) + data[8:200]
    elif how == "architecture":  # a well-formed header naming an architecture llama.cpp does not know
        at = data.index(b"llama", data.index(b"general.architecture"))
        data = data[:at] + b"xxxxx" + data[at + 5:]
    out.write_bytes(data)
    return out


@pytest.mark.parametrize("how,needles", [
    ("cut-in-tensors", ("Cannot load the model", "truncated: its tensors need 98,362,432 bytes but the file has "
                        "20,000,000", "download or convert the file again")),
    ("cut-in-header", ("Cannot load the model", "the file ends inside its header",
                       "download or convert the file again")),
    ("wrong-magic", ("is not a GGUF model file", "starts with b'GGML', expected b'GGUF'", "Pass a .gguf file")),
    ("empty", ("is not a GGUF model file", "it is empty: 0 bytes")),
    ("version", ("Cannot load the model", "GGUF version 99 is not supported (2 or 3 are)")),
    ("architecture", ("Cannot load the model", "llama.cpp could not load it",
                      "Its header reads correctly (architecture 'xxxxx')",
                      "may not support this architecture, or the tensor data is damaged")),
])
def test_corrupt_gguf_is_a_clear_cli_error(tmp_path, chat_model_path, how, needles):
    f = corrupt(chat_model_path, tmp_path / f"{how}.gguf", how)
    assert_refused(serve(tmp_path, "--model", str(f)), f, *needles)


# -- --chat-template ------------------------------------------------------------------------
def template_error(spec: str) -> str:
    with pytest.raises(CLIError) as e:
        chat_template_source(Config(chat_template=spec))
    return str(e.value)


def test_chat_template_names_and_files(tmp_path):
    assert chat_template_source(Config()) is None  # the model's own
    assert chat_template_source(Config(chat_template="chatml")) == CHATML
    assert chat_template_source(Config(chat_template="ChatML")) == CHATML
    f = tmp_path / "gemma.jinja"
    f.write_text("{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}"
                 "<start_of_turn>model\n")
    assert chat_template_source(Config(chat_template=str(f))) == f.read_text()


def test_bad_chat_templates_say_what_is_wrong(tmp_path):
    assert "is neither a built-in template (chatml) nor an existing file" in template_error("gemma-chat")
    bad = tmp_path / "bad.jinja"
    bad.write_text("{{ oops")
    assert template_error(str(bad)) == (f"--chat-template {bad}: the chat template does not compile: unexpected "
                                        "end of template, expected 'end of print statement'.")
    binary = tmp_path / "model.gguf"
    binary.write_bytes(b"GGUF\x03\x00\x00\x00\xff\xfe")
    assert "not UTF-8 text (byte 8)" in template_error(str(binary))
    empty = tmp_path / "empty.jinja"
    empty.write_text("  \n")
    assert "the file is empty" in template_error(str(empty))
    big = tmp_path / "big.jinja"
    big.write_text("x" * (MAX_TEMPLATE_BYTES + 1))
    assert "over 256 KiB" in template_error(str(big))
    assert template_error(str(tmp_path)) == f"--chat-template {tmp_path}: cannot be read (Is a directory)."


def test_bad_chat_template_stops_serve(tmp_path, chat_model_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    assert_refused(serve(tmp_path, "--chat-template", str(bad)), bad,
                   "the chat template does not compile", "'endfor'")


def test_chat_template_with_an_upstream_engine_is_refused(tmp_path):
    p = serve(tmp_path, "--engine", "openai:http://127.0.0.1:9/v1", "--chat-template", "chatml")
    assert_refused(p, None, "--chat-template applies to a model served here")
