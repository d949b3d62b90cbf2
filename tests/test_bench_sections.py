"""Every section of `nanochat-lite bench --quick` runs, against the real models, on tiny settings.

One test per section, parametrized over the suite's own list (`suite.SECTIONS`): a new
section fails here until it has a check in CHECKS. Each run goes through the command
itself (`nanochat-lite bench --quick --sections NAME`) and each check reads what the run
wrote to results.json: the figures are present, numeric and positive where they must be;
none is compared with a target. Peers that are not given (llama-server, llama-bench, a
baseline) or not installed here (llama-cpp-python, sentence-transformers, transformers)
must say so in their row, never fail the section; when one is installed, its row holds
figures or says it crashed. Ollama is no peer of the bench (it is one more upstream for
`--engine openai:URL`), so there is no row to check.

Sizes: the suite's constants are shrunk here (one thread, 1-2 runs, 8-24-token answers,
a 200-token "long" prompt, 32 KiB of tokenizer text, 16 embedding texts, a 6-page PDF and
1k stored chunks for the documents) so that the whole
file takes about two minutes on a quiet 2-core machine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable

import optout
import pytest

from nanochat_lite.bench import embeddings_speed, report, retrieval, suite, tokenizer_speed

TINY = {"COLD_RUNS": (1, 1), "DECODE_RUNS": (1, 1), "DECODE_TOKENS": (16, 16), "LATENCY_REQUESTS": (2, 2),
        "LATENCY_BUDGET_S": (120.0, 120.0), "LEVELS": [1, 2], "MAX_TOKENS": (8, 8), "TIME_BOX_S": (120.0, 120.0),
        "FAIR_PROMPT_TOKENS": (200, 200), "FAIR_STREAM_TOKENS": (24, 24), "FAIR_START_WAIT_S": (5.0, 5.0),
        "FAIR_TIME_BOX_S": (120.0, 120.0), "FRONT_ROUNDS": (2, 2), "FRONT_MAX_TOKENS": (8, 8),
        "DOCS_PAGES": (6, 6), "DOCS_TURNS": (2, 2), "DOCS_SIZES": ((1000,), (1000,)), "DOCS_QUERIES": (10, 10)}
NOT_GIVEN = {"llama-server": "not given (--llama-server PATH)",
             "nanochat-lite (serial baseline)": "not given (--baseline-cmd '...')"}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _positive(d: Any, *keys: str) -> bool:
    """A summary with at least one sample whose median/min/max (and any `keys`) are > 0."""
    return (isinstance(d, dict) and d.get("n", 0) > 0
            and all(isinstance(d[k], (int, float)) and d[k] > 0 for k in ("median", "min", "max", *keys)))


def _optional_peer(row: Any, module: str) -> None:
    """An optional peer's row: "not installed ..." when its package is absent; else figures,
    or a crash/failure said in words (a native build may die on this CPU)."""
    if not _installed(module):
        assert isinstance(row, str) and row.startswith("not installed"), row
    else:
        assert _positive(row) or (isinstance(row, str) and row.startswith(("crashed (signal", "failed"))), row


def _absent_servers(absent: dict[str, str]) -> None:
    for name, why in NOT_GIVEN.items():
        assert absent[name] == why
    if not _installed("llama_cpp"):
        assert absent["llama_cpp.server"].startswith("not installed"), absent


def _peer_words(r: Any) -> set[str]:
    """Every "not installed ..."/"not given ..."/"crashed (signal N)" string in a section's results."""
    if isinstance(r, dict):
        return {w for v in r.values() for w in _peer_words(v)}
    if isinstance(r, str) and r.startswith(("not installed", "not given", "crashed (signal")):
        return {r}
    return set()


# -- one check per section ----------------------------------------------------------------------
def check_cold(r: dict) -> None:
    assert r["peer_order"][0] == "nanochat-lite" and r["runs"] == 1
    nano = r["nanochat-lite"]
    assert _positive(nano["health_s"]) and _positive(nano["first_token_s"])
    assert nano["first_token_s"]["median"] >= nano["health_s"]["median"]  # asked only once ready
    _absent_servers(r)
    if not _installed("transformers"):
        assert r["transformers"] == "not installed"


