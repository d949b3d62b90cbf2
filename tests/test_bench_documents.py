"""The documents bench section's parts that need no server: the generated book, the
previous figures read back, and the tables that put them beside today's (known answers).
The section itself runs against the real model in tests/test_bench_sections.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanochat_lite.bench import bookmake, documents_bench, documents_report, report
from nanochat_lite.commands import bench as bench_cli
from nanochat_lite.commands.common import CLIError
from nanochat_lite.documents.parse import parse


def test_book_is_real_text_page_by_page() -> None:
    pages, chapters = bookmake.book_pages(40)
    assert len(pages) == 40 and all(0 < len(p) <= bookmake.LINES for p in pages)
    assert bookmake.book_pages(40) == (pages, chapters)  # the same book every run
    lines = [line for p in pages for line in p if line.strip()]
    assert all(len(line) <= bookmake.WIDTH and line.isascii() for line in lines)
    assert len(set(lines)) > 0.8 * len(lines), "prose, not one line repeated"
    from pydoc_data.topics import topics

    assert [page for _, page in chapters] == sorted(page for _, page in chapters)
    assert chapters[0] == (sorted(topics)[0], 0)
    # The PDF's text layer is those pages, numbered, each under the chapter it is in.
    blocks = parse(bookmake.pdf(pages, chapters), "book.pdf")
    assert [b.page for b in blocks] == list(range(1, 41))
    assert blocks[0].text.splitlines()[0] == pages[0][0]
    title, first = chapters[3]
    assert blocks[first].heading == title


def test_book_goes_past_the_reference_manual_and_says_when_it_runs_out() -> None:
    pages, chapters = bookmake.book_pages(300)
    assert len(pages) == 300
    from pydoc_data.topics import topics

    assert len(chapters) > len(topics)  # the stdlib's docstrings follow the topics
    with pytest.raises(ValueError, match=r"fills \d+ pages; ask for fewer"):
        bookmake.book_pages(1_000_000)


SECTION = {
    "status": "ok", "quick": False,
    "ingest": {"pages": 300, "pdf_bytes": 720000, "chapters": 94, "chunks": 900, "seconds": 120.0,
               "accepted_s": 3.5, "pages_per_s": 2.5, "chunks_per_s": 7.5, "batch_size": 16, "threads": 2,
               "answer_tokens": 4, "load_average": {"idle": 1.0, "indexing": 1.5, "end": 2.0},
               "ttft_idle_ms": {"median": 40.0, "min": 35.0, "max": 50.0, "p95": 50.0, "p99": 50.0, "n": 8},
               "ttft_indexing_ms": {"median": 90.0, "min": 60.0, "max": 400.0, "p95": 400.0, "p99": 400.0, "n": 8}},
    "search": {"sizes": [1000, 100000], "queries": 200, "k": 5, "chunk_words": 150, "load_average_start": 1.0,
               "load_average_end": 1.2,
               "sqlite": {"1000": {"p50": 1.2, "p95": 3.4, "load_s": 0.01, "fill_s": 0.3},
                          "100000": {"p50": 30.0, "p95": 60.0, "load_s": 2.0, "fill_s": 90.0}},
               "postgresql": "not measured: psycopg is not installed (pip install 'nanochat-lite[postgres]')"},
    "retrieval": {"corpus": "pydoc_data.topics (Python 3.11.7)", "topics": 79, "chunks": 3000,
                  "fusion": "convex 0.7 vector", "other": "rrf k=60", "k": 5,
                  "sets": {"help names": {"questions": 200, "phrasings": 4, "hybrid": 0.95, "hybrid, other": 0.96,
                                          "BM25 only": 0.8, "vector only": 0.9}},
                  "mean": {"hybrid": 0.93, "hybrid, other": 0.94, "BM25 only": 0.78, "vector only": 0.88}},
    "previous": None}


def _results(tmp_path: Path, section: dict, date: str = "2026-12-01 10:00 UTC") -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"header": {"date": date, "quick": False}, "sections": {"documents": section}}))
    return path


def test_previous_figures_read_back(tmp_path: Path) -> None:
    assert documents_bench.previous_figures(tmp_path) is None  # nothing there yet
    older = {**SECTION, "previous": {"figures": {"ingest": {"pages_per_s": 1.0}}}}
    path = _results(tmp_path, older)
    for where in (path, tmp_path):  # the file or its folder
        prev = documents_bench.previous_figures(where)
        assert prev is not None and prev["date"] == "2026-12-01 10:00 UTC" and prev["from"] == str(path)
        assert prev["figures"]["ingest"]["pages_per_s"] == 2.5 and "previous" not in prev["figures"]  # no chain
    _results(tmp_path, {"error": "RuntimeError: boom"})
    assert documents_bench.previous_figures(tmp_path) is None  # a failed section has no figures to show
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a results.json written by `nanochat-lite bench`"):
        documents_bench.previous_figures(path)


def test_previous_flag_checked_before_running(tmp_path: Path) -> None:
    assert bench_cli.previous_arg(None) is None
    with pytest.raises(CLIError, match="--previous .*nowhere: no results.json there"):
        bench_cli.previous_arg(str(tmp_path / "nowhere"))
    (tmp_path / "results.json").write_text("[]")
    with pytest.raises(CLIError, match="--previous: .*not a results.json"):
        bench_cli.previous_arg(str(tmp_path))
    _results(tmp_path, SECTION)
    assert bench_cli.previous_arg(str(tmp_path)) == tmp_path


def test_tables_put_previous_beside_today(tmp_path: Path) -> None:
    old = {**SECTION, "ingest": {**SECTION["ingest"], "pages_per_s": 2.0, "chunks_per_s": 6.0},
           "search": {**SECTION["search"], "sqlite": {"1000": {"p50": 1.0, "p95": 2.0, "load_s": 0.01}}},
           "retrieval": {**SECTION["retrieval"], "mean": {"hybrid": 0.9, "BM25 only": 0.7, "vector only": 0.8}}}
    today = {**SECTION, "previous": documents_bench.previous_figures(_results(tmp_path, old))}
    ingest, search, quality = documents_report.tables(today)
    assert "Previous figures: the run of 2026-12-01 10:00 UTC" in ingest.note
    rows = {r[0]: r[1:] for r in ingest.rows}
    assert rows["pages/s (300 pages)"] == ["2.5", "2"] and rows["chunks/s"] == ["7.5", "6"]
    assert rows["embedding batch size (chunks)"] == ["16", "16"]
    assert rows["first-token time while indexing (ms)"][0] == "90 (60–400), 8 turns"
    assert search.rows == [["SQLite", "1,000", "1.2 / 3.4", "1 / 2", "0.01"],
                           ["SQLite", "100,000", "30 / 60", "-", "2"],
                           ["PostgreSQL", SECTION["search"]["postgresql"], "", "", ""]]
    assert quality.header[2:4] == ["hybrid", "hybrid, rrf k=60"]
    assert quality.rows[-1] == ["mean", "", "0.93", "0.94", "0.78", "0.88", "0.9 / 0.7 / 0.8"]
    # Without a previous run the column says so instead of showing numbers.
    fresh = documents_report.tables(SECTION)
    assert "Previous figures: none" in fresh[0].note and fresh[2].rows[-1][-1] == "-"
    # Issue 21's targets: search p95 at 100k chunks and hybrid recall@5.
    targets = {r[0]: r for r in report.targets({"sections": {"documents": SECTION}})}
    assert targets["document search p95 at 100k chunks, SQLite"][2:] == ["60 ms", "missed by 10 ms"]
    assert targets["documents: hybrid recall@5 (mean; convex 0.7 vector)"][2:] == ["0.93", "met"]


def test_the_server_fusion_is_one_the_retrieval_bench_measures() -> None:
    from nanochat_lite.bench import retrieval
    from nanochat_lite.documents import search

    # Library.search fuses with search.convex() at its default weight and spreads by section:
    # the figure called "hybrid" is the method retrieval.py measures as the server's.
    assert documents_bench.SERVER_FUSION == retrieval.SERVER == \
        f"convex {search.DEFAULT_VECTOR_WEIGHT} vector, one chunk per section"
    assert documents_bench.OTHER_FUSION == f"rrf k={search.RRF_K}" and documents_bench.OTHER_FUSION in retrieval.FUSIONS


def test_a_failed_part_is_its_row() -> None:
    section = {**SECTION, "ingest": {"error": "RuntimeError: the upload was answered 503"}}
    ingest = documents_report.tables(section)[0]
    assert ingest.rows == [["ingest", "failed: RuntimeError: the upload was answered 503", ""]]
    assert "Previous figures: none" in ingest.note
