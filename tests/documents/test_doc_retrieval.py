"""bench/retrieval.py on its quick subset (16 pydoc topics, one phrasing, latency to 10k):
the labels come from pydoc's own tables, and the hybrid is never worse than its worse half."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanochat_lite.bench import retrieval


def test_questions_resolve_as_help_resolves_them() -> None:
    topics, sets, skipped = retrieval.qa_set()
    by_name = {q.name: q.label for q in sets["help names"]}
    # pydoc.Helper: 'elif' -> 'if' -> ('if', ...); 'ASSERTION' -> 'assert' -> ('assert', ...);
    # 'MAPPINGS' -> 'DICTIONARIES' -> ('typesmapping', ...); 'def' -> ('function', ...)
    assert by_name["elif"] == "if" and by_name["assertion"] == "assert"
    assert by_name["mappings"] == "typesmapping" and by_name["def"] == "function"
    assert "True: no topic" in skipped and "None: no topic" in skipped
    assert [q.label for q in sets["topic keys"]] == sorted(topics)
    assert all(q.label in topics for qs in sets.values() for q in qs)


@pytest.fixture(scope="module")
def quick(embedding_model_dir: Path) -> dict:
    return retrieval.run(quick=True)


def test_hybrid_is_at_least_as_good_as_the_worse_half(quick: dict) -> None:
    rows = quick["quality"]["rows"]
    assert [(r["set"], r["index"], r["template"]) for r in rows] == [
        ("help names", "with headings", retrieval.TEMPLATES[0]), ("topic keys", "with headings", retrieval.TEMPLATES[0]),
        ("section headings", "without headings", retrieval.TEMPLATES[0])]
    for row in rows:
        m = row["methods"]
        assert row["questions"] > 10
        assert all(0.0 <= v["recall@5"] <= v["recall@10"] <= 1.0 for v in m.values())
        hybrid = m[f"hybrid, {retrieval.DEFAULT}"]["recall@5"]
        assert hybrid >= min(m["BM25 only"]["recall@5"], m["vector only"]["recall@5"]), row


def test_latency_table(quick: dict) -> None:
    sizes = quick["latency"]["sizes"]
    assert list(sizes) == ["1000", "10000"]
    for row in sizes.values():
        for half in ("vector", "bm25", "hybrid"):
            assert 0 < row[half]["p50"] <= row[half]["p95"]
    assert quick["latency"]["embed_query"]["p50"] > 0
