"""`nanochat-lite bench` on tiny settings against the real model: the latency,
concurrency and memory sections measure real numbers, the time box cuts without
errors, and the results render as text, Markdown and plots. No speed is asserted.
llama_cpp.server is left out and one thread used to keep this fast on a busy machine
(llama.cpp threads that wait on each other slow down badly when cores are shared)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from nanochat_lite.bench import cli as bench_cli
from nanochat_lite.bench import latency, report

pytestmark = pytest.mark.model




def test_percentiles_known_answers() -> None:
    assert latency.percentiles([4.0, 1.0, 3.0, 2.0]) == {"median": 2.5, "p95": 4.0, "p99": 4.0, "min": 1.0,
                                                         "max": 4.0, "n": 4}
    hundred = latency.percentiles([float(i) for i in range(1, 101)])
    assert (hundred["median"], hundred["p95"], hundred["p99"]) == (50.5, 95.0, 99.0)
    assert latency.percentiles([]) == {"n": 0}


def test_sections_flag() -> None:
    from nanochat_lite.cli import CLIError

    assert bench_cli._sections_arg("memory, cold") == ["cold", "memory"]  # fixed order
    assert bench_cli._sections_arg(None) == list(bench_cli.SECTIONS)
    with pytest.raises(CLIError, match="unknown speed"):
        bench_cli._sections_arg("cold,speed")


def test_bench_parser_registered() -> None:
    from nanochat_lite.cli import build_parser

    args = build_parser(["bench"]).parse_args(["bench", "--quick", "--out", "x", "--threads", "1",
                                               "--sections", "latency"])
    assert (args.quick, args.out, args.threads, args.sections) == (True, "x", 1, "latency")


def _positive(d: dict) -> bool:
    return d["n"] > 0 and all(d[k] > 0 for k in ("median", "p95", "p99", "min", "max"))


def test_serving_sections_real_numbers_and_report(chat_model_path: Path, model_home: Path, tmp_path: Path) -> None:
    sections = latency.run(chat_model_path, 1, 1024, sections={"latency", "concurrency", "memory"}, requests=2,
                           budget_s=120, levels=[1, 2], per_client=1, time_box_s=120, home=model_home,
                           max_tokens=16, llama=False, log=lambda s: None)

    assert sections["latency"]["max_tokens"] == 16
    lat = sections["latency"]["peers"]["nanochat-lite"]
    assert (lat["completed"], lat["errors"]) == (2, 0)
    for key in ("ttft_ms", "total_ms", "decode_tok_s", "tokens"):
        assert _positive(lat[key]), key
    assert lat["ttft_ms"]["max"] < lat["total_ms"]["max"]

    conc = sections["concurrency"]["results"]
    assert set(conc) == {"nanochat-lite HTTP", "nanochat-lite WS"}
    for route, levels in conc.items():
        assert set(levels) == {"1", "2"}
        for level, r in levels.items():
            assert (r["completed"], r["errors"], r["time_boxed"]) == (int(level), 0, False), (route, level)
            assert r["aggregate_tok_s"] > 0 and _positive(r["ttft_ms"])

    mem = sections["memory"]
    nano = mem["peers"]["nanochat-lite"]
    assert 0 < nano["idle_rss_bytes"] <= nano["peak_rss_bytes"]
    assert nano["load_max_rss_bytes"] > 0
    emb = mem["nanochat-lite + embeddings"]
    assert "error" not in emb, emb
    assert emb["rss_bytes"] > 0 and emb["peak_rss_bytes"] >= emb["rss_bytes"]

    header = bench_cli.build_header(chat_model_path, model_home, 1, True, ["latency", "concurrency", "memory"])
    header.update(duration_s=1.0, load_average_end=0.0)
    results = json.loads(json.dumps({"header": header, "sections": sections}))  # what results.json holds
    assert len(results["header"]["model"]["sha256"]) == 64

    made = report.write(results, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# Nanochat-Lite benchmarks")
    for title in ("## End-to-end latency", "## Concurrency", "## Memory"):
        assert title in md
    assert "| nanochat-lite WS | 2 | 2/2 |" in md
    for name in made.values():
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    text = report.text(results)
    assert "== Memory ==" in text and "nanochat-lite + embeddings" in text


def test_time_box_cuts_without_errors(chat_model_path: Path, tmp_path: Path) -> None:
    from nanochat_lite.tokenizer import Tokenizer

    ask = latency.Ask(Tokenizer.from_gguf(chat_model_path).count, max_tokens=16)
    servers = latency.start_servers(chat_model_path, 1, 1024, tmp_path, llama=False)
    try:
        url = servers["nanochat-lite"].url
        for transport in ("http", "ws"):
            r = latency.run_level(url, transport, 2, 3, 0.3, ask)
            assert r["time_boxed"] and r["errors"] == 0, r
            assert r["cut_by_time_box"] >= 1 and r["completed"] < r["planned"]
        # The server is still fine afterwards: cut streams were cancelled, not left hanging.
        after = latency.run_level(url, "http", 1, 1, 120, ask)
        assert (after["completed"], after["errors"]) == (1, 0)
    finally:
        latency.stop_servers(servers)


def test_report_says_what_is_missing(tmp_path: Path) -> None:
    results = {"header": {"date": "d", "cpu": "c", "cores": 2, "threads": 2, "ctx": 2048, "python": "3",
                          "versions": {"x": "1"}, "quick": True, "load_average_start": 0.1,
                          "load_average_end": 0.2, "duration_s": 1.0,
                          "model": {"name": "m.gguf", "bytes": 1, "sha256": "0" * 64, "sha256_source": "s"}},
               "sections": {"cold": {"error": "RuntimeError: boom"},
                            "embeddings": {"status": "not available", "reason": "FileNotFoundError: gone"}}}
    md = report.markdown(results, {})
    assert "failed: RuntimeError: boom" in md
    assert "not available: FileNotFoundError: gone" in md
    report.write(results, tmp_path)
    assert (tmp_path / "report.md").exists()


def test_embeddings_memory_without_the_route(embedding_model_dir: Path, model_home: Path) -> None:
    """A server without /v1/embeddings: the Embedder is measured in a child process, and the row says so."""
    import http.server
    import os
    import threading

    from nanochat_lite.bench.memory import embeddings_memory

    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # 501 to everything
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        fake = SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_address[1]}", pid=os.getpid())
        r = embeddings_memory(fake, model_home, 1, ["one text", "another"])
    finally:
        httpd.shutdown()
    assert "separate" in r["how"] and "HTTP 501" in r["how"]
    assert r["peak_rss_bytes"] >= r["rss_bytes"] > 50 * 2**20  # the model alone is ~90 MB on disk
