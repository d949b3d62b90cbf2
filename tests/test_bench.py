"""`nanochat-lite bench`: pure helpers on known answers, peers that were not given or are
not installed reported as such, and the sections on tiny settings against the real model
(real numbers, nothing about speed asserted). One thread and tiny counts keep this fast
on a busy 2-core machine (llama.cpp threads that wait on each other slow down badly when
cores are shared). llama-server and llama-bench are stood in for by small scripts where
only their command line and output format matter."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from nanochat_lite.bench import suite
from nanochat_lite.bench import client, fairness, latency, peers, report
from nanochat_lite.commands import bench as bench_cli


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


BASELINE_CMD = (f"{sys.executable} -m nanochat_lite serve --host 127.0.0.1 --port {{port}} --db {{db}} "
                "--threads {threads} --model {model} --ctx-size {ctx}")


# -- pure helpers ----------------------------------------------------------------------
def test_percentiles_known_answers() -> None:
    assert client.percentiles([4.0, 1.0, 3.0, 2.0]) == {"median": 2.5, "p95": 4.0, "p99": 4.0, "min": 1.0,
                                                        "max": 4.0, "n": 4}
    hundred = client.percentiles([float(i) for i in range(1, 101)])
    assert (hundred["median"], hundred["p95"], hundred["p99"]) == (50.5, 95.0, 99.0)
    assert client.percentiles([]) == {"n": 0}


def test_sections_flag() -> None:
    from nanochat_lite.commands.common import CLIError

    assert bench_cli.sections_arg("memory, cold, fairness") == ["cold", "memory", "fairness"]  # fixed order
    assert bench_cli.sections_arg(None) == list(suite.SECTIONS)
    with pytest.raises(CLIError, match="unknown speed"):
        bench_cli.sections_arg("cold,speed")


def test_bench_parser_takes_peer_options() -> None:
    from nanochat_lite.cli import build_parser

    argv = ["bench", "--quick", "--out", "x", "--threads", "1", "--sections", "latency", "--llama-server", "/a/ls",
            "--llama-bench", "/a/lb", "--serve-args", "--parallel 4 --max-queue 8", "--baseline-cmd", "old {port}"]
    args = build_parser(argv).parse_args(argv)
    assert (args.quick, args.out, args.threads, args.sections) == (True, "x", 1, "latency")
    assert (args.llama_server, args.llama_bench, args.baseline_cmd) == ("/a/ls", "/a/lb", "old {port}")
    assert args.serve_args == "--parallel 4 --max-queue 8"


def test_peer_options_checked_before_running(tmp_path: Path) -> None:
    from nanochat_lite.commands.common import CLIError

    def opts(**kw: str) -> peers.PeerOptions:
        return bench_cli.peer_options(SimpleNamespace(**{"llama_server": None, "llama_bench": None,
                                                          "serve_args": "", "baseline_cmd": None, **kw}))

    plain = tmp_path / "not-executable"
    plain.write_text("")
    with pytest.raises(CLIError, match="--llama-server .*not an executable file"):
        opts(llama_server=str(tmp_path / "missing"))
    with pytest.raises(CLIError, match="--llama-bench .*not an executable file"):
        opts(llama_bench=str(plain))
    with pytest.raises(CLIError, match="--st-python .*not an executable file; give a Python that can import "
                                       "sentence_transformers"):
        opts(st_python=str(plain))
    assert opts(st_python=sys.executable).st_python == sys.executable
    with pytest.raises(CLIError, match=r"needs \{port\}"):
        opts(baseline_cmd="nanochat-lite serve --port 8080")
    with pytest.raises(CLIError, match=r"unknown placeholder\(s\) \{prot\}"):
        opts(baseline_cmd="nanochat-lite serve --port {prot}")
    exe = _script(tmp_path / "llama-server", "exit 0\n")
    o = opts(llama_server=str(exe), serve_args="--parallel 4 --max-queue 8", baseline_cmd="x --port {port}")
    assert o.llama_server == exe and o.serve_args == ("--parallel", "4", "--max-queue", "8")


def test_baseline_template_fills_placeholders() -> None:
    p = peers.baseline("'/opt/old nano/bin/nanochat-lite' serve --port {port} --db {db} -t {threads} -c {ctx}",
                       Path("/m.gguf"), 2, 2048)
    assert p.name == "nanochat-lite (serial baseline)" and p.ready_path == "/api/health" and p.nanochat
    assert p.argv(8123, Path("/tmp/x y.sqlite3")) == ["/opt/old nano/bin/nanochat-lite", "serve", "--port", "8123",
                                                      "--db", "/tmp/x y.sqlite3", "-t", "2", "-c", "2048"]


def test_nanochat_serve_args_come_after_ours() -> None:
    p = peers.nanochat(Path("/m.gguf"), 2, 2048, ("--parallel", "4", "--ctx-size", "4096"),
                       after=("--ctx-size", "8192"))
    argv = p.argv(9000, Path("/tmp/db"))
    assert argv[argv.index("--parallel") + 1] == "4"
    # argparse keeps the last --ctx-size: ours, then --serve-args, then what the section needs
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--ctx-size"] == ["2048", "4096", "8192"]


@pytest.mark.parametrize("help_text,expected", [
    ("  -kvu, --kv-unified  use one KV buffer\n  --no-webui\n  -tb, --threads-batch N\n  --jinja",
     ["--threads-batch", "2", "--parallel", "10", "-c", "8192", "--kv-unified", "--no-webui", "--jinja"]),
    ("  -np, --parallel N\n", ["--parallel", "10", "-c", "20480"]),
])
def test_llama_server_command_follows_its_flags(tmp_path: Path, help_text: str, expected: list[str]) -> None:
    binary = _script(tmp_path / "llama-server", f"cat <<'EOF'\n{help_text}\nEOF\n")
    p = peers.llama_server(binary, Path("/m.gguf"), 2, ctx=2048, parallel=10, unified_ctx=8192)
    argv = p.argv(8080, tmp_path / "db")
    assert argv[:5] == [str(binary), "-m", "/m.gguf", "--threads", "2"]
    assert argv[5:-4] == expected
    assert argv[-4:] == ["--host", "127.0.0.1", "--port", "8080"]
    assert (p.ready_path, p.n_predict, p.usage, p.nanochat) == ("/health", True, True, False)


def test_llama_bench_figure_parsed(tmp_path: Path) -> None:
    rows = [{"n_prompt": 0, "n_gen": 128, "avg_ts": 142.6, "stddev_ts": 1.0}]
    binary = _script(tmp_path / "llama-bench",
                     'echo "load: some log line" >&2\n'
                     f"echo '{json.dumps(rows)}'\n")
    assert peers.llama_bench_tg(binary, Path("/m.gguf"), 2, 128) == 142.6
    with pytest.raises(RuntimeError, match="no tg64 row"):
        peers.llama_bench_tg(binary, Path("/m.gguf"), 2, 64)


def test_kv_cache_size_reports() -> None:
    from nanochat_lite.bench.memory import kv_cache_bytes

    assert kv_cache_bytes({"engine": {"slots": 4, "kv_cache_bytes": 1024}}) == ("engine.kv_cache_bytes", 1024)
    assert kv_cache_bytes({"engine": {"kv_cache": {"cells": 8192, "bytes": 96}}}) == ("engine.kv_cache.bytes", 96)
    # the bytes given back once idle are not the cache's size, whichever comes first
    assert kv_cache_bytes({"engine": {"kv_cache_bytes": None, "kv_released_bytes": 0}}) is None
    assert kv_cache_bytes({"engine": {"kv_released_bytes": 7, "kv_cache_bytes": 96}}) == ("engine.kv_cache_bytes", 96)
    assert kv_cache_bytes({"engine": {"kv_cells": 8192}}) is None  # a count is not a size
    assert kv_cache_bytes({"memory": {"kv_cache_bytes": 5}}) is None  # only under "engine"
    assert kv_cache_bytes({"requests": {}}) is None
    log = ("llama_kv_cache: size =  180.00 MiB (  8192 cells,  30 layers, 10/10 seqs), K (f16):   90.00 MiB\n"
           "llama_kv_cache_iswa: size =    2.00 MiB (   256 cells, ...\n")
    assert peers.kv_cache_from_log(log) == 182 << 20
    assert peers.kv_cache_from_log("no cache here") is None


def test_aggregate_ratios_known_answer() -> None:
    def level(tok_s: float) -> dict:
        return {"aggregate_tok_s": tok_s}

    results = {"nanochat-lite HTTP": {"1": level(100), "10": level(150)},
               "llama-server HTTP": {"1": level(50), "10": level(100)},
               "nanochat-lite (serial baseline) HTTP": {"10": level(0)},  # nothing finished: no ratio
               "nanochat-lite WS": {"10": level(999)}}
    assert latency.aggregate_ratios(results) == {"nanochat-lite / llama-server": {"1": 2.0, "10": 1.5}}


def test_story_prompts_are_distinct() -> None:
    prompts = [latency.story_prompt(i) for i in range(1 + 4 + 10)]
    assert len(set(prompts)) == len(prompts)
    assert prompts[0] == "Write a short story about a lighthouse keeper (story number 1)."


def test_fairness_helpers() -> None:
    assert fairness.max_gap_ms([0.0, 0.1, 0.5, 0.6]) == 400.0
    assert fairness.max_gap_ms([0.0, 0.1, 0.5, 0.6], start=0.55, end=0.7) == 100.0
    assert fairness.max_gap_ms([1.0]) is None
    messages, n = fairness.long_prompt(lambda s: len(s.split()), 3000)
    assert n >= 3000 and n == sum(len(m["content"].split()) for m in messages)
    assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2) + ["user"]
    assert len(messages) > 1 and all(len(m["content"]) <= 8000 for m in messages)  # nanochat-lite's message limit
    assert messages[-1]["content"].endswith(fairness.LONG_QUESTION)
    notes = [s for m in messages if m["role"] == "user" for s in m["content"].split("Note ")[1:]]
    assert len(notes) > 100 and len(set(notes)) == len(notes)  # distinct: nothing for a cache to reuse


def test_absent_peers_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "have_llama_cpp_server", lambda: False)
    ps, absent = peers.serving_peers(peers.PeerOptions(), Path("/m.gguf"), 1, 1024)
    assert [p.name for p in ps] == ["nanochat-lite"]
    assert absent == {"nanochat-lite (serial baseline)": "not given (--baseline-cmd '...')",
                      "llama-server": "not given (--llama-server PATH)",
                      "llama_cpp.server": "not installed (pip install 'llama-cpp-python[server]')"}
    info = peers.peer_info(peers.PeerOptions())
    assert info["llama_cpp.server"].startswith("not installed") and info["llama-bench"].startswith("not given")


def test_report_says_what_is_missing(tmp_path: Path) -> None:
    results = {"header": {"date": "d", "cpu": "c", "cores": 2, "threads": 2, "ctx": 2048, "python": "3",
                          "versions": {"x": "1"}, "quick": True, "load_average_start": 0.1,
                          "load_average_end": 0.2, "duration_s": 1.0,
                          "model": {"name": "m.gguf", "bytes": 1, "sha256": "0" * 64, "sha256_source": "s"}},
               "sections": {"cold": {"error": "RuntimeError: boom"},
                            "decode": {"nanochat-lite": {"median": 100.0, "min": 90.0, "max": 110.0, "n": 3},
                                       "llama-bench tg128": "not given (--llama-bench PATH)",
                                       "llama-cpp-python generate": "not installed (pip install llama-cpp-python)",
                                       "runs": 3, "n_tokens": 256},
                            "embeddings": {"status": "not available", "reason": "FileNotFoundError: gone"}}}
    md = report.markdown(results, {})
    assert "failed: RuntimeError: boom" in md
    assert "not available: FileNotFoundError: gone" in md
    assert "| llama-bench tg128 | not given (--llama-bench PATH) |" in md
    assert "| llama-cpp-python generate | not installed (pip install llama-cpp-python) |" in md
    report.write(results, tmp_path)
    assert (tmp_path / "report.md").exists()


def test_report_targets_of_issue_10() -> None:
    conc = {"results": {"nanochat-lite HTTP": {"10": {"completed": 10, "planned": 10, "ttft_ms": {"p95": 900.0}}}},
            "ratios": {"nanochat-lite / nanochat-lite (serial baseline)": {"10": 2.0},
                       "nanochat-lite / llama-server": {"10": 0.9}}}
    rows = {r[0]: r for r in report.targets({"sections": {"concurrency": conc}})}
    assert rows["10 simultaneous new chats completed"][3] == "met"
    assert rows["10 chats aggregate tok/s vs nanochat-lite (serial baseline)"][3] == "met"
    assert rows["10 chats aggregate tok/s vs llama-server"][3] == "missed by 0.10×"
    assert rows["10 chats TTFT p95"][3] == "missed by 100 ms"



def test_report_front_cost_section_and_target() -> None:
    summary = {"n": 3, "median": 50.0, "p95": 60.0, "p99": 60.0, "min": 40.0, "max": 60.0}
    front = {"direct": {"ttft_ms": summary, "decode_tok_s": summary}, "added_ttft_ms_p50": 4.5,
             "front": {"ttft_ms": {**summary, "median": 54.5}, "decode_tok_s": summary}, "rounds": 3,
             "max_tokens": 32}
    results = {"sections": {"front": front}}
    table = report.tables(results)[0]  # then the targets table
    assert table.title == "Front cost" and [r[0] for r in table.rows] == ["straight to the upstream",
                                                                           "through the front"]
    assert table.rows[1][1].startswith("54.5")
    (row,) = report.targets(results)
    assert row[0].startswith("front adds to TTFT p50") and row[3] == "met"
    front["added_ttft_ms_p50"] = 12.0
    assert report.targets(results)[0][3] == "missed by 2 ms"

# -- against the real model ---------------------------------------------------------------
# llama-server on SmolLM2-135M logs "llama_kv_cache: size = 180.00 MiB (8192 cells, 30
# layers ...)": f16 K and V, 30 layers x 3 KV heads x 64 dims, per cell.
SMOLLM2_135M_KV_BYTES_PER_CELL = (180 << 20) // 8192  # bytes


def _positive(d: dict) -> bool:
    return d["n"] > 0 and all(d[k] > 0 for k in ("median", "p95", "p99", "min", "max"))


@pytest.mark.model
def test_serving_sections_real_numbers_and_report(chat_model_path: Path, model_home: Path, tmp_path: Path) -> None:
    """nanochat-lite beside a second nanochat-lite started from a --baseline-cmd template."""
    ps = [peers.nanochat(chat_model_path, 1, 1024), peers.baseline(BASELINE_CMD, chat_model_path, 1, 1024)]
    absent = {"llama-server": peers.NOT_INSTALLED["llama-server"]}
    sections = latency.run(chat_model_path, 1, peers=ps, absent=absent,
                           sections={"latency", "concurrency", "memory"}, requests=2, budget_s=120, levels=[1, 2],
                           per_client=1, time_box_s=120, home=model_home, max_tokens=16, log=lambda s: None)

    assert sections["latency"]["max_tokens"] == 16
    lat = sections["latency"]["peers"]["nanochat-lite"]
    assert (lat["completed"], lat["errors"]) == (2, 0)
    for key in ("ttft_ms", "total_ms", "decode_tok_s", "tokens"):
        assert _positive(lat[key]), key
    assert lat["ttft_ms"]["max"] < lat["total_ms"]["max"]

    conc = sections["concurrency"]
    assert set(conc["results"]) == {"nanochat-lite HTTP", "nanochat-lite (serial baseline) HTTP", "nanochat-lite WS"}
    for route, levels in conc["results"].items():
        assert set(levels) == {"1", "2"}
        for level, r in levels.items():
            assert (r["completed"], r["errors"], r["time_boxed"]) == (int(level), 0, False), (route, level)
            assert r["aggregate_tok_s"] > 0 and _positive(r["ttft_ms"])
            assert 0 < r["tokens"]["max"] <= 16
    assert conc["results"]["nanochat-lite HTTP"]["2"]["tokens_counted_by"] == "server usage"
    assert set(conc["ratios"]) == {"nanochat-lite / nanochat-lite (serial baseline)"}
    assert conc["absent"] == absent

    mem = sections["memory"]
    nano = mem["peers"]["nanochat-lite"]
    assert 0 < nano["idle_rss_bytes"] <= nano["peak_rss_bytes"]
    assert nano["load_max_rss_bytes"] > 0
    # The engine always reports its KV cache; llama-server's own log for this model (the
    # sample in test_kv_cache_size_reports) gives the size: 180 MiB for 8,192 cells. The
    # pool is 2 x --ctx-size cells.
    assert (nano["kv_cache_bytes"], nano["kv_cache_source"]) == (
        2 * 1024 * SMOLLM2_135M_KV_BYTES_PER_CELL, "/api/stats engine.kv_cache_bytes"), nano
    defaults = mem["defaults"]
    assert 0 < defaults["rss_bytes"] <= defaults["peak_rss_bytes"]
    assert (defaults["kv_cache_bytes"], defaults["kv_cache_source"]) == (
        2 * 4096 * SMOLLM2_135M_KV_BYTES_PER_CELL, "/api/stats engine.kv_cache_bytes"), defaults
    emb = mem["nanochat-lite + embeddings"]
    assert "error" not in emb, emb
    assert emb["rss_bytes"] > 0 and emb["peak_rss_bytes"] >= emb["rss_bytes"]

    header = suite.build_header(chat_model_path, model_home, 1, True, ["latency", "concurrency", "memory"])
    header.update(duration_s=1.0, load_average_end=0.0)
    results = json.loads(json.dumps({"header": header, "sections": sections}))  # what results.json holds
    assert len(results["header"]["model"]["sha256"]) == 64

    made = report.write(results, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# Nanochat-Lite benchmarks")
    for title in ("## End-to-end latency", "## Concurrency", "## Memory"):
        assert title in md
    assert "| nanochat-lite (default settings) |" in md
    assert "| nanochat-lite WS | 2 | 2/2 |" in md
    assert "| llama-server | not given (--llama-server PATH) |" in md
    assert "Aggregate tok/s nanochat-lite / nanochat-lite (serial baseline): 1 clients" in md
    for name in made.values():
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    text = report.text(results)
    assert "== Memory ==" in text and "nanochat-lite + embeddings" in text


@pytest.mark.model
def test_time_box_cuts_without_errors(chat_model_path: Path, tmp_path: Path) -> None:
    from nanochat_lite.tokenizer import Tokenizer

    ask = client.Ask(Tokenizer.from_gguf(chat_model_path).count, max_tokens=16)
    servers, failed = latency.start_servers([peers.nanochat(chat_model_path, 1, 1024)], tmp_path)
    assert failed == {}
    try:
        server = servers["nanochat-lite"]
        for transport in ("http", "ws"):
            r = latency.run_level(server, transport, 2, 3, 0.3, ask)
            assert r["time_boxed"] and r["errors"] == 0, r
            assert r["cut_by_time_box"] >= 1 and r["completed"] < r["planned"]
        # The server is still fine afterwards: cut streams were cancelled, not left hanging.
        after = latency.run_level(server, "http", 1, 1, 120, ask, first_prompt=100)
        assert (after["completed"], after["errors"]) == (1, 0)
    finally:
        latency.stop_servers(servers)


@pytest.mark.model
def test_bench_command_quick_with_absent_peers(chat_model_path: Path, model_home: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole command on tiny counts: cold start and concurrency beside a baseline, decode
    beside a stand-in llama-bench, fairness; llama-server not given and llama_cpp.server
    not installed, and the report says so."""
    from nanochat_lite.cli import main

    for name, value in (("COLD_RUNS", (1, 1)), ("DECODE_RUNS", (1, 1)), ("DECODE_TOKENS", (16, 16)),
                        ("LEVELS", [1, 2]), ("MAX_TOKENS", (8, 8)), ("FAIR_PROMPT_TOKENS", (200, 200)),
                        ("FAIR_STREAM_TOKENS", (24, 24)), ("FAIR_START_WAIT_S", (5.0, 5.0)),
                        ("FAIR_TIME_BOX_S", (120.0, 120.0))):
        monkeypatch.setattr(suite, name, value)
    monkeypatch.setattr(peers, "have_llama_cpp_server", lambda: False)
    monkeypatch.setattr(peers, "have_llama_cpp_python", lambda: False)
    rows = [{"n_prompt": 0, "n_gen": 128, "avg_ts": 50.0}]
    bench = _script(tmp_path / "llama-bench", f"echo '{json.dumps(rows)}'\n")
    out = tmp_path / "out"
    rc = main(["bench", "--quick", "--out", str(out), "--threads", "1", "--home", str(model_home),
               "--sections", "cold,decode,concurrency,fairness", "--llama-bench", str(bench),
               "--baseline-cmd", BASELINE_CMD.replace("--ctx-size {ctx}", "--ctx-size 1024")])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    s = results["sections"]
    for name in ("cold", "decode", "concurrency", "fairness"):
        assert "error" not in s[name], (name, s[name])

    assert s["cold"]["peer_order"] == ["nanochat-lite", "nanochat-lite (serial baseline)"]
    assert s["cold"]["llama-server"] == "not given (--llama-server PATH)"
    assert s["cold"]["llama_cpp.server"].startswith("not installed")
    assert set(s["cold"]["ratios"]) == {"nanochat-lite / nanochat-lite (serial baseline)"}

    assert s["decode"]["llama-bench tg128"]["median"] == 50.0
    assert s["decode"]["ratio_llama_bench"] == round(s["decode"]["nanochat-lite"]["median"] / 50.0, 3)
    assert s["decode"]["llama-cpp-python generate"].startswith("not installed")

    conc = s["concurrency"]
    assert set(conc["results"]) == {"nanochat-lite HTTP", "nanochat-lite (serial baseline) HTTP", "nanochat-lite WS"}
    assert conc["results"]["nanochat-lite HTTP"]["2"]["completed"] == 2
    assert conc["absent"] == {"llama-server": "not given (--llama-server PATH)",
                              "llama_cpp.server": "not installed (pip install 'llama-cpp-python[server]')"}

    fair = s["fairness"]
    assert fair["long_prompt_tokens"] >= 200 and fair["absent"] == {"llama-server": "not given (--llama-server PATH)"}
    nano = fair["peers"]["nanochat-lite"]
    assert nano["long_ttft_ms"] > 0 and nano["long_error"] == ""
    assert all(st["tokens"] > 0 and st["error"] == "" for st in nano["streams"])

    assert results["header"]["peers"]["llama-server"] == "not given (--llama-server PATH)"
    assert results["header"]["load_average_end"] >= 0
    md = (out / "report.md").read_text()
    for needle in ("## Fairness", "| llama-server | not given (--llama-server PATH) |",
                   "| llama_cpp.server | not installed", "| llama-bench tg128 | 50 (50–50) |"):
        assert needle in md, needle


@pytest.mark.model
def test_embeddings_memory_without_the_route(embedding_model_dir: Path, model_home: Path) -> None:
    """A server without /v1/embeddings: the Embedder is measured in a child process, and the row says so."""
    import http.server
    import threading

    from nanochat_lite.bench.memory import embeddings_memory

    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # 501 to everything
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        fake = SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_address[1]}", pid=os.getpid())
        r = embeddings_memory(fake, model_home, 1, ["one text", "another"])
    finally:
        httpd.shutdown()
        httpd.server_close()  # shutdown() only stops the loop; the listening socket stays open
    assert "separate" in r["how"] and "HTTP 501" in r["how"]
    assert r["peak_rss_bytes"] >= r["rss_bytes"] > 50 * 2**20  # the model alone is ~90 MB on disk
