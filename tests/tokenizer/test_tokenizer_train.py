"""Training: rustbpe and the pure-Python trainer learn the same merges; the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from nanochat_lite.commands import tokenizer as cli
from nanochat_lite.config import Config
from nanochat_lite.tokenizer import GPT4_PATTERN, Tokenizer, train
from nanochat_lite.tokenizer._train import get_stats, merge
from tokenizer_corpus import lines

TEXT = lines(40_000, seed=9)


def test_helpers_known_answers() -> None:
    assert get_stats([[1, 2, 3, 1, 2]], [2]) == {(1, 2): 4, (2, 3): 2, (3, 1): 2}
    assert merge([1, 1, 1], (1, 1), 9) == [9, 1]
    assert merge([5, 1, 2, 1, 2], (1, 2), 7) == [5, 7, 7]


def test_rustbpe_and_python_learn_the_same_tokenizer() -> None:
    fast = train(TEXT, 420, engine="rustbpe")
    slow = train(TEXT, 420, engine="python")
    assert fast._merges == slow._merges
    assert [fast.piece(i) for i in range(420)] == [slow.piece(i) for i in range(420)]
    assert fast.engine == slow.engine == "tiktoken"


def test_trained_layout_and_behaviour() -> None:
    tok = train(TEXT, 300, special_tokens=("<|bos|>", "<|eos|>"))
    assert tok.vocab_size == 300
    assert [tok.piece(i) for i in range(256)] == [bytes([b]) for b in range(256)]
    assert tok.special_tokens == {"<|bos|>": 298, "<|eos|>": 299}
    text = "".join(TEXT[:50])
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode(text) == tok._reference.encode(text)
    assert tok.count(text) < len(text.encode())
    assert tok.encode("<|bos|>hi", allowed_special="all")[0] == 298
    assert 298 not in tok.encode("<|bos|>hi")


def test_training_is_deterministic_and_reads_files(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(TEXT))
    a = train(path, 350)
    b = train(str(path), 350)
    assert a._merges == b._merges


def test_train_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too small"):
        train(TEXT, 257)
    with pytest.raises(ValueError, match="no such file"):
        train(str(tmp_path / "absent.txt"), 300)
    with pytest.raises(ValueError, match="distinct"):
        train(TEXT, 300, special_tokens=("<a>", "<a>"))
    with pytest.raises(ValueError, match="unknown training engine"):
        train(TEXT, 300, engine="sentencepiece")  # type: ignore[arg-type]


def test_save_load_round_trip(tmp_path: Path) -> None:
    tok = train(TEXT, 320, pattern=GPT4_PATTERN)
    path = tmp_path / "tok.json"
    tok.save(path)
    doc = json.loads(path.read_text())
    assert doc["split"] == {"kind": "regex", "pattern": GPT4_PATTERN}
    assert doc["merges"][0] == [tok._merges[0][0].hex(), tok._merges[0][1].hex()]
    again = Tokenizer.load(path)
    text = "".join(TEXT[:80])
    assert again.encode(text) == tok.encode(text)
    assert again.special_tokens == tok.special_tokens


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    return cli.run(parser.parse_args(list(argv)), Config.from_env())


def test_cli_train_and_encode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(TEXT), encoding="utf-8")
    out = tmp_path / "tok.json"
    assert _cli("tokenizer", "train", str(corpus), "--vocab-size", "300", "-o", str(out)) == 0
    assert "trained 300 ids" in capsys.readouterr().out
    assert _cli("tokenizer", "encode", "hello <|im_end|>", "--tokenizer", str(out), "--ids", "--allow-special") == 0
    ids = [int(x) for x in capsys.readouterr().out.split()]
    assert ids[-1] == Tokenizer.load(out).special_tokens["<|im_end|>"]
    assert _cli("tokenizer", "encode", "hello", "--tokenizer", str(out)) == 0
    assert "tokens" in capsys.readouterr().out
    assert _cli("tokenizer", "train", str(tmp_path / "nope.txt"), "--vocab-size", "300", "-o", str(out)) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.model
def test_cli_encode_with_a_gguf(chat_model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("tokenizer", "encode", "Hello, world!", "--model", str(chat_model_path), "--ids") == 0
    assert capsys.readouterr().out.split() == ["19556", "28", "905", "17"]