def check_decode(r: dict) -> None:
    assert _positive(r["nanochat-lite"]) and r["nanochat-lite"]["n"] == 1 and r["n_tokens"] == 16
    assert r["llama-bench tg128"] == "not given (--llama-bench PATH)"
    _optional_peer(r["llama-cpp-python generate"], "llama_cpp")
    assert ("ratio_llama_cpp_python" in r) == isinstance(r["llama-cpp-python generate"], dict)


def check_tokenizer(r: dict) -> None:
    assert r["text_bytes"] > 0 and r["lines"] > 0 and r["chat_message_tokens"] > r["chat_message_words"] > 0
    res, unavailable = r["results"], r["unavailable"]
    for name, v in res.items():
        assert v["encode_mb_s"] > 0 and v["chat_per_s"] > 0 and v["mismatched_lines"] >= 0, name
        assert v["our_speedup_encode"] > 0 and v["our_speedup_chat"] > 0, name
    assert res["nanochat-lite"]["ids_equal"]
    # llama.cpp's own tokenizer (xllamacpp is a dependency): ours gives its ids, line for line
    assert res["xllamacpp /tokenize"]["ids_equal"], res["xllamacpp /tokenize"]
    assert "HF tokenizers" in res  # tokenizers is a dependency too
    if res["nanochat-lite"]["note"] == "tiktoken":
        assert {"tiktoken core, our pattern", "tiktoken core, GPT-2 pattern"} <= set(res)
    for name in ("llama.cpp llama_tokenize", "llama.cpp Llama.tokenize"):
        if _installed("llama_cpp"):
            assert name in res or unavailable[name].startswith(("crashed (signal", "failed")), name
        else:
            assert unavailable[name] == "not installed (pip install llama-cpp-python)"


def check_latency(r: dict) -> None:
    assert r["planned_per_server"] == 2 and r["max_tokens"] == 8
    nano = r["peers"]["nanochat-lite"]
    assert (nano["completed"], nano["errors"]) == (2, 0)
    for key in ("ttft_ms", "total_ms", "decode_tok_s", "tokens"):
        assert _positive(nano[key]), key
    assert _positive(nano["ttft_ms"], "p95", "p99") and nano["ttft_ms"]["max"] <= nano["total_ms"]["max"]
    _absent_servers(r["absent"])


def check_concurrency(r: dict) -> None:
    assert {"nanochat-lite HTTP", "nanochat-lite WS"} <= set(r["results"])
    for route, levels in r["results"].items():
        assert set(levels) == {"1", "2"}, route
        for level, v in levels.items():
            assert (v["completed"], v["planned"], v["errors"]) == (int(level), int(level), 0), (route, level, v)
            assert v["aggregate_tok_s"] > 0 and _positive(v["ttft_ms"]) and _positive(v["total_ms"]), (route, level)
            assert 0 < v["tokens"]["max"] <= 8
    _absent_servers(r["absent"])


def check_memory(r: dict) -> None:
    assert r["load_clients"] == 2
    nano = r["peers"]["nanochat-lite"]
    assert 0 < nano["idle_rss_bytes"] <= nano["peak_rss_bytes"] and nano["load_max_rss_bytes"] > 0
    assert nano["kv_cache_bytes"] > 0, nano["kv_cache_source"]
    d = r["defaults"]
    assert "error" not in d, d
    assert 0 < d["rss_bytes"] <= d["peak_rss_bytes"] and d["kv_cache_bytes"] > 0
    e = r["nanochat-lite + embeddings"]
    assert "error" not in e, e
    assert 0 < e["rss_bytes"] <= e["peak_rss_bytes"]
    _absent_servers(r["absent"])


