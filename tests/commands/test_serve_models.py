"""`serve`'s model flags (commands/serve_models.py, config.py): several --model, --models-dir,
--pin, the default --models-memory, and a corrupt file read as an unusable spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanochat_lite.commands.common import CLIError
from nanochat_lite.commands.serve_models import default_models_memory, resolve_more, spec_for
from nanochat_lite.config import Config, ConfigError


def test_model_given_twice_the_first_is_the_default() -> None:
    c = Config.load({"model": ["a.gguf", "b.gguf", "c.gguf"], "models_dir": "/x", "pin": ["b"],
                     "models_memory": 300}, env={})
    assert (c.model, c.more_models, c.models_dir, c.pin, c.models_memory) == (
        "a.gguf", ["b.gguf", "c.gguf"], Path("/x"), ["b"], 300)
    one = Config.load({"model": ["a.gguf"]}, env={})
    assert (one.model, one.more_models) == ("a.gguf", [])


def test_models_memory_and_engine_are_checked() -> None:
    with pytest.raises(ConfigError, match="--models-memory must be at least 1 MB"):
        Config.load({"models_memory": 0}, env={})
    # --engine beside --model: the upstream is one more entry, the first --model the default.
    mixed = Config.load({"model": ["a", "b"], "engine": "openai:http://127.0.0.1:1/v1"}, env={})
    assert (mixed.model, mixed.more_models, mixed.engine_first) == ("a", ["b"], False)
    # --engine alone (NANOCHAT_LITE_MODEL is not a --model): the upstream is the one model, as before.
    alone = Config.load({"engine": "openai:http://127.0.0.1:1/v1"}, env={"NANOCHAT_LITE_MODEL": "x.gguf"})
    assert alone.engine_first and alone.more_models == []
    # --chat-template is for models served here: refused only when there are none.
    with pytest.raises(ConfigError, match="--chat-template applies to a model served here"):
        Config.load({"engine": "openai:http://127.0.0.1:1/v1", "chat_template": "chatml"}, env={})
    assert Config.load({"engine": "openai:http://127.0.0.1:1/v1", "chat_template": "chatml", "model": ["a"]},
                       env={}).chat_template == "chatml"


def test_default_models_memory_is_available_memory_less_a_fifth_and_a_margin(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683772 kB\nMemAvailable:    2048000 kB\n")
    assert default_models_memory(meminfo) == 2000 * 8 // 10 - 512  # 2,048,000 kB = 2,000 MB
    meminfo.write_text("MemTotal: 1 kB\n")
    assert default_models_memory(meminfo) is None
    assert default_models_memory(tmp_path / "absent") is None


def test_a_corrupt_file_is_an_unusable_spec_naming_no_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")  # the magic and a version, then nothing
    s = spec_for(bad, "bad", Config(home=tmp_path))
    assert s.unusable and "ends inside its header" in s.unusable and str(tmp_path) not in s.unusable
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert spec_for(empty, "empty", Config(home=tmp_path)).unusable


def test_models_dir_lists_gguf_files_by_name_and_pin_must_name_one(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ["b.gguf", "a.gguf", "notes.txt"]:
        (folder / name).write_bytes(b"x")
    c = Config(home=tmp_path, models_dir=folder, pin=["a"])
    assert resolve_more(c, "first") == [(folder / "a.gguf", "a"), (folder / "b.gguf", "b")]
    assert resolve_more(c, "a") == [(folder / "b.gguf", "b")]  # a name already served is not repeated
    with pytest.raises(CLIError, match="--pin nope: no model of that name"):
        resolve_more(Config(home=tmp_path, models_dir=folder, pin=["nope"]), "first")
    with pytest.raises(CLIError, match="is not a folder"):
        resolve_more(Config(home=tmp_path, models_dir=tmp_path / "absent"), "first")
