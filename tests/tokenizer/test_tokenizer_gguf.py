"""GGUF vocabularies made to order, checked against llama.cpp: the odd cases.

Each test writes a GGUF whose vocabulary comes from a small trained tokenizer, bent
into a shape the default model does not have, and compares our ids with llama.cpp's
on a few thousand lines. llama.cpp is an in-process llama-server (tests/llama_ref.py),
which loads no vocabulary-only file: the GGUF carries a tiny llama with zero weights
(``write_model``), and both tokenizers read that same file.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from llama_ref import LlamaRef, write_model
from nanochat_lite import gguf
from nanochat_lite.tokenizer import Tokenizer, train
from nanochat_lite.tokenizer._gguf import byte_encoder
from tokenizer_corpus import LLAMA_KEYS, lines, write_gguf

CONTROL, USER_DEFINED = 3, 4


@pytest.fixture(scope="module")
def base(chat_model_path: Path) -> dict:
    """The default model's non-vocabulary metadata, for files that only we open."""
    md = gguf.read(chat_model_path).metadata
    return {k: md[k] for k in LLAMA_KEYS}


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return train(lines(80_000, seed=21), 600, special_tokens=("<|endoftext|>",))


@pytest.fixture(scope="module")
def sample() -> list[str]:
    return lines(300_000, seed=22)


def _text(b: bytes) -> str:
    enc = byte_encoder()
    return "".join(enc[x] for x in b)


def _gguf(path: Path, tokens: list[str], types: list[int], merges: list[str], pre: str = "smollm") -> Path:
    return write_model(path, {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
                              "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
                              "tokenizer.ggml.merges": merges})


def _vocab_of(tok: Tokenizer) -> tuple[list[str], list[int], list[str]]:
    specials = set(tok.special_tokens.values())
    tokens = [tok.piece(i).decode() if i in specials else _text(tok.piece(i)) for i in range(tok.vocab_size)]
    types = [CONTROL if i in specials else 1 for i in range(tok.vocab_size)]
    merges = [f"{_text(a)} {_text(b)}" for a, b in tok._merges]
    return tokens, types, merges


def _check(path: Path, sample: list[str], *, specials: tuple[bool, ...] = (False,),
           engine: str | None = None) -> Tokenizer:
    """Our ids == llama.cpp's for every line, once per ``special`` setting."""
    tok = Tokenizer.from_gguf(path)
    if engine:
        assert tok.engine == engine, tok.slow_reason
    with LlamaRef(path) as llama:
        for special in specials:
            want = llama.tokenize_all(sample, special=special)
            assert len(want) == len(sample)
            bad = [s for s, w in zip(sample, want) if tok.encode(s, allowed_special="all" if special else ()) != w]
            assert not bad, f"special={special}: {len(bad)} of {len(sample)} lines differ, e.g. {bad[0]!r:.120}"
    return tok


def test_trained_vocabulary_as_gguf(tmp_path: Path, trained: Tokenizer, sample: list[str]) -> None:
    tokens, types, merges = _vocab_of(trained)
    _check(_gguf(tmp_path / "t.gguf", tokens, types, merges), sample, engine="tiktoken")


def test_ids_not_in_merge_order(tmp_path: Path, trained: Tokenizer, sample: list[str]) -> None:
    """Shuffled ids: tiktoken runs on its own numbering, translated back."""
    tokens, types, merges = _vocab_of(trained)
    order = list(range(len(tokens)))
    random.Random(5).shuffle(order)
    tok = _check(_gguf(tmp_path / "s.gguf", [tokens[i] for i in order], [types[i] for i in order], merges),
                 sample, engine="tiktoken")
    assert tok._remap is not None


def test_missing_bytes_and_merges_outside_the_vocabulary(tmp_path: Path, trained: Tokenizer,
                                                         sample: list[str]) -> None:
    """Drop some single-byte tokens and add merges whose results are not tokens:
    llama.cpp keeps the printable ASCII bytes of such a piece and drops the rest.
    tiktoken cannot say that, so the reference encoder runs."""
    tokens, types, merges = _vocab_of(trained)
    drop = {_text(bytes([b])) for b in (ord("q"), ord("Z"), 0xC3, 0xE4, 0x0A)}
    keep = [i for i, t in enumerate(tokens) if t not in drop]
    extra = [f"{_text(b'x')} {_text(b'y')}", f"{_text(bytes([0xC3]))} {_text(bytes([0xA9]))}"]
    path = _gguf(tmp_path / "m.gguf", [tokens[i] for i in keep], [types[i] for i in keep], merges + extra)
    _check(path, sample[:400] + ["xy xyz éé ä q Z\n\n"], engine="reference")


def test_missing_bytes_with_the_fast_path(tmp_path: Path, trained: Tokenizer, sample: list[str]) -> None:
    tokens, types, merges = _vocab_of(trained)
    drop = {_text(bytes([b])) for b in (0x04, 0xF0, 0xE4)}
    keep = [i for i, t in enumerate(tokens) if t not in drop]
    path = _gguf(tmp_path / "f.gguf", [tokens[i] for i in keep], [types[i] for i in keep], merges)
    _check(path, sample + ["\x04ä😀\n"], engine="tiktoken")


def test_user_defined_tokens_are_matched_in_any_text(tmp_path: Path, trained: Tokenizer,
                                                     sample: list[str]) -> None:
    tokens, types, merges = _vocab_of(trained)
    tokens += ["<tool>", "</tool>", "<|im_start|>"]
    types += [USER_DEFINED, USER_DEFINED, CONTROL]
    path = _gguf(tmp_path / "u.gguf", tokens, types, merges)
    texts = sample[:200] + ["call <tool>x</tool> then <|im_start|>\n", "<tool><tool></tool>\n"]
    tok = _check(path, texts, specials=(False, True))
    assert tok.encode("<tool>")[0] == len(tokens) - 3


@pytest.mark.parametrize("change, message", [
    ({"tokenizer.ggml.pre": "llama-bpe"}, "pre-tokenizer 'llama-bpe' is not supported"),
    ({"tokenizer.ggml.pre": "qwen2"}, "pre-tokenizer 'qwen2' is not supported"),
    ({"tokenizer.ggml.pre": ""}, "no tokenizer.ggml.pre"),
    ({"tokenizer.ggml.model": "llama"}, "tokenizer.ggml.model is 'llama'"),
])
def test_unsupported_vocabularies_are_refused(tmp_path: Path, base: dict, change: dict, message: str) -> None:
    path = tmp_path / "x.gguf"
    write_gguf(path, {**base, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
                      "tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.token_type": [1, 1],
                      "tokenizer.ggml.merges": ["a b"], **change})
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_gguf(path)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ValueError, match="expected a GGUF file"):
        Tokenizer.from_gguf(path)