def check_fairness(r: dict) -> None:
    assert r["long_prompt_tokens"] >= 200 and r["absent"] == {"llama-server": NOT_GIVEN["llama-server"]}
    nano = r["peers"]["nanochat-lite"]
    assert nano["long_error"] == "" and nano["long_ttft_ms"] > 0 and nano["max_gap_ms"] > 0
    assert len(nano["streams"]) == 3
    assert all(s["tokens"] > 0 and s["error"] == "" for s in nano["streams"]), nano["streams"]


def check_embeddings(r: dict) -> None:
    assert r["status"] == "ok" and r["texts"] == 16 and r["rounds"] == 1
    assert [(row["input"], row["batch"]) for row in r["rows"]] == [
        (label, b) for label in ("6–14 words", "140–180 words") for b in (1, 32, 256)]
    ours = r["engines"]["nanochat-lite"]
    assert "ONNX Runtime" in ours["version"] and _positive(ours["cold_load_s"])
    st_given = bool(os.environ.get(embeddings_speed.ST_PYTHON_ENV))
    st = r["engines"]["sentence-transformers"]
    if not st_given:
        _optional_peer(st, "sentence_transformers")
    for row in r["rows"]:
        assert _positive(row["nanochat-lite"]), row
        if isinstance(st, dict):  # measured beside ours: figures, the ratio and vectors that agree
            assert _positive(row["sentence-transformers"]) and row["ratio_median"] > 0, row
        else:
            assert row["sentence-transformers"] == st and row["ratio_median"] is None, row
    if isinstance(st, dict):
        assert set(r["min_cosine"]) == {"6–14 words", "140–180 words"}
        assert all(c >= 0.9999 for c in r["min_cosine"].values()), r["min_cosine"]


def check_front(r: dict) -> None:
    assert (r["rounds"], r["max_tokens"]) == (2, 8)
    for path in ("direct", "front"):
        v = r[path]
        assert (v["completed"], v["errors"]) == (2, 0), (path, v)
        assert _positive(v["ttft_ms"]) and _positive(v["decode_tok_s"]), path
    assert isinstance(r["added_ttft_ms_p50"], float)  # may be below 0: a difference of two medians


def check_retrieval(r: dict) -> None:
    q = r["quality"]
    assert r["quick"] and q["topics"] == retrieval.QUICK_TOPICS and q["chunks"] >= q["topics"]
    assert [row["set"] for row in q["rows"]] == ["help names", "topic keys", "section headings"]
    for row in q["rows"]:
        assert row["questions"] > 0
        for name, m in row["methods"].items():
            assert 0.0 <= m["recall@1"] <= m["recall@5"] <= m["recall@10"] <= 1.0, (row["set"], name)
    assert q["mean_recall@5"]["vector only"] > 0 and q["mean_recall@5"]["BM25 only"] > 0
    assert len(q["miss_examples"]) <= retrieval.MISS_EXAMPLES
    for miss in q["miss_examples"]:  # a miss: none of what came back is from the wanted topic
        assert miss["got"] and all(hit["topic"] != miss["expected"] for hit in miss["got"]), miss
    assert list(r["latency"]["sizes"]) == ["1000", "10000"]
    for row in r["latency"]["sizes"].values():
        assert all(0 < row[h]["p50"] <= row[h]["p95"] for h in ("vector", "bm25", "hybrid")), row


