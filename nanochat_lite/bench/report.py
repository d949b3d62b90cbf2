"""Render bench results: one list of tables, printed as text or written as Markdown,
plus PNG plots when matplotlib is importable.

Every figure shown comes from `results.json` as measured; nothing is derived here but
ratios of two measured medians and pass/miss against the project's targets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import documents_report
from .table import Table

MB = 1 << 20
NANO = "nanochat-lite"
# The project's targets (issues 6 and 10).
TARGETS = {
    "cold_first_token_ms": 450.0,  # nanochat-lite first token from process start, at most (issue 10)
    "cold_ratio": 0.45,  # nanochat-lite / llama_cpp.server first-token time, at most (issue 6)
    "decode_ratio": 0.95,  # nanochat-lite / raw llama-cpp-python generate tokens/s, at least
    "tokenizer_speedup": 5.0,  # ours / llama.cpp's tokenizer, at least
    "chats_level": 10,  # simultaneous new conversations the next four are about
    "chats_vs_baseline": 1.8,  # aggregate tok/s, nanochat-lite / serial baseline, at least
    "chats_vs_llama_server": 1.0,  # aggregate tok/s, nanochat-lite / llama-server --parallel 10, at least
    "chats_ttft_p95_ms": 800.0,  # at most
    "fairness_gap_ms": 1000.0,  # longest gap between two tokens of a running stream, at most
    "front_added_ttft_ms": 10.0,  # TTFT p50 through --engine openai:URL minus straight to the upstream, at most
}


def _r(d: Any, unit: str = "") -> str:
    """'median (min–max)' of a summary dict; '-' when there is none."""
    if not isinstance(d, dict) or not d.get("n"):
        return "-"
    return f"{d['median']:g}{unit} ({d['min']:g}–{d['max']:g})"


def _p(d: Any) -> str:
    """'p50 / p95 / p99' of a percentiles dict."""
    if not isinstance(d, dict) or not d.get("n"):
        return "-"
    return f"{d['median']:g} / {d['p95']:g} / {d['p99']:g}"


def _mb(n: int | None) -> str:
    return f"{n / MB:.0f} MB" if n else "-"


# -- tables per section --------------------------------------------------------------
def _absent_rows(r: dict, width: int) -> list[list[str]]:
    """One row per peer that was not given, not installed or failed to start."""
    return [[name, why, *[""] * (width - 2)] for name, why in (r.get("absent") or {}).items()]


def _ratio_text(ratios: dict[str, float], unit: str = "×") -> str:
    return ", ".join(f"{pair} {v:.2f}{unit}" for pair, v in ratios.items())


def _cold(r: dict) -> list[Table]:
    t = Table("Cold start", f"Process start → ready (200 from the server's readiness route) → first streamed token "
              f"(OpenAI streaming request, 4 tokens), same GGUF and threads, servers alternating; median (min–max) "
              f"of {r['runs']} runs. llama-server runs with its own defaults.",
              ["server", "ready", "first token"])
    order = r.get("peer_order") or [p for p in (NANO, "llama_cpp.server") if isinstance(r.get(p), dict)]
    for peer in order:
        v = r[peer]
        t.rows.append([peer, _r(v["health_s"], " ms"), _r(v["first_token_s"], " ms")])
    for peer in ("nanochat-lite (serial baseline)", "llama-server", "llama_cpp.server"):
        if isinstance(r.get(peer), str):
            t.rows.append([peer, r[peer], ""])
    t.rows.append(["transformers pipeline", r.get("transformers", "not installed"), ""])
    ratios = {pair: v["first_token"] for pair, v in (r.get("ratios") or {}).items()}
    if ratios:
        t.note += f" First-token ratios: {_ratio_text(ratios)}."
    return [t]


def _decode(r: dict) -> list[Table]:
    t = Table("Decode speed", f"Tokens/s of one stream: nanochat-lite between the first and last token of a "
              f"{r['n_tokens']}-token answer through /api/chat (SSE); llama-bench's `-p 0 -n 128` text-generation "
              "figure (no server, no sampling); llama-cpp-python's own `Llama.generate` loop on the same prompt. "
              f"Alternating round by round; median (min–max) of {r['runs']} runs.", ["peer", "tokens/s"])
    for peer in (NANO, "llama-bench tg128", "llama-cpp-python generate"):
        v = r.get(peer)
        if v is not None:
            t.rows.append([peer, _r(v) if isinstance(v, dict) else str(v)])
    ratios = {f"{NANO} / {label}": r[key] for key, label in (("ratio_llama_bench", "llama-bench tg128"),
                                                              ("ratio_llama_cpp_python", "llama-cpp-python generate"))
              if key in r}
    if ratios:
        t.note += f" Ratios: {_ratio_text(ratios)}."
    return [t]


def _tokenizer(r: dict) -> list[Table]:
    t = Table("Tokenization", f"{r['text_bytes'] / 1e6:.2f} MB of generated mixed-script text in {r['lines']:,} "
              f"lines, and a {r['chat_message_words']}-word chat message ({r['chat_message_tokens']} tokens); "
              f"{r['method']} (the least-disturbed run, as the tokenizer bench reports it; no median). "
              "'ours is ×' = our rate / theirs. 'same ids' compares with ours, which match llama.cpp's; raw tiktoken "
              "differs where ours drops bytes the vocabulary lacks (as llama.cpp does) or where the GPT-2 pattern "
              "splits text differently.",
              ["tokenizer", "encode MB/s", "chat msg/s", "ours is × (encode / chat)", "same ids", "what"])
    for name, v in r["results"].items():
        if "encode_mb_s" not in v:
            t.rows.append([name, next(iter(v.values())), "", "", "", ""])
            continue
        ratio = "—" if name == "nanochat-lite" else f"{v['our_speedup_encode']:.1f}× / {v['our_speedup_chat']:.1f}×"
        equal = "yes" if v["ids_equal"] else f"no ({v['mismatched_lines']} lines)"
        t.rows.append([name, f"{v['encode_mb_s']:.2f}", f"{v['chat_per_s']:,.0f}", ratio, equal, v["note"]])
    for name, why in (r.get("unavailable") or {}).items():  # not installed, or its child crashed
        t.rows.append([name, why, "", "", "", ""])
    return [t]


def _latency(r: dict) -> list[Table]:
    t = Table("End-to-end latency", f"Up to {r['planned_per_server']} streamed chat requests per server (no new one "
              f"after {r['budget_s']:.0f} s), one at a time, alternating servers; {r['prompts']} varied user prompts "
              f"cycled, max_tokens {r['max_tokens']}, greedy; {r['transport']}. Times in ms from sending the request; "
              "percentiles are nearest-rank over completed requests.",
              ["server", "requests", "TTFT p50 / p95 / p99", "total p50 / p95 / p99", "decode tok/s median (min–max)",
               "answer tokens median (min–max)", "errors"])
    for name, v in r["peers"].items():
        t.rows.append([name, str(v["completed"]), _p(v["ttft_ms"]), _p(v["total_ms"]), _r(v["decode_tok_s"]),
                       _r(v["tokens"]), str(v["errors"])])
    t.rows += _absent_rows(r, len(t.header))
    return [t]


def _concurrency(r: dict) -> list[Table]:
    n = r["requests_per_client"]
    each = "one new conversation" if n == 1 else f"{n} new conversations one after another"
    t = Table("Concurrency", f"{', '.join(map(str, r['levels']))} simultaneous clients, each sending {each} (a "
              f"distinct prompt, so no prompt-cache hits; max_tokens {r['max_tokens']}, streamed); each run "
              f"time-boxed to {r['time_box_s']:.0f} s (answers still streaming then are cut). TTFT (send → first "
              "content) and total over completed requests, p50 / p95 in ms; aggregate tokens/s = all completion "
              "tokens / wall time from the first request sent to the last finished.",
              ["server, transport", "clients", "completed / planned", "TTFT p50 / p95", "total p50 / p95",
               "aggregate tok/s", "errors", "tokens counted by"])
    for route, levels in r["results"].items():
        for level, v in levels.items():
            ttft, tot = v["ttft_ms"], v["total_ms"]
            done = f"{v['completed']}/{v['planned']}"
            if v["cut_by_time_box"]:
                done += f" ({v['cut_by_time_box']} cut)"
            t.rows.append([route, level, done,
                           f"{ttft['median']:g} / {ttft['p95']:g}" if ttft.get("n") else "-",
                           f"{tot['median']:g} / {tot['p95']:g}" if tot.get("n") else "-",
                           f"{v['aggregate_tok_s']:g}", str(v["errors"]), v.get("tokens_counted_by", "")])
    t.rows += _absent_rows(r, len(t.header))
    for pair, by_level in (r.get("ratios") or {}).items():
        t.note += f" Aggregate tok/s {pair}: " + ", ".join(f"{lv} clients {v:.2f}×" for lv, v in by_level.items()) + "."
    return [t]


def _memory(r: dict) -> list[Table]:
    t = Table("Memory", "Server process RSS from /proc/PID/status: idle (model and nanochat-lite's tokenizer loaded, "
              f"before any chat request), the highest VmRSS sampled every 20 ms during the {r['load_clients']} "
              "simultaneous new chats (HTTP), and VmHWM (lifetime peak) at the end of the run; the KV cache the "
              "server allocated with these settings, as it reports it. One measurement per server.",
              ["process", "idle RSS", f"max RSS, {r['load_clients']} chats", "peak (VmHWM)", "KV cache"])
    for name, v in r["peers"].items():
        kv = _mb(v["kv_cache_bytes"]) if v.get("kv_cache_bytes") else v.get("kv_cache_source", "not reported")
        t.rows.append([name, _mb(v["idle_rss_bytes"]), _mb(v["load_max_rss_bytes"]), _mb(v["peak_rss_bytes"]), kv])
    d = r.get("defaults")
    if d and "error" in d:
        t.rows.append(["nanochat-lite (default settings)", d["error"], "", "", ""])
    elif d:
        kv = _mb(d["kv_cache_bytes"]) if d.get("kv_cache_bytes") else d.get("kv_cache_source", "not reported")
        t.rows.append(["nanochat-lite (default settings)", _mb(d["rss_bytes"]), "", _mb(d["peak_rss_bytes"]), kv])
        t.note += (" The default-settings row is a plain `nanochat-lite serve` (no --ctx-size, no --serve-args), "
                   "idle, for what the defaults allocate.")
    e = r.get("nanochat-lite + embeddings", {})
    if "error" in e:
        t.rows.append(["nanochat-lite + embeddings", e["error"], "", "", ""])
    elif e:
        t.rows.append(["nanochat-lite + embeddings", _mb(e["rss_bytes"]), "", _mb(e["peak_rss_bytes"]), ""])
        t.note += f" Embeddings row: {e['how']}."
    t.rows += _absent_rows(r, len(t.header))
    sources = {v.get("kv_cache_source") for v in r["peers"].values() if v.get("kv_cache_bytes")}
    if sources:
        t.note += f" KV cache from: {'; '.join(sorted(sources))}."
    return [t]


def _fairness(r: dict) -> list[Table]:
    t = Table("Fairness", f"{r['streams']} streams generating (up to {r['stream_max_tokens']} tokens each) when "
              f"one client sends a new conversation of {r['long_prompt_tokens']} tokens of message text (distinct "
              "sentences in a few user turns); each stream's longest gap between two streamed tokens in ms, over "
              "its whole life and while the long prompt was read (sent → its first token). One run per server.",
              ["server", "streams generating when sent", "longest gap per stream", "longest gap while read",
               "max gap", "long prompt TTFT", "its prompt tokens (server's count)", "errors"])
    for name, v in r["peers"].items():
        if "error" in v and "streams" not in v:
            t.rows.append([name, v["error"], *[""] * (len(t.header) - 2)])
            continue
        gaps = " / ".join(f"{s['max_gap_ms']:g}" if s["max_gap_ms"] is not None else "-" for s in v["streams"])
        during = " / ".join(f"{s['max_gap_while_long_prompt_read_ms']:g}"
                            if s["max_gap_while_long_prompt_read_ms"] is not None else "-" for s in v["streams"])
        errors = "; ".join(e for e in [v["long_error"], *(s["error"] for s in v["streams"])] if e) or "0"
        t.rows.append([name, f"{v['streams_generating_when_sent']}/{len(v['streams'])}", gaps, during,
                       f"{v['max_gap_ms']:g} ms" if v["max_gap_ms"] is not None else "-",
                       f"{v['long_ttft_ms']:g} ms" if v["long_ttft_ms"] is not None else "-",
                       str(v.get("long_prompt_tokens_by_server") or "-"), errors])
    t.rows += _absent_rows(r, len(t.header))
    return [t]


def _embeddings(r: dict) -> list[Table]:
    if r.get("status") != "ok":
        return [Table("Embeddings", f"{r.get('status', 'not available')}: {r.get('reason', '')}", [])]
    cos = r["min_cosine"]
    cos_text = "; ".join(f"{k}: {v:.6f}" for k, v in cos.items()) if isinstance(cos, dict) else cos
    t = Table("Embeddings", f"Sentences/s, {r['threads'] or 'default'} threads, median (min–max); {r['method']}; "
              f"load average {r['load_average']['start']}–{r['load_average']['end']}. Minimum cosine between "
              f"the two engines' vectors of one text: {cos_text}.",
              ["input", "batch", "nanochat-lite (ONNX Runtime)", "sentence-transformers",
               "ours / theirs, medians (bests)"])
    for row in r["rows"]:
        cells = [v if isinstance(v, str) else _r(v) for v in (row["nanochat-lite"], row["sentence-transformers"])]
        ratio = f"{row['ratio_median']:g}x ({row['ratio_best']:g}x)" if row["ratio_median"] else "-"
        t.rows.append([row["input"], str(row["batch"]), *cells, ratio])
    cold = [v["cold_load_s"] if isinstance(v, dict) else v for v in (r["engines"].get("nanochat-lite"),
                                                                    r["engines"].get("sentence-transformers"))]
    t.rows.append(["first embedding from cold (s)", "", *[v if isinstance(v, str) else _r(v) for v in cold], ""])
    return [t]


def _front(r: dict) -> list[Table]:
    t = Table("Front cost", f"The same streamed /v1/chat/completions ({r['max_tokens']} tokens), asked alternately "
              "straight of an upstream nanochat-lite and of a front started with --engine openai:URL before it; "
              f"{r['rounds']} requests each, one at a time. TTFT p50 added by the front: "
              f"{r['added_ttft_ms_p50']} ms.", ["path", "TTFT ms (median, min–max)", "decode tok/s"])
    for name, label in (("direct", "straight to the upstream"), ("front", "through the front")):
        t.rows.append([label, _r(r[name]["ttft_ms"]), _r(r[name]["decode_tok_s"])])
    return [t]


def _retrieval(r: dict) -> list[Table]:
    q, lat = r["quality"], r["latency"]
    methods = list(q["mean_recall@5"])
    t = Table("Retrieval quality", f"recall@5 on {q['corpus']}: {q['topics']} topics, {q['chunks']} chunks of "
              f"{q['chunk_tokens']} pieces (overlap {q['overlap']}); questions from pydoc's own tables (help names, "
              f"topic keys) and the topics' section headings; {q['candidates']} candidates per half. "
              f"Best hybrid on the mean: {q['best_hybrid']}.", ["questions", "phrasing", *methods])
    for row in q["rows"]:
        t.rows.append([f"{row['set']} ({row['questions']})", row["template"],
                       *[f"{row['methods'][m]['recall@5']:.3f}" for m in methods]])
    t.rows.append(["mean", "", *[f"{q['mean_recall@5'][m]:.3f}" for m in methods]])
    misses = Table("Retrieval misses", f"The first help-name questions (first phrasing) without a chunk of their "
                   "topic in the default hybrid's top 5, and what came back (topic, vector rank / BM25 rank).",
                   ["question", "wanted", "got"])
    for m in q["miss_examples"]:
        got = "; ".join(f"{h['topic']} (v{h['vector_rank'] or '-'}/t{h['text_rank'] or '-'})" for h in m["got"])
        misses.rows.append([m["question"], f"{m['expected']}: {m['expected_opens']}", got])
    speed = Table("Search latency", f"ms per search, the query's embedding apart (p50 {lat['embed_query']['p50']}, "
                  f"p95 {lat['embed_query']['p95']}); load average {r['load_average_start']:.2f} at start, "
                  f"{r['load_average_end']:.2f} at end.",
                  ["chunks", "vector p50 / p95", "BM25 p50 / p95", "hybrid p50 / p95", "BM25 build (s)"])
    for n, row in lat["sizes"].items():
        speed.rows.append([f"{int(n):,}", *[f"{row[h]['p50']:g} / {row[h]['p95']:g}" for h in ("vector", "bm25",
                                                                                             "hybrid")],
                           f"{row['bm25_build_s']:g}"])
    return [t, misses, speed] if misses.rows else [t, speed]


RENDERERS = {"cold": _cold, "decode": _decode, "tokenizer": _tokenizer, "latency": _latency,
             "concurrency": _concurrency, "memory": _memory, "fairness": _fairness, "embeddings": _embeddings,
             "front": _front, "retrieval": _retrieval, "documents": documents_report.tables}


def targets(results: dict) -> list[list[str]]:
    """[what, target, measured, verdict] for each target whose section ran."""
    s = results["sections"]
    rows = []
    cold = s.get("cold", {})
    if isinstance(cold.get(NANO), dict):
        v = cold[NANO]["first_token_s"]["median"]
        rows.append(["cold start first token", f"≤ {TARGETS['cold_first_token_ms']:g} ms", f"{v:g} ms",
                     _verdict(v <= TARGETS["cold_first_token_ms"], v - TARGETS["cold_first_token_ms"], " ms")])
    for pair, v in (cold.get("ratios") or {}).items():
        if pair.endswith("llama_cpp.server"):
            rows.append([f"cold start {pair}", f"≤ {TARGETS['cold_ratio']}×", f"{v['first_token']:.2f}×",
                         _verdict(v["first_token"] <= TARGETS["cold_ratio"], v["first_token"] - TARGETS["cold_ratio"],
                                  "×")])
        else:
            rows.append([f"cold start {pair}", "report", f"{v['first_token']:.2f}×", "—"])
    decode = s.get("decode", {})
    if "ratio_llama_cpp_python" in decode:
        v = decode["ratio_llama_cpp_python"]
        rows.append(["decode vs raw llama-cpp-python generate", f"≥ {TARGETS['decode_ratio']}×", f"{v:.3f}×",
                     _verdict(v >= TARGETS["decode_ratio"], v - TARGETS["decode_ratio"], "×")])
    if "ratio_llama_bench" in decode:
        rows.append(["decode vs llama-bench tg128", "report", f"{decode['ratio_llama_bench']:.3f}×", "—"])
    rows += _chat_targets(s.get("concurrency", {}))
    fair = s.get("fairness", {}).get("peers", {}).get(NANO, {})
    if fair.get("max_gap_ms") is not None:
        v, bound = fair["max_gap_ms"], TARGETS["fairness_gap_ms"]
        rows.append([f"fairness: longest gap while a {s['fairness']['long_prompt_tokens']}-token prompt arrives",
                     f"≤ {bound:g} ms", f"{v:g} ms", _verdict(v <= bound, v - bound, " ms")])
    added = s.get("front", {}).get("added_ttft_ms_p50")
    if added is not None:
        bound = TARGETS["front_added_ttft_ms"]
        rows.append(["front adds to TTFT p50 (--engine openai:URL)", f"≤ {bound:g} ms", f"{added:g} ms",
                     _verdict(added <= bound, added - bound, " ms")])
    rows += documents_report.targets(s.get("documents"), _verdict)
    for name, v in s.get("tokenizer", {}).get("results", {}).items():
        if name.startswith("llama.cpp") and "our_speedup_encode" in v:
            worst = min(v["our_speedup_encode"], v["our_speedup_chat"])
            rows.append([f"tokenizer vs {name}", f"≥ {TARGETS['tokenizer_speedup']:g}×",
                         f"{v['our_speedup_encode']:.1f}× encode / {v['our_speedup_chat']:.1f}× chat",
                         _verdict(worst >= TARGETS["tokenizer_speedup"], worst - TARGETS["tokenizer_speedup"], "×")])
    return rows


def _chat_targets(conc: dict) -> list[list[str]]:
    level = str(TARGETS["chats_level"])
    ours = conc.get("results", {}).get(f"{NANO} HTTP", {}).get(level)
    if not ours:
        return []
    rows = [[f"{level} simultaneous new chats completed", f"{level}/{level}", f"{ours['completed']}/{ours['planned']}",
             _verdict(ours["completed"] == int(level), ours["completed"] - int(level), "")]]
    for other, key in (("nanochat-lite (serial baseline)", "chats_vs_baseline"),
                       ("llama-server", "chats_vs_llama_server")):
        v = conc.get("ratios", {}).get(f"{NANO} / {other}", {}).get(level)
        if v is not None:
            rows.append([f"{level} chats aggregate tok/s vs {other}", f"≥ {TARGETS[key]:g}×", f"{v:.2f}×",
                         _verdict(v >= TARGETS[key], v - TARGETS[key], "×")])
    p95 = ours["ttft_ms"].get("p95")
    if p95 is not None:
        bound = TARGETS["chats_ttft_p95_ms"]
        rows.append([f"{level} chats TTFT p95", f"≤ {bound:g} ms", f"{p95:g} ms",
                     _verdict(p95 <= bound, p95 - bound, " ms")])
    return rows


def _verdict(ok: bool, delta: float, unit: str) -> str:
    return "met" if ok else f"missed by {abs(delta):.2f}{unit}".replace(".00 ms", " ms")


def tables(results: dict) -> list[Table]:
    out = []
    for name, r in results["sections"].items():
        if isinstance(r, dict) and "error" in r and len(r) == 1:
            out.append(Table(name, f"failed: {r['error']}", []))
        else:
            out.extend(RENDERERS[name](r))
    rows = targets(results)
    if rows:
        out.append(Table("Targets", "Medians above against the project's targets.",
                         ["target", "bound", "measured", "verdict"], rows))
    return out


def header_lines(h: dict) -> list[str]:
    """The run's identity. Before the run ends `duration_s` and `load_average_end` are None."""
    versions = ", ".join(f"{k} {v}" for k, v in h["versions"].items())
    m = h["model"]
    took = f"; took {h['duration_s']:.0f} s" if h.get("duration_s") is not None else ""
    end = f", {h['load_average_end']:.2f} at end" if h.get("load_average_end") is not None else ""
    lines = [f"Date: {h['date']}{took}{' (--quick)' if h['quick'] else ''}",
             f"Machine: {h['cpu']}, {h['cores']} cores; threads used: {h['threads']}; context {h['ctx']} tokens",
             f"Load average (1 min): {h['load_average_start']:.2f} at start{end} (other processes share these cores)",
             f"Python {h['python']}; {versions}",
             f"Model: {m['name']} ({m['bytes']:,} bytes), sha256 {m['sha256']} ({m['sha256_source']})"]
    if h.get("llama_cpp"):
        lines.append(llama_cpp_line(h["llama_cpp"]))
    peers = h.get("peers") or {}
    if peers:
        lines.append("Peers: " + "; ".join(f"{k}: {v}" for k, v in peers.items() if k != "python"))
    return lines


