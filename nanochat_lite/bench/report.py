"""Render bench results: one list of tables, printed as text or written as Markdown,
plus PNG plots when matplotlib is importable.

Every figure shown comes from `results.json` as measured; nothing is derived here but
ratios of two measured medians and pass/miss against the project's targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1 << 20
# The project's targets (issue 6): (what, measured value's key path, comparison, bound).
TARGETS = {
    "cold_first_token_ms": 600.0,  # nanochat-lite first token from process start, at most
    "cold_ratio": 0.45,  # nanochat-lite / llama_cpp.server first-token time, at most
    "decode_ratio": 0.95,  # nanochat-lite / raw llama-cpp-python generate tokens/s, at least
    "tokenizer_speedup": 5.0,  # ours / llama.cpp's tokenizer, at least
}


@dataclass
class Table:
    title: str
    note: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


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
def _cold(r: dict) -> list[Table]:
    t = Table("Cold start", f"Process start → /health 200 → first streamed token (OpenAI streaming request, "
              f"4 tokens), same GGUF and threads, servers alternating; median (min–max) of {r['runs']} runs.",
              ["server", "health 200", "first token"])
    for peer in ("nanochat-lite", "llama_cpp.server"):
        v = r.get(peer)
        if isinstance(v, dict):
            t.rows.append([peer, _r(v["health_s"], " ms"), _r(v["first_token_s"], " ms")])
        elif v:
            t.rows.append([peer, str(v), ""])
    t.rows.append(["transformers pipeline", r.get("transformers", "not installed"), ""])
    if "ratio_first_token" in r:
        t.note += (f" Ratio nanochat-lite / llama_cpp.server: first token {r['ratio_first_token']:.2f}×, "
                   f"health {r['ratio_health']:.2f}×.")
    return [t]


def _decode(r: dict) -> list[Table]:
    t = Table("Decode speed", f"Tokens/s between first and last token of a {r['n_tokens']}-token answer: "
              "nanochat-lite /api/chat (SSE) vs llama-cpp-python's own `Llama.generate` loop on the same prompt "
              f"tokens, alternating; median (min–max) of {r['runs']} runs. "
              f"Ratio nanochat-lite / raw generate: {r['ratio']:.3f}×.", ["peer", "tokens/s"])
    for peer in ("nanochat-lite", "llama-cpp-python generate"):
        t.rows.append([peer, _r(r[peer])])
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
    return [t]


def _concurrency(r: dict) -> list[Table]:
    n = r["requests_per_client"]
    t = Table("Concurrency", f"{', '.join(map(str, r['levels']))} simultaneous clients, each sending {n} streamed "
              f"request{'s' if n > 1 else ''} one after another (max_tokens {r['max_tokens']}); each run time-boxed "
              f"to {r['time_box_s']:.0f} s (answers still streaming then are cut). TTFT/total over completed "
              "requests, median / p95 in ms; aggregate tokens/s = all streamed answer tokens / wall time.",
              ["server, transport", "clients", "completed / planned", "TTFT p50 / p95", "total p50 / p95",
               "aggregate tok/s", "errors"])
    for route, levels in r["results"].items():
        for level, v in levels.items():
            ttft, tot = v["ttft_ms"], v["total_ms"]
            done = f"{v['completed']}/{v['planned']}" + (f" ({v['cut_by_time_box']} cut)" if v["cut_by_time_box"] else "")
            t.rows.append([route, level, done,
                           f"{ttft['median']:g} / {ttft['p95']:g}" if ttft.get("n") else "-",
                           f"{tot['median']:g} / {tot['p95']:g}" if tot.get("n") else "-",
                           f"{v['aggregate_tok_s']:g}", str(v["errors"])])
    return [t]


def _memory(r: dict) -> list[Table]:
    t = Table("Memory", "Server process RSS from /proc/PID/status: idle (model and nanochat-lite's tokenizer loaded, before any chat request), the "
              f"highest VmRSS sampled every 20 ms during the {r['load_clients']}-client HTTP load, and VmHWM "
              "(lifetime peak) at the end of the run. One measurement per server.",
              ["process", "idle RSS", f"max RSS, {r['load_clients']} clients", "peak (VmHWM)"])
    for name, v in r["peers"].items():
        t.rows.append([name, _mb(v["idle_rss_bytes"]), _mb(v["load_max_rss_bytes"]), _mb(v["peak_rss_bytes"])])
    e = r.get("nanochat-lite + embeddings", {})
    if "error" in e:
        t.rows.append(["nanochat-lite + embeddings", e["error"], "", ""])
    elif e:
        t.rows.append(["nanochat-lite + embeddings", _mb(e["rss_bytes"]), "", _mb(e["peak_rss_bytes"])])
        t.note += f" Embeddings row: {e['how']}."
    return [t]


def _embeddings(r: dict) -> list[Table]:
    if r.get("status") != "ok":
        return [Table("Embeddings", f"{r.get('status', 'not available')}: {r.get('reason', '')}", [])]
    t = Table("Embeddings", f"Sentences/s embedding 256 texts in calls of 1, 32 and 256 texts, {r['threads']} "
              f"threads; {r['method']}; median (min–max) of {r['rounds']} rounds.",
              ["engine", "batch 1", "batch 32", "batch 256", "first embedding from cold (s)"])
    for name, v in r["engines"].items():
        if isinstance(v, str):
            t.rows.append([name, v, "", "", ""])
        else:
            t.rows.append([name, _r(v.get("batch_1")), _r(v.get("batch_32")), _r(v.get("batch_256")),
                           _r(v.get("cold_load_s"))])
    return [t]


RENDERERS = {"cold": _cold, "decode": _decode, "tokenizer": _tokenizer, "latency": _latency,
             "concurrency": _concurrency, "memory": _memory, "embeddings": _embeddings}


def targets(results: dict) -> list[list[str]]:
    """[what, target, measured, verdict] for each target whose section ran."""
    s = results["sections"]
    rows = []
    cold = s.get("cold", {})
    if isinstance(cold.get("nanochat-lite"), dict):
        v = cold["nanochat-lite"]["first_token_s"]["median"]
        rows.append(["cold start first token", f"≤ {TARGETS['cold_first_token_ms']:g} ms", f"{v:g} ms",
                     _verdict(v <= TARGETS["cold_first_token_ms"], v - TARGETS["cold_first_token_ms"], " ms")])
    if "ratio_first_token" in cold:
        v = cold["ratio_first_token"]
        rows.append(["cold start vs llama_cpp.server", f"≤ {TARGETS['cold_ratio']}×", f"{v:.2f}×",
                     _verdict(v <= TARGETS["cold_ratio"], v - TARGETS["cold_ratio"], "×")])
    if "ratio" in s.get("decode", {}):
        v = s["decode"]["ratio"]
        rows.append(["decode vs raw llama-cpp-python generate", f"≥ {TARGETS['decode_ratio']}×", f"{v:.3f}×",
                     _verdict(v >= TARGETS["decode_ratio"], v - TARGETS["decode_ratio"], "×")])
    for name, v in s.get("tokenizer", {}).get("results", {}).items():
        if name.startswith("llama.cpp") and "our_speedup_encode" in v:
            worst = min(v["our_speedup_encode"], v["our_speedup_chat"])
            rows.append([f"tokenizer vs {name}", f"≥ {TARGETS['tokenizer_speedup']:g}×",
                         f"{v['our_speedup_encode']:.1f}× encode / {v['our_speedup_chat']:.1f}× chat",
                         _verdict(worst >= TARGETS["tokenizer_speedup"], worst - TARGETS["tokenizer_speedup"], "×")])
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
    versions = ", ".join(f"{k} {v}" for k, v in h["versions"].items())
    m = h["model"]
    return [f"Date: {h['date']}; took {h['duration_s']:.0f} s{' (--quick)' if h['quick'] else ''}",
            f"Machine: {h['cpu']}, {h['cores']} cores; threads used: {h['threads']}; context {h['ctx']} tokens",
            f"Load average (1 min): {h['load_average_start']:.2f} at start, {h['load_average_end']:.2f} at end "
            "(other processes share these cores)",
            f"Python {h['python']}; {versions}",
            f"Model: {m['name']} ({m['bytes']:,} bytes), sha256 {m['sha256']} ({m['sha256_source']})"]


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
    peers = [p for p in ("nanochat-lite", "llama_cpp.server") if isinstance(r.get(p), dict)]
    labels = [f"{p} {k}" for p in peers for k in ("health", "first token")]
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
    engines = {n: v for n, v in r.get("engines", {}).items() if isinstance(v, dict)}
    if not engines:
        return False
    labels = [f"{n}, batch {b}" for n in engines for b in (1, 32, 256)]
    _barh(fig.subplots(), labels, [engines[n][f"batch_{b}"] for n in engines for b in (1, 32, 256)],
          "sentences/s (median, min–max)")
    return True
