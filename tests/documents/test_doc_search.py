"""documents/search.py: each half and each fusion against answers worked out by hand."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanochat_lite.documents.search import (
    BM25Index,
    FullTextSearch,
    Hit,
    HybridSearch,
    VectorIndex,
    chunk_vectors,
    convex,
    rrf,
    section_key,
    spread,
    terms,
)


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, np.float32)
    return v / np.linalg.norm(v)


# -- vectors ----------------------------------------------------------------------------
def test_vector_top_k_known_answer() -> None:
    index = VectorIndex(2, capacity=1)  # grows past its capacity
    index.add([10, 11, 12, 13], np.stack([unit(1, 0), unit(0, 1), unit(1, 1), unit(-1, 0)]))
    hits = index.search(unit(1, 0.2), 3)
    assert [i for i, _ in hits] == [10, 12, 11]
    assert hits[0][1] == pytest.approx(float(unit(1, 0.2)[0]), abs=1e-6)
    assert [i for i, _ in index.search(unit(1, 0), 10)] == [10, 12, 11, 13]  # k past n: all, in order
    assert index.search(unit(1, 0), 0) == [] and VectorIndex(2).search(unit(1, 0), 5) == []


def test_chunk_vectors_blend_each_chunk_with_its_heading() -> None:
    table = {"H\nbody one": unit(1, 0), "H\nbody two": unit(0, 1), "plain": unit(1, 1), "H": unit(0, 1)}
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return np.stack([table[t] for t in texts])

    out = chunk_vectors(embed, ["H\nbody one", "H\nbody two", "plain"], ["H", "H", None], blend=0.75)
    assert calls == [["H\nbody one", "H\nbody two", "plain"], ["H"]]  # each heading embedded once
    assert out.dtype == np.float32 and out.shape == (3, 2)
    np.testing.assert_allclose(out[0], unit(0.75, 0.25), atol=1e-6)  # 0.75 own + 0.25 heading, unit length
    np.testing.assert_allclose(out[1], unit(0, 1), atol=1e-6)  # the same direction as its heading
    np.testing.assert_allclose(out[2], unit(1, 1), atol=1e-6)  # no heading: its own vector
    # blend 1.0 is each chunk's own vector, and nothing is asked about the headings
    calls.clear()
    np.testing.assert_allclose(chunk_vectors(embed, ["H\nbody one"], ["H"], blend=1.0), [unit(1, 0)], atol=1e-6)
    assert calls == [["H\nbody one"]]
    with pytest.raises(ValueError, match="2 texts for 1 headings"):
        chunk_vectors(embed, ["a", "b"], ["H"])
    with pytest.raises(ValueError, match="blend must be within 0..1"):
        chunk_vectors(embed, ["plain"], [None], blend=1.5)


def test_vector_ties_are_stable() -> None:
    index = VectorIndex(2)
    index.add([5, 3, 9], np.stack([unit(1, 0)] * 3))
    assert [i for i, _ in index.search(unit(1, 0), 2)] == [5, 3]  # equal scores: insertion order


def test_vector_remove_and_errors() -> None:
    index = VectorIndex(2)
    index.add([1, 2, 3], np.stack([unit(1, 0), unit(0, 1), unit(1, 1)]))
    assert index.remove([2, 99]) == 1 and len(index) == 2
    assert [i for i, _ in index.search(unit(0, 1), 5)] == [3, 1]
    index.add([2], unit(0, 1)[None])  # an id may come back after removal
    assert index.search(unit(0, 1), 1)[0][0] == 2
    with pytest.raises(ValueError, match="already"):
        index.add([1], unit(1, 0)[None])
    with pytest.raises(ValueError, match="repeated"):
        index.add([7, 7], np.stack([unit(1, 0)] * 2))
    with pytest.raises(ValueError, match="shape"):
        index.add([8], np.zeros((1, 3), np.float32))


def test_vector_search_while_adding_never_sees_half_a_row() -> None:
    index = VectorIndex(4, capacity=2)
    stop = threading.Event()
    errors: list[str] = []

    def search() -> None:
        while not stop.is_set():
            for chunk_id, score in index.search(unit(1, 0, 0, 0), 50):
                # every row added is exactly the query, under an id that was added with it
                if abs(score - 1.0) > 1e-5 or not 0 <= chunk_id < 3000:
                    errors.append(f"{chunk_id}: {score}")

    thread = threading.Thread(target=search)
    thread.start()
    for i in range(0, 3000, 10):
        index.add(list(range(i, i + 10)), np.tile(unit(1, 0, 0, 0), (10, 1)))
    stop.set()
    thread.join()
    assert errors == [] and len(index) == 3000


# -- BM25 -------------------------------------------------------------------------------
DOCS = {1: "the cat sat on the mat", 2: "the dog sat", 3: "cats and dogs and a cat", 4: "nothing here"}


def bm25_by_hand(query: str, docs: dict[int, str], k1: float = 1.2, b: float = 0.75) -> dict[int, float]:
    tokenized = {i: terms(t) for i, t in docs.items()}
    n = len(docs)
    mean = sum(len(t) for t in tokenized.values()) / n
    scores = {}
    for i, toks in tokenized.items():
        s = 0.0
        for term in terms(query):
            df = sum(term in t for t in tokenized.values())
            tf = toks.count(term)
            if df and tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(toks) / mean))
        if s > 0:
            scores[i] = s
    return scores


def test_terms() -> None:
    assert terms('The "assert_stmt" Statement, Größe 3.11') == ["the", "assert", "stmt", "statement", "grösse", "3", "11"]


def test_bm25_matches_the_formula() -> None:
    index = BM25Index()
    index.add(list(DOCS), list(DOCS.values()))
    expected = bm25_by_hand("cat sat", DOCS)
    got = dict(index.search("Cat SAT", 10))
    assert got.keys() == expected.keys() == {1, 2, 3}
    for i in expected:
        assert got[i] == pytest.approx(expected[i], rel=1e-5)
    assert [i for i, _ in index.search("cat sat", 10)] == sorted(expected, key=lambda i: -expected[i])
    assert index.search("unicorn", 5) == [] and index.search("", 5) == []


def test_bm25_remove_equals_never_added() -> None:
    index = BM25Index()
    index.add(list(DOCS), list(DOCS.values()))
    assert index.remove([2, 42]) == 1
    rest = {i: t for i, t in DOCS.items() if i != 2}
    fresh = BM25Index()
    fresh.add(list(rest), list(rest.values()))
    for query in ("cat sat", "dog", "the mat"):
        assert [i for i, _ in index.search(query, 10)] == [i for i, _ in fresh.search(query, 10)]
        assert dict(index.search(query, 10)) == pytest.approx(bm25_by_hand(query, rest))


@settings(max_examples=60, deadline=None)
@given(docs=st.lists(st.lists(st.sampled_from("ab cd ef gh ij".split()), min_size=1, max_size=8), min_size=1, max_size=30),
       removed=st.sets(st.integers(0, 29)), query=st.lists(st.sampled_from("ab cd ef gh ij kl".split()), max_size=4))
def test_bm25_property_removals_and_compaction(docs: list[list[str]], removed: set[int], query: list[str]) -> None:
    texts = {i: " ".join(words) for i, words in enumerate(docs)}
    index = BM25Index()
    index.add(list(texts), list(texts.values()))
    index.remove(sorted(removed))  # past a quarter removed, the index compacts itself
    rest = {i: t for i, t in texts.items() if i not in removed}
    expected = bm25_by_hand(" ".join(query), rest) if rest else {}
    got = index.search(" ".join(query), 100)
    assert dict(got) == pytest.approx(expected, rel=1e-5)
    assert len(index) == len(rest)


def test_bm25_errors() -> None:
    index = BM25Index()
    index.add([1], ["x"])
    with pytest.raises(ValueError, match="already"):
        index.add([1], ["y"])
    with pytest.raises(ValueError, match="ids for"):
        index.add([2, 3], ["y"])


# -- fusion -----------------------------------------------------------------------------
def test_rrf_known_answer() -> None:
    by_vector, by_text = [(1, 0.9), (2, 0.8)], [(2, 5.0), (3, 4.0)]
    assert rrf(60)(by_vector, by_text) == [(2, pytest.approx(1 / 62 + 1 / 61)), (1, pytest.approx(1 / 61)),
                                           (3, pytest.approx(1 / 62))]
    # vector weight 2: chunk 1 (2/61) passes chunk 2 (2/62 + 1/61)? 0.03279 < 0.04866: no; 3 stays last
    assert [i for i, _ in rrf(60, vector_weight=2)(by_vector, by_text)] == [2, 1, 3]
    assert [i for i, _ in rrf(1)([(1, 0.9), (2, 0.1)], [(3, 9.0)])] == [1, 3, 2]  # ties: lower id first


def test_convex_known_answer() -> None:
    by_vector = [(1, 0.9), (2, 0.5), (3, 0.1)]  # normalised 1, 0.5, 0
    by_text = [(3, 10.0), (4, 5.0), (2, 0.0)]  # normalised 1, 0.5, 0
    fused = dict(convex(0.7)(by_vector, by_text))
    assert fused == pytest.approx({1: 0.7, 2: 0.35, 3: 0.3, 4: 0.15})
    assert dict(convex(0.5)([(1, 0.3)], [])) == {1: 0.5}  # one candidate: normalised to 1


# -- hybrid -----------------------------------------------------------------------------
class FixedText:
    """A stand-in full-text half (the Protocol a store's FTS will satisfy)."""

    def __init__(self, ranking: list[tuple[int, float]]) -> None:
        self.ranking = ranking
        self.asked: list[tuple[str, int]] = []

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        self.asked.append((query, k))
        return self.ranking[:k]


def test_hybrid_modes_and_ranks() -> None:
    vectors = VectorIndex(2)
    vectors.add([1, 2, 3], np.stack([unit(1, 0), unit(1, 1), unit(0, 1)]))
    text: FullTextSearch = FixedText([(3, 8.0), (2, 4.0)])
    search = HybridSearch(vectors, text, candidates=10, fusion=rrf(60))
    hits = search.search("q", unit(1, 0), 3)
    # vector ranks 1, 2, 3 for ids 1, 2, 3; text ranks 1, 2 for ids 3, 2:
    # 3: 1/63 + 1/61 = 0.032266 > 2: 1/62 + 1/62 = 0.032258 > 1: 1/61 = 0.016393
    assert hits == [Hit(3, pytest.approx(1 / 63 + 1 / 61), 3, 1), Hit(2, pytest.approx(1 / 62 + 1 / 62), 2, 2),
                    Hit(1, pytest.approx(1 / 61), 1, None)]
    assert [h.chunk_id for h in search.search("q", unit(1, 0), 2, mode="vector")] == [1, 2]
    assert [h.chunk_id for h in search.search("q", None, 5, mode="fulltext")] == [3, 2]  # type: ignore[arg-type]
    assert text.asked[-1] == ("q", 10)  # each half gives `candidates`, not k
    assert search.search("q", unit(1, 0), 0) == []


def test_hybrid_default_fusion_is_convex_07() -> None:
    vectors = VectorIndex(2)
    vectors.add([1, 2], np.stack([unit(1, 0), unit(0, 1)]))
    search = HybridSearch(vectors, FixedText([(2, 3.0), (1, 1.0)]))
    # vector: 1 -> 1.0, 2 -> 0.0 normalised; text: 2 -> 1, 1 -> 0: 0.7 vs 0.3
    assert [(h.chunk_id, round(h.score, 6)) for h in search.search("q", unit(1, 0), 2)] == [(1, 0.7), (2, 0.3)]


def test_spread_lets_one_item_of_a_section_into_the_first_places() -> None:
    section = {0: "a", 1: "a", 2: "a", 3: "b", 4: "c", 5: "b"}.__getitem__
    assert spread([0, 1, 2, 3, 4, 5], section) == [0, 3, 4, 1, 2, 5]
    assert spread([0, 1, 2, 3, 4, 5], section, places=2) == [0, 3, 1, 2, 4, 5]  # filled: the rest in order
    assert spread([0, 1, 2, 3, 4, 5], section, cap=2) == [0, 1, 3, 4, 5, 2]
    assert spread([0, 1, 2], lambda i: "one") == [0, 1, 2]  # one section: nothing to reorder
    assert spread([], section) == []


def test_section_key() -> None:
    assert section_key(1, "d1", "Lists", 3) == ("d1", "Lists") == section_key(2, "d1", "Lists", None)
    assert section_key(1, "d1", None, 3) == ("d1", 3) == section_key(2, "d1", "", 3) != section_key(1, "d1", None, 4)
    assert section_key(1, "d1", None, None) != section_key(2, "d1", None, None)  # neither: each chunk its own


def test_hybrid_spreads_by_section_when_told() -> None:
    vectors = VectorIndex(2)
    vectors.add([1, 2, 3], np.stack([unit(1, 0), unit(1, 0.1), unit(1, 1)]))
    sections = {1: "s", 2: "s", 3: "t"}.__getitem__
    plain = HybridSearch(vectors, FixedText([]))
    spread_out = HybridSearch(vectors, FixedText([]), section_of=sections)
    assert [h.chunk_id for h in plain.search("q", unit(1, 0), 3)] == [1, 2, 3]
    assert [h.chunk_id for h in spread_out.search("q", unit(1, 0), 3)] == [1, 3, 2]
    assert [h.chunk_id for h in spread_out.search("q", unit(1, 0), 2, mode="vector")] == [1, 2]  # hybrid only
