"""documents/chunk.py: known cuts with a one-piece-per-word tokenizer, then the real one.

The fake tokenizers make the expected chunks computable by hand; the MiniLM tests check
that the counts are the embedder's own (its token_counts agree) and that no chunk is
ever cut by it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanochat_lite.documents.blocks import Block
from nanochat_lite.documents.chunk import Chunk, chunk_blocks, minilm_spans
from nanochat_lite.embeddings import Embedder


def word_spans(texts: list[str]) -> list[list[tuple[int, int]]]:
    """One piece per whitespace word."""
    return [[m.span() for m in re.finditer(r"\S+", t)] for t in texts]


def char_spans(texts: list[str]) -> list[list[tuple[int, int]]]:
    """One piece per non-space character."""
    return [[(i, i + 1) for i, c in enumerate(t) if not c.isspace()] for t in texts]


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + n))


def test_known_cuts_with_overlap() -> None:
    chunks = chunk_blocks([Block(words(20), None, None)], word_spans, max_tokens=8, overlap=2)
    assert [c.text for c in chunks] == [words(8), words(8, 6), words(8, 12)]
    assert [(c.tokens, c.position, c.page, c.heading) for c in chunks] == [(8, 0, None, None), (8, 1, None, None),
                                                                          (8, 2, None, None)]


def test_no_overlap() -> None:
    chunks = chunk_blocks([Block(words(20), None, None)], word_spans, max_tokens=8, overlap=0)
    assert [c.text for c in chunks] == [words(8), words(8, 8), words(4, 16)]


def test_a_chunk_ends_at_a_paragraph_late_in_it_rather_than_mid_paragraph() -> None:
    # Paragraphs of 6 and 10 words, budget 8: the first paragraph (6 >= 60% of 8) is a chunk.
    chunks = chunk_blocks([Block(words(6), None, None), Block(words(10, 6), None, None)], word_spans,
                          max_tokens=8, overlap=0)
    assert [c.text for c in chunks] == [words(6), words(8, 6), words(2, 14)]


def test_a_sentence_end_is_preferred_but_not_too_early() -> None:
    text = "a b c d e. f g h i j k"  # budget 8: "e." ends word 5 of 8 (>= 4.8 pieces) -> cut there
    assert [c.text for c in chunk_blocks([Block(text, None, None)], word_spans, max_tokens=8, overlap=0)] == [
        "a b c d e.", "f g h i j k"]
    early = "a b. c d e f g h i j k"  # "b." is too early in the chunk: cut after the 8th word
    assert [c.text for c in chunk_blocks([Block(early, None, None)], word_spans, max_tokens=8, overlap=0)] == [
        "a b. c d e f g h", "i j k"]


def test_overlap_starts_at_a_sentence_when_one_is_inside_it() -> None:
    # Cut after "g." (the last sentence end); an overlap of 3 words would be "e f. g.",
    # and a sentence starts inside it at "g.": the next chunk starts there.
    text = "a b c d e f. g. h i j k"
    chunks = chunk_blocks([Block(text, None, None)], word_spans, max_tokens=8, overlap=3)
    assert [c.text for c in chunks] == ["a b c d e f. g.", "g. h i j k"]
    # Without a sentence start inside it, the overlap is the last 3 words.
    chunks = chunk_blocks([Block("a b c d e f g h i j k", None, None)], word_spans, max_tokens=8, overlap=3)
    assert [c.text for c in chunks] == ["a b c d e f g h", "f g h i j k"]


def test_a_heading_starts_a_chunk_and_takes_its_share_of_the_budget() -> None:
    blocks = [Block(words(3), None, "Intro part"), Block(words(10, 3), None, "Two")]
    chunks = chunk_blocks(blocks, word_spans, max_tokens=8, overlap=0)
    assert [(c.heading, c.text) for c in chunks] == [("Intro part", words(3)), ("Two", words(7, 3)),
                                                     ("Two", words(3, 10))]
    assert chunks[1].embed_text == "Two\n" + words(7, 3)
    assert all(len(word_spans([c.embed_text])[0]) <= 8 for c in chunks)


def test_page_is_the_first_words_page() -> None:
    blocks = [Block(words(5), 1, "H"), Block(words(5, 5), 2, "H"), Block(words(5, 10), 3, "H")]
    chunks = chunk_blocks(blocks, word_spans, max_tokens=8, overlap=0)
    # budget 7 (the heading's one piece): w0-w4 (p1) ends its paragraph -> cut; w5-w9 (p2); w10-w14 (p3)
    assert [(c.page, c.text) for c in chunks] == [(1, words(5)), (2, words(5, 5)), (3, words(5, 10))]
    spanning = chunk_blocks(blocks, word_spans, max_tokens=13, overlap=0)  # budget 12: cut at the 2nd page end
    assert [(c.page, c.text) for c in spanning] == [(1, f"{words(5)}\n\n{words(5, 5)}"), (3, words(5, 10))]


def test_only_a_word_longer_than_a_chunk_is_cut_inside() -> None:
    long_word = "x" * 20
    chunks = chunk_blocks([Block(f"ab {long_word} cd", None, None)], char_spans, max_tokens=8, overlap=0)
    assert [c.text for c in chunks] == ["ab", "x" * 8, "x" * 8, "xxxx cd"]
    assert all(c.tokens <= 8 for c in chunks)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_blocks([], word_spans, max_tokens=4)
    with pytest.raises(ValueError, match="overlap"):
        chunk_blocks([], word_spans, max_tokens=8, overlap=5)
    assert chunk_blocks([], word_spans) == []


@settings(max_examples=150, deadline=None)
@given(shape=st.lists(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=15),
                      min_size=1, max_size=5),
       max_tokens=st.integers(8, 20), overlap=st.integers(0, 4))
def test_properties(shape: list[list[tuple[int, bool]]], max_tokens: int, overlap: int) -> None:
    """Within budget; each chunk a run of whole words of the source; the runs cover every
    word in order, each starting after the previous one's start and no later than its
    end (the overlap); deterministic. Words are unique (numbered), at most 7 pieces."""
    source_words: list[str] = []
    paragraphs = []
    for para in shape:
        ws = []
        for pad, sentence_end in para:
            word = f"{len(source_words)}" + "a" * pad + ("." if sentence_end else "")
            source_words.append(word[:7])
            ws.append(word[:7])
        paragraphs.append(" ".join(ws))
    blocks = [Block(p, None, None) for p in paragraphs]
    chunks = chunk_blocks(blocks, char_spans, max_tokens=max_tokens, overlap=overlap)
    assert chunks == chunk_blocks(blocks, char_spans, max_tokens=max_tokens, overlap=overlap)
    assert all(0 < c.tokens <= max_tokens and c.tokens == len(char_spans([c.text])[0]) for c in chunks)
    previous = (-1, 0)  # (start, end) word indexes of the previous chunk
    for chunk in chunks:
        run = chunk.text.split()
        start = source_words.index(run[0])
        assert run == source_words[start : start + len(run)]
        assert previous[0] < start <= previous[1]
        previous = (start, start + len(run))
    assert previous[1] == len(source_words)


# -- the embedder's own tokenizer -------------------------------------------------------
@pytest.fixture(scope="module")
def spans(embedding_model_dir: Path):  # noqa: ANN201
    return minilm_spans(embedding_model_dir)


TEXT = "".join(f"Reciprocal rank fusion {i} combines rankings. Unaffordable naïveté costs 東京 {i * 7} dearly; "
               f"emoji 😀 count too.\n\n" for i in range(40))  # numbered: every overlap is unambiguous


def test_minilm_counts_are_the_embedders(spans, embedding_model_dir: Path) -> None:  # noqa: ANN001
    chunks = chunk_blocks([Block(p, None, None) for p in TEXT.split("\n\n") if p], spans)
    assert len(chunks) > 3 and all(c.tokens <= 200 for c in chunks)
    result = Embedder(embedding_model_dir).embed([c.text for c in chunks])
    assert result.token_counts == [c.tokens + 2 for c in chunks]  # + [CLS] and [SEP]
    assert not any(result.truncated)


def test_minilm_never_cuts_inside_a_word_and_covers_everything(spans) -> None:  # noqa: ANN001
    chunks = chunk_blocks([Block(TEXT.strip(), 7, "Fusion")], spans, max_tokens=60, overlap=10)
    source_words = TEXT.split()
    for chunk in chunks:
        assert chunk.page == 7 and chunk.heading == "Fusion"
        assert set(chunk.text.split()) <= set(source_words)  # only whole words of the source
        assert len(spans([chunk.embed_text])[0]) <= 60
    # in order, with overlaps: dropping each chunk's repeated start gives the source's words back
    rebuilt: list[str] = []
    for chunk in chunks:
        words_ = chunk.text.split()
        overlap = next(k for k in range(min(len(words_), len(rebuilt)), -1, -1) if rebuilt[len(rebuilt) - k:] == words_[:k])
        rebuilt += words_[overlap:]
    assert rebuilt == source_words


def test_minilm_giant_token_word_is_split_to_fit(spans) -> None:  # noqa: ANN001
    blob = "ab-" * 300  # one whitespace word of ~600 pieces
    chunks = chunk_blocks([Block(f"start {blob} end", None, None)], spans)
    assert len(chunks) >= 3 and all(c.tokens <= 200 for c in chunks)
    # 600 pieces: three parts of exactly 200, which share a chunk with neither "start" nor
    # "end", and follow each other with no overlap (a part is larger than the overlap).
    assert [c.text for c in chunks][:1] + [c.text for c in chunks][-1:] == ["start", "end"]
    assert [c.tokens for c in chunks] == [1, 200, 200, 200, 1]
    assert "".join(c.text for c in chunks[1:-1]) == blob
    assert sum(c.tokens for c in chunks) == len(spans([f"start {blob} end"])[0])


def test_chunk_is_a_plain_value() -> None:
    a = Chunk("t", 1, "h", 1, 0)
    assert a == Chunk("t", 1, "h", 1, 0) and a.embed_text == "h\nt" and Chunk("t", None, None, 1, 0).embed_text == "t"
