"""The Tokenizer's behaviour on the default model's vocabulary and on trained ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nanochat_lite.tokenizer import Tokenizer, train
from nanochat_lite.tokenizer._core import _first_token_not_encoding_to_itself, _plan_tiktoken
from nanochat_lite.tokenizer._reference import bpe
from tokenizer_corpus import lines as corpus_lines


@pytest.fixture(scope="module")
def tok(chat_model_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(chat_model_path)


@pytest.fixture(scope="module")
def small() -> Tokenizer:
    """A trained tokenizer: every byte is a token, so every text round-trips."""
    return train(corpus_lines(60_000, seed=3), 400, engine="rustbpe")


# Known answers, as llama.cpp's tokenizer gives them (special=False).
KNOWN = {
    "Hello, world!": [19556, 28, 905, 17],
    "It's 2024.": [1589, 506, 216, 34, 32, 34, 36, 30],
    "   x": [256, 1792],
    "naïve 你好 👍": [3546, 46494, 216, 18645, 250, 48392, 138, 15107, 235, 231],
    "<|im_start|>user\nHi<|im_end|>": [44, 108, 306, 79, 3738, 108, 46, 4093, 198, 26843, 44, 108, 306, 79, 486, 108, 46],
}


@pytest.mark.parametrize("text", list(KNOWN))
def test_known_answers(tok: Tokenizer, text: str) -> None:
    assert tok.encode(text) == KNOWN[text]
    assert tok._reference.encode(text) == KNOWN[text]


def test_loads_the_default_model(tok: Tokenizer) -> None:
    assert tok.engine == "tiktoken", tok.slow_reason
    assert tok.vocab_size == 49152
    assert tok.special_tokens["<|im_start|>"] == 1
    assert tok.special_tokens["<|im_end|>"] == 2
    assert len(tok.special_tokens) == 17
    assert (tok.bos_id, tok.eos_id) == (1, 2)


def test_special_tokens_are_text_unless_allowed(tok: Tokenizer) -> None:
    text = "<|im_start|>user\nHi<|im_end|>"
    assert 1 not in tok.encode(text) and 2 not in tok.encode(text)
    assert tok.encode(text, allowed_special="all") == [1, 4093, 198, 26843, 2]
    assert tok.encode(text, allowed_special={"<|im_start|>"})[:2] == [1, 4093]
    assert 2 not in tok.encode(text, allowed_special={"<|im_start|>"})
    assert tok.encode(text, allowed_special="<|im_end|>")[-1] == 2
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode(text, allowed_special={"<|nope|>"})


def test_decode(tok: Tokenizer) -> None:
    ids = tok.encode("naïve 你好 👍")
    assert tok.decode(ids) == "naïve 你好 👍"
    assert tok.decode_bytes(ids) == "naïve 你好 👍".encode()
    assert tok.decode([1, 4093, 2]) == "<|im_start|>user<|im_end|>"
    assert tok.piece(905) == b" world"
    assert tok.piece_text(905) == " world"
    # A token holding part of a character: bytes as they are, shown escaped.
    partial = next(i for i in ids if not _is_utf8(tok.piece(i)))
    assert "\\x" in tok.piece_text(partial)
    assert tok.decode([partial]) == "\ufffd" * len(tok.decode([partial]))
    for bad in ([49152], [-1], [0, 10**9]):
        with pytest.raises(ValueError, match="not in the vocabulary"):
            tok.decode(bad)
    assert tok.count("Hello, world!") == 4
    assert tok.decode([]) == "" and tok.encode("") == []


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_nasty_inputs(tok: Tokenizer) -> None:
    for text in ["a" * 10_000, " " * 5000 + "x", "\x00\x00nul", "1" * 3000, "🙂" * 500, "\r\n" * 300,
                 "\u200d" * 50, "x\u0301\u0301\u0301", "<|im_start|>" * 20]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        if len(text) < 4000:
            assert tok._reference.encode(text) == ids


def test_lone_surrogates_encode_as_replacement_character(tok: Tokenizer) -> None:
    # No UTF-8 form exists; like tiktoken we encode U+FFFD, which is also what
    # llama.cpp makes of any byte sequence it cannot decode.
    assert tok.encode("a\ud800b\udfffc") == tok.encode("a\ufffdb\ufffdc")
    assert tok._reference.encode("a\ud800b") == tok.encode("a\ufffdb")
    assert tok.decode(tok.encode("x\ud83dy")) == "x\ufffdy"


def test_bytes_missing_from_the_vocabulary_are_dropped_like_llama_cpp(tok: Tokenizer) -> None:
    # This vocabulary has no token for byte 0x04, nor for the lead bytes F1/F2 of the
    # (unassigned) planes 4-11: llama.cpp drops those bytes, and so do we.
    assert tok.decode(tok.encode("a\x04b")) == "ab"
    assert tok.decode_bytes(tok.encode("\U00040000")) == "\U00040000".encode()[1:]
    assert tok.decode(tok.encode("\U000f0000\U000e0041")) == "\U000f0000\U000e0041"
    assert tok.encode("a\x04b") == tok._reference.encode("a\x04b")


def _round_trips_in(tok: Tokenizer, s: str) -> bool:
    # Texts this vocabulary can spell: no lone surrogates, no bytes it lacks.
    return not any(0xD800 <= ord(c) <= 0xDFFF or 0x40000 <= ord(c) < 0xC0000 or c in "\x04\x06\x13\x14\x16\x1d" for c in s)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60))
def test_property_fast_path_equals_reference(tok: Tokenizer, s: str) -> None:
    assert tok.encode(s) == tok._reference.encode(s)
    if _round_trips_in(tok, s):
        assert tok.decode(tok.encode(s)) == s


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_property_trained_tokenizer_round_trips_everything(small: Tokenizer, s: str) -> None:
    ids = small.encode(s)
    assert small.decode(ids) == s
    assert ids == small._reference.encode(s)
    assert all(0 <= i < small.vocab_size for i in ids)


def test_save_and_load_keep_every_id(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "smollm.json"
    tok.save(path)
    again = Tokenizer.load(path)
    assert again.engine == "tiktoken"
    assert again.special_tokens == tok.special_tokens and (again.bos_id, again.eos_id) == (1, 2)
    sample = corpus_lines(100_000, seed=5)
    assert [again.encode(s) for s in sample] == [tok.encode(s) for s in sample]
    assert [again.decode_bytes([i]) for i in range(tok.vocab_size)] == [tok.piece(i) for i in range(tok.vocab_size)]
    doc = json.loads(path.read_text())
    assert (doc["format"], doc["version"]) == ("nanochat-lite-bpe", 1)
    assert doc["split"] == {"kind": "llama.cpp", "name": "smollm"}
    assert not list(tmp_path.glob(".tokenizer-*"))  # the temp file was renamed away


def test_load_rejects_other_files(small: Tokenizer, tmp_path: Path) -> None:
    good = tmp_path / "t.json"
    small.save(good)
    doc = json.loads(good.read_text())
    cases = {
        "not json": ("{oops", "not JSON"),
        "other format": (json.dumps({**doc, "format": "hf-tokenizers"}), "expected a nanochat-lite tokenizer file"),
        "newer version": (json.dumps({**doc, "version": 2}), "version 2; this nanochat-lite reads version 1"),
        "missing field": (json.dumps({k: v for k, v in doc.items() if k != "merges"}), "malformed"),
        "bad hex": (json.dumps({**doc, "tokens": ["zz"] + doc["tokens"][1:]}), "malformed"),
        "bad id": (json.dumps({**doc, "special_tokens": {"<|endoftext|>": 10**6}}), "outside the vocabulary"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(content)
        with pytest.raises(ValueError, match=message):
            Tokenizer.load(path)
    with pytest.raises(ValueError, match="no such file"):
        Tokenizer.load(tmp_path / "absent.json")


def test_engine_reference_on_request(chat_model_path: Path) -> None:
    slow = Tokenizer.from_gguf(chat_model_path, engine="reference")
    assert slow.engine == "reference" and slow.slow_reason
    assert slow.encode("Hello, world!") == KNOWN["Hello, world!"]


# -- the tiktoken plan on hand-made vocabularies -------------------------------------


def _vocab(merges: list[tuple[bytes, bytes]]) -> dict[bytes, int]:
    lookup = {bytes([b]): b for b in range(256)}
    for a, b in merges:
        lookup.setdefault(a + b, len(lookup))
    return lookup


def test_plan_refuses_a_token_that_does_not_encode_to_itself() -> None:
    # "b c" merges first, so the bytes "abc" end as [a, bc]; tiktoken would join them
    # into "abc" (a token, made by "ab c"). The plan must see it and refuse.
    merges = [(b"b", b"c"), (b"a", b"b"), (b"ab", b"c")]
    assert bpe(b"abc", dict(zip(merges, range(3)))) == [b"a", b"bc"]
    plan = _plan_tiktoken(_vocab(merges), merges, {}, 259)
    assert isinstance(plan, str) and "b'abc' does not encode to itself" in plan
    tok = Tokenizer(tokens=[bytes([b]) for b in range(256)] + [b"bc", b"ab", b"abc"], merges=merges,
                    special_tokens={}, split=("regex", r"\S+|\s+"))
    assert tok.engine == "reference"
    assert tok.encode("abc") == [ord("a"), 256]
    with pytest.raises(ValueError, match="tiktoken cannot encode this vocabulary exactly"):
        Tokenizer(tokens=[bytes([b]) for b in range(256)] + [b"bc", b"ab", b"abc"], merges=merges,
                  special_tokens={}, split=("regex", r"\S+|\s+"), engine="tiktoken")


def test_plan_refuses_merges_outside_the_vocabulary_and_twice_made_tokens() -> None:
    merges = [(b"a", b"b"), (b"x", b"y")]
    lookup = {bytes([b]): b for b in range(256)} | {b"ab": 256}
    assert "b'xy', which is not a token" in _plan_tiktoken(lookup, merges, {}, 257)
    merges = [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"a", b"bc")]
    assert "made by two merges" in _plan_tiktoken(_vocab(merges), merges, {}, 259)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 99), st.integers(0, 99)), min_size=1, max_size=14),
       st.lists(st.text("abcd ", max_size=14), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_property_plan_is_exact_on_random_vocabularies(picks: list[tuple[int, int]], texts: list[str], rnd) -> None:
    """Whenever the plan accepts a vocabulary, tiktoken gives the reference's ids, also
    when ids do not follow the merge order (the remapped path); and the fast
    self-encoding check agrees with running the reference BPE on every token."""
    pieces = [b"a", b"b", b"c", b"d"]
    merges: list[tuple[bytes, bytes]] = []
    for i, j in picks:  # merges of pieces that exist, like a trainer's
        pair = (pieces[i % len(pieces)], pieces[j % len(pieces)])
        if pair not in merges:
            merges.append(pair)
            pieces.append(pair[0] + pair[1])
    rnd.shuffle(merges)  # any merge order: a merge may wait for a later one's result
    made = [a + b for a, b in merges]
    extra = list(dict.fromkeys(made))
    rnd.shuffle(extra)  # ids in any order
    tokens = [bytes([b]) for b in range(256)] + extra
    tok = Tokenizer(tokens=tokens, merges=merges, special_tokens={}, split=("regex", r"\S+|\s+"))
    for text in texts:
        assert tok.encode(text) == tok._reference.encode(text)
    if len(set(made)) == len(made):
        ranks = {pair: r for r, pair in enumerate(merges)}
        made_by = {s: r for r, s in enumerate(made)}
        naive_ok = all(bpe(s, ranks) == [s] for s in made)
        assert (_first_token_not_encoding_to_itself(made_by, ranks) is None) == naive_ok
        assert (tok.engine == "tiktoken") == naive_ok
    event(f"engine {tok.engine}")
