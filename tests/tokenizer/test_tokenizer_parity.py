"""Same ids as llama.cpp's own tokenizer, line by line, on a generated 5 MB corpus.

Run with ``-s`` to see the figures. llama.cpp is llama-server's ``/tokenize``
(``add_special`` false, ``parse_special`` as ``special``), running in this process
through xllamacpp (tests/llama_ref.py); its times include an HTTP round-trip per
text, on a few threads, so they are no measure of llama.cpp's speed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llama_ref import LlamaRef, write_model
from nanochat_lite import gguf
from nanochat_lite.tokenizer import Tokenizer
from tokenizer_corpus import generate

CORPUS_BYTES = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def corpus_lines(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(generate(CORPUS_BYTES, seed=0))
    with open(path, encoding="utf-8", newline="") as f:  # newline="": keep \r and \r\n as written
        text = f.read()
    assert len(text.encode("utf-8")) >= CORPUS_BYTES
    return [line + "\n" for line in text.split("\n")[:-1]]


def _compare(label: str, texts: list[str], ours, llama: LlamaRef) -> int:
    start = time.perf_counter()
    mine = [ours(t) for t in texts]
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    want = llama.tokenize_all(texts)
    t_theirs = time.perf_counter() - start
    assert len(want) == len(texts)
    bad = [i for i, (a, b) in enumerate(zip(mine, want)) if a != b]
    size = sum(len(t.encode("utf-8")) for t in texts)
    print(f"\n{label}: {len(texts):,} texts, {size:,} bytes, {sum(map(len, want)):,} tokens, "
          f"{len(bad)} mismatches (ours {t_ours:.1f} s, llama.cpp over HTTP {t_theirs:.1f} s)")
    for i in bad[:5]:
        print(f"  {texts[i]!r:.160}\n    ours  {mine[i][:24]}\n    llama {want[i][:24]}")
    return len(bad)


@pytest.mark.model
def test_every_line_matches_llama_cpp(chat_model_path: Path, llama_ref: LlamaRef, corpus_lines: list[str]) -> None:
    tok = Tokenizer.from_gguf(chat_model_path)
    assert tok.engine == "tiktoken", tok.slow_reason
    mismatches = _compare("lines", corpus_lines, tok.encode, llama_ref)
    assert mismatches == 0


@pytest.mark.model
def test_multi_line_blocks_match_llama_cpp(chat_model_path: Path, llama_ref: LlamaRef,
                                           corpus_lines: list[str]) -> None:
    """Whole paragraphs too: runs of newlines only occur across lines."""
    tok = Tokenizer.from_gguf(chat_model_path)
    blocks = ["".join(corpus_lines[i : i + 40]) for i in range(0, len(corpus_lines), 40)]
    mismatches = _compare("blocks of 40 lines", blocks, tok.encode, llama_ref)
    assert mismatches == 0


@pytest.mark.model
def test_reference_encoder_matches_llama_cpp(chat_model_path: Path, llama_ref: LlamaRef,
                                             corpus_lines: list[str]) -> None:
    """The pure-Python reference is exact too (on a slice: it is slow)."""
    ref = Tokenizer.from_gguf(chat_model_path, engine="reference")
    sample = corpus_lines[:: max(1, len(corpus_lines) // 1500)]
    mismatches = _compare("reference, sampled lines", sample, ref.encode, llama_ref)
    assert mismatches == 0


@pytest.mark.model
def test_allowed_special_matches_llama_cpp_special_true(chat_model_path: Path, llama_ref: LlamaRef) -> None:
    tok = Tokenizer.from_gguf(chat_model_path)
    texts = ["<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 123<|im_end|>\n<|im_start|>assistant\n",
             "a<|endoftext|>b<repo_name>c<reponame>", "<|im_start|><|im_start|>  <|im_end|>"]
    for text in texts:
        assert tok.encode(text, allowed_special="all") == llama_ref.tokenize(text, special=True)


@pytest.mark.model
def test_gpt2_pre_tokenizer_matches_llama_cpp(chat_model_path: Path, corpus_lines: list[str], tmp_path: Path) -> None:
    """The same vocabulary declared with the plain GPT-2 splitter (no digit split)."""
    md = dict(gguf.read(chat_model_path).metadata)
    md["tokenizer.ggml.pre"] = "gpt-2"
    path = write_model(tmp_path / "gpt2-pre.gguf", md)  # tiny zero weights: llama-server loads no vocab-only file
    tok = Tokenizer.from_gguf(path)
    assert tok.engine == "tiktoken"
    sample = corpus_lines[: len(corpus_lines) // 5]
    with LlamaRef(path) as llama:
        mismatches = _compare("gpt-2 splitter, first fifth", sample, tok.encode, llama)
    assert mismatches == 0