def check_documents(r: dict) -> None:
    assert r["status"] == "ok" and r["quick"]
    for part in ("ingest", "search", "retrieval"):
        assert "error" not in r[part], (part, r[part])
    ingest = r["ingest"]
    assert (ingest["pages"], ingest["pages_read"]) == (6, 6) and ingest["chunks"] >= 6
    assert ingest["pages_per_s"] > 0 and ingest["chunks_per_s"] > 0 and ingest["batch_size"] > 0
    assert ingest["accepted_s"] < ingest["seconds"]
    assert _positive(ingest["ttft_idle_ms"]) and ingest["ttft_idle_ms"]["n"] == 2
    assert _positive(ingest["ttft_indexing_ms"]) and 1 <= ingest["ttft_indexing_ms"]["n"] <= 2
    search = r["search"]
    stores = ["sqlite"] if "postgres" in optout.opted_out() else ["sqlite", "postgresql"]
    for store in stores:  # PostgreSQL is required unless opted out, as for the store's own tests
        assert list(search[store]) == ["1000"], search[store]
        row = search[store]["1000"]
        assert 0 < row["p50"] <= row["p95"] and row["load_s"] >= 0, (store, row)
    q = r["retrieval"]
    assert q["topics"] == retrieval.QUICK_TOPICS and list(q["sets"]) == ["help names", "topic keys",
                                                                         "section headings"]
    for name, s in [*q["sets"].items(), ("mean", q["mean"])]:
        assert all(0 < s[m] <= 1 for m in ("hybrid", "hybrid, other", "BM25 only", "vector only")), (name, s)
    # The results.json the test left in --out beforehand is the previous run, shown beside.
    assert r["previous"]["date"] == PREVIOUS_DATE and r["previous"]["figures"]["ingest"]["pages_per_s"] == 0.5


PREVIOUS_DATE = "2026-12-01 10:00 UTC"
# A results.json already in --out before the run: the sections that show previous figures read it.
PREVIOUS = {"documents": {"status": "ok", "quick": True, "ingest": {"pages": 6, "pages_per_s": 0.5},
                          "search": {}, "retrieval": {}}}


CHECKS: dict[str, Callable[[dict], None]] = {
    "cold": check_cold, "decode": check_decode, "tokenizer": check_tokenizer, "latency": check_latency,
    "concurrency": check_concurrency, "memory": check_memory, "fairness": check_fairness,
    "embeddings": check_embeddings, "front": check_front, "retrieval": check_retrieval,
    "documents": check_documents}


def test_every_section_has_a_check() -> None:
    assert set(CHECKS) == set(suite.SECTIONS), "add a check for each new bench section to CHECKS"


@pytest.mark.model
@pytest.mark.parametrize("section", suite.SECTIONS)
def test_section_runs_quick(section: str, chat_model_path: Path, model_home: Path, embedding_model_dir: Path,
                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                            ) -> None:
    from nanochat_lite.cli import main

    for name, value in TINY.items():
        monkeypatch.setattr(suite, name, value)
    monkeypatch.setitem(tokenizer_speed.SIZES, True, tokenizer_speed.Sizes(32, 1, 20))
    monkeypatch.setitem(embeddings_speed.SIZES, True, (1, 1, 16))
    out = tmp_path / "out"
    if section in PREVIOUS:
        out.mkdir()
        (out / "results.json").write_text(json.dumps({"header": {"date": PREVIOUS_DATE, "quick": True},
                                                      "sections": {section: PREVIOUS[section]}}))
    rc = main(["bench", "--quick", "--out", str(out), "--threads", "1", "--home", str(model_home),
               "--sections", section])
    printed = capsys.readouterr().out
    assert rc == 0

    results = json.loads((out / "results.json").read_text())
    assert list(results["sections"]) == [section]
    r = results["sections"][section]
    assert "error" not in r, r
    CHECKS[section](r)

    # Its table, printed and in the report, with a row per peer and no failure.
    tables = report.RENDERERS[section](r)
    md = (out / "report.md").read_text()
    for t in tables:
        assert t.rows, t.title
        assert f"== {t.title} ==" in printed and f"## {t.title}" in md
        assert f"| {t.rows[0][0]} |" in md
    # A peer without figures is a row that says why, in the report too.
    for why in _peer_words(r):
        assert f"| {why} |" in md, why
    # Which llama.cpp build: version, wheel or local build, instruction sets.
    build = results["header"]["llama_cpp"]
    assert build["xllamacpp"] == importlib.metadata.version("xllamacpp") and build["instruction_sets"], build
    assert f"llama.cpp: xllamacpp {build['xllamacpp']}, {build['build']}" in printed