def llama_cpp_line(b: dict) -> str:
    """"llama.cpp: xllamacpp 1.2, prebuilt wheel (...), GNU 10.2.1; instruction sets AVX AVX2 (also
    OPENMP); this CPU offers avx2 avx512f" — which build the figures come from."""
    head = f"llama.cpp: xllamacpp {b.get('xllamacpp', '?')}, {b.get('build', '?')}"
    if "error" in b:
        body = f"; its system info: {b['error']}"
    else:
        switches = f" (also {' '.join(b['switches'])})" if b.get("switches") else ""
        body = (f", compiler {b.get('compiler', 'unknown')}; instruction sets used: "
                f"{' '.join(b.get('instruction_sets') or []) or 'none reported'}{switches}")
    cpu = f"; this CPU offers {' '.join(b['cpu_simd'])}" if b.get("cpu_simd") else ""
    gil = "; Server() loads without the GIL (scripts/xllamacpp_nogil.py)" if b.get("load_releases_gil") else ""
    return head + body + gil + cpu


# -- text and Markdown -----------------------------------------------------------------
def text(results: dict) -> str:
    lines = header_lines(results["header"])
    for t in tables(results):
        lines += ["", f"== {t.title} ==", t.note]
        if not t.header:
            continue
        widths = [max(len(str(row[i])) for row in [t.header, *t.rows]) for i in range(len(t.header))]
        for row in [t.header, ["-" * w for w in widths], *t.rows]:
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def markdown(results: dict, plots: dict[str, str], plot_note: str = "") -> str:
    out = ["# Nanochat-Lite benchmarks", "", *(f"- {line}" for line in header_lines(results["header"])), "",
           "Produced by `nanochat-lite bench`; raw numbers in `results.json`. Every figure is measured on the "
           "machine above; nothing is estimated. A peer that is not installed says so.", ""]
    if plot_note:
        out += [plot_note, ""]
    for t in tables(results):
        out += [f"## {t.title}", "", t.note, ""]
        if t.header:
            out.append("| " + " | ".join(t.header) + " |")
            out.append("|" + "---|" * len(t.header))
            out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in t.rows]
            out.append("")
        key = next((k for k, title in PLOT_TITLES.items() if title == t.title), None)
        if key in plots:
            out += [f"![{t.title}]({plots[key]})", ""]
    return "\n".join(out)


# -- plots ---------------------------------------------------------------------------------
PLOT_TITLES = {"cold": "Cold start", "latency": "End-to-end latency", "concurrency": "Concurrency",
               "tokenizer": "Tokenization", "memory": "Memory", "embeddings": "Embeddings"}


def plots(results: dict, out_dir: Path) -> tuple[dict[str, str], str]:
    """Write one PNG per section that has numbers; returns ({section: file name}, note)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}, "Plots skipped: matplotlib is not installed (`pip install 'nanochat-lite[bench]'`)."
    s = results["sections"]
    made: dict[str, str] = {}
    failed: list[str] = []
    for key, draw in (("cold", _plot_cold), ("latency", _plot_latency), ("concurrency", _plot_concurrency),
                      ("tokenizer", _plot_tokenizer), ("memory", _plot_memory), ("embeddings", _plot_embeddings)):
        r = s.get(key)
        if not isinstance(r, dict) or ("error" in r and len(r) == 1):
            continue
        fig = plt.figure(figsize=(7.5, 3.6))
        try:
            if draw(fig, r) is False:
                continue
            fig.suptitle(PLOT_TITLES[key])
            for ax in fig.axes:
                ax.grid(axis="x" if key in ("tokenizer", "cold", "embeddings") else "y", alpha=0.3)
            fig.tight_layout()
            fig.savefig(out_dir / f"{key}.png", dpi=110)
            made[key] = f"{key}.png"
        except (KeyError, TypeError, ValueError) as e:  # a partial section: the tables still say it all
            failed.append(f"{key} ({type(e).__name__}: {e})")
        finally:
            plt.close(fig)
    return made, (f"Plots not drawn for: {'; '.join(failed)}." if failed else "")


def write(results: dict, out_dir: Path) -> dict[str, str]:
    """Plots and report.md into out_dir (results.json is the caller's); returns the plots made."""
    made, note = plots(results, out_dir)
    tmp = out_dir / "report.md.tmp"
    tmp.write_text(markdown(results, made, note), encoding="utf-8")
    tmp.replace(out_dir / "report.md")
    return made


def _barh(ax: Any, labels: list[str], summaries: list[dict], unit: str) -> None:
    """Horizontal bars at the median, whiskers from min to max."""
    med = [d["median"] for d in summaries]
    err = [[m - d["min"] for m, d in zip(med, summaries)], [d["max"] - m for m, d in zip(med, summaries)]]
    ax.barh(labels, med, xerr=err, capsize=4, color="#4c78a8")
    ax.invert_yaxis()
    ax.set_xlabel(unit)


def _plot_cold(fig: Any, r: dict) -> bool:
    peers = r.get("peer_order") or [p for p in (NANO, "llama_cpp.server") if isinstance(r.get(p), dict)]
    labels = [f"{p} {k}" for p in peers for k in ("ready", "first token")]
    _barh(fig.subplots(), labels, [r[p][k] for p in peers for k in ("health_s", "first_token_s")],
          "ms from process start (median, min–max)")
    return True


def _plot_latency(fig: Any, r: dict) -> bool:
    names = list(r["peers"])
    qs = ("median", "p95", "p99")
    for ax, (label, key) in zip(fig.subplots(1, 2), (("time to first token", "ttft_ms"), ("total", "total_ms"))):
        for i, name in enumerate(names):
            ax.bar([j + i * 0.4 for j in range(len(qs))], [r["peers"][name][key].get(q, 0) for q in qs], 0.4,
                   label=name)
        ax.set_xticks([j + 0.2 * (len(names) - 1) for j in range(len(qs))], ["p50", "p95", "p99"])
        ax.set_ylabel(f"{label}, ms")
    fig.axes[0].legend(fontsize=7)
    return True


def _plot_concurrency(fig: Any, r: dict) -> bool:
    tput, ttft = fig.subplots(1, 2)
    for route, levels in r["results"].items():
        clients = [int(c) for c in levels]
        tput.plot(clients, [v["aggregate_tok_s"] for v in levels.values()], marker="o", label=route)
        ttft.plot(clients, [v["ttft_ms"].get("median", float("nan")) for v in levels.values()], marker="o")
    tput.set_ylabel("aggregate tokens/s")
    ttft.set_ylabel("TTFT p50, ms")
    for ax in (tput, ttft):
        ax.set_xlabel("simultaneous clients")
        ax.set_xticks([int(c) for c in r["levels"]])
    tput.legend(fontsize=7)
    return True


def _plot_tokenizer(fig: Any, r: dict) -> bool:
    ax = fig.subplots()
    items = [(n, v["chat_per_s"]) for n, v in r["results"].items() if "chat_per_s" in v]
    ax.barh([n for n, _ in items], [v for _, v in items], color="#4c78a8")
    ax.invert_yaxis()
    ax.set_xlabel("chat messages tokenized per second (one thread)")
    return True


def _plot_memory(fig: Any, r: dict) -> bool:
    ax = fig.subplots()
    names = list(r["peers"])
    keys = [("idle", "idle_rss_bytes"), (f"max during {r['load_clients']} clients", "load_max_rss_bytes"),
            ("peak (VmHWM)", "peak_rss_bytes")]
    for j, (label, key) in enumerate(keys):
        ax.bar([i + j * 0.27 for i in range(len(names))], [r["peers"][n][key] / MB for n in names], 0.27, label=label)
    ax.set_xticks([i + 0.27 for i in range(len(names))], names)
    ax.set_ylabel("RSS, MB")
    ax.legend(fontsize=7, loc="lower right")
    return True


def _plot_embeddings(fig: Any, r: dict) -> bool:
    bars = [(f"{name}, {row['input']}, batch {row['batch']}", row[name]) for row in r.get("rows", [])
            for name in ("nanochat-lite", "sentence-transformers") if isinstance(row.get(name), dict)]
    if not bars:
        return False
    _barh(fig.subplots(), [b[0] for b in bars], [b[1] for b in bars], "sentences/s (median, min–max)")
    return True
