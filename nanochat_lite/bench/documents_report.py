"""The documents section's tables (documents_bench.py measures it): today's figures
beside the previous run's, when there was one, and issue 21's two targets.

Every figure comes from results.json as measured; the previous ones are that run's own,
copied into this run's results under "previous" (nothing is recomputed).
"""

from __future__ import annotations

from typing import Any, Callable

from .table import Table

SEARCH_TARGET_MS = 50.0  # p95 at 100k chunks, at most (issue 21 item 3)
RECALL_TARGET = 0.9  # recall@5 of the hybrid search, mean over the question sets and phrasings, at least
STORES = (("sqlite", "SQLite"), ("postgresql", "PostgreSQL"))


def _g(v: Any, unit: str = "") -> str:
    return f"{v:g}{unit}" if isinstance(v, (int, float)) else "-"


def _ttft(d: Any) -> str:
    """'p50 (min–max), n turns' of a percentiles dict."""
    if not isinstance(d, dict) or not d.get("n"):
        return "-"
    return f"{d['median']:g} ({d['min']:g}–{d['max']:g}), {d['n']} turns"


def _failed(part: Any) -> str | None:
    return f"failed: {part['error']}" if isinstance(part, dict) and "error" in part else None


def _previous_note(r: dict[str, Any]) -> tuple[dict[str, Any], str]:
    p = r.get("previous")
    if not p:
        return {}, ("Previous figures: none (no earlier results.json with documents figures was given with "
                    "--previous or found in the output folder).")
    return p["figures"], f"Previous figures: the run of {p['date']}{' (--quick)' if p['quick'] else ''} ({p['from']})."


def _ingest(r: dict[str, Any], prev: dict[str, Any]) -> Table:
    now, old = r.get("ingest") or {}, prev.get("ingest") or {}
    t = Table("Documents: ingest", "", ["figure", "today", "previous"])
    if "pages" in now:
        t.note = (f"A {now['pages']}-page PDF of Python's documentation ({now['pdf_bytes']:,} bytes, "
                  f"{now['chapters']} chapters) uploaded to a real server (POST /api/documents); pages/s and "
                  "chunks/s from the request sent to the document ready; the PDF is parsed before the 202. "
                  f"First-token time: a streamed /api/chat turn of {now['answer_tokens']} tokens, ms from sending to "
                  "the first token, p50 (min–max); while indexing = turns started while the document was indexing "
                  f"(the chat goes first: the indexer waits between batches). {now['threads']} threads; load average "
                  f"{now['load_average']['idle']} idle, {now['load_average']['indexing']} at the upload, "
                  f"{now['load_average']['end']} at the end.")
    failed = _failed(now)
    if failed:
        return Table(t.title, "", t.header, [["ingest", failed, _failed(old) or ""]])
    pages = f" ({now.get('pages', '?')} pages)" if now.get("pages") == old.get("pages") or not old else (
        f" (today {now.get('pages')}, previous {old.get('pages')} pages)")
    rows: list[tuple[str, str, Callable[[Any], str]]] = [
        ("pages/s" + pages, "pages_per_s", _g), ("chunks/s", "chunks_per_s", _g), ("chunks", "chunks", _g),
        ("embedding batch size (chunks)", "batch_size", _g),
        ("upload answered 202 after (s)", "accepted_s", _g), ("indexed in (s)", "seconds", _g),
        ("first-token time idle (ms)", "ttft_idle_ms", _ttft),
        ("first-token time while indexing (ms)", "ttft_indexing_ms", _ttft)]
    for label, key, show in rows:
        t.rows.append([label, show(now.get(key)), show(old.get(key)) if old else "-"])
    return t


def _search(r: dict[str, Any], prev: dict[str, Any]) -> Table:
    now, old = r.get("search") or {}, prev.get("search") or {}
    t = Table("Documents: search latency", "", ["store", "chunks", "p50 / p95 ms", "previous p50 / p95 ms",
                                                "vectors loaded at start (s)"])
    failed = _failed(now)
    if failed:
        t.rows.append(["search", failed, "", "", ""])
        return t
    t.note = (f"Library.search (what POST /api/documents/search runs after embedding the query: full text and "
              f"vectors top 50 each, fused, the candidates' rows read and spread by section, the first "
              f"{now['k']} kept) over synthetic chunks of "
              f"{now['chunk_words']} Zipf-drawn words and random unit vectors; {now['queries']} searches per size, "
              "one owner, the query's embedding not timed. Load average "
              f"{now['load_average_start']}–{now['load_average_end']}.")
    if now.get("postgresql_version"):
        t.note += f" {now['postgresql_version']}, throwaway cluster, fsync off."
    for key, store in STORES:
        mine, theirs = now.get(key), old.get(key) if isinstance(old, dict) else None
        if isinstance(mine, str):
            t.rows.append([store, mine, "", "", ""])
            continue
        mine = mine or {}
        sizes = sorted({*mine, *(theirs if isinstance(theirs, dict) else {})}, key=int)
        for n in sizes:
            a = mine.get(n)
            b = theirs.get(n) if isinstance(theirs, dict) else None
            t.rows.append([store, f"{int(n):,}", f"{a['p50']:g} / {a['p95']:g}" if a else "not measured today",
                           f"{b['p50']:g} / {b['p95']:g}" if b else "-", _g(a["load_s"]) if a else ""])
    return t


def _retrieval(r: dict[str, Any], prev: dict[str, Any]) -> Table:
    now, old = r.get("retrieval") or {}, prev.get("retrieval") or {}
    methods = ("hybrid", "hybrid, other", "BM25 only", "vector only")
    t = Table("Documents: retrieval quality", "", ["questions", "n", "hybrid", f"hybrid, {now.get('other', 'other')}",
                                                   "BM25 only", "vector only", "previous hybrid / BM25 / vector"])
    failed = _failed(now)
    if failed:
        t.rows.append(["retrieval", failed, "", "", "", "", ""])
        return t
    t.note = (f"recall@{now['k']} on {now['corpus']} ({now['topics']} topics, {now['chunks']} chunks): the share "
              f"of questions with a chunk of the answering topic (section, for headings) in the top {now['k']}; "
              f"hybrid = the fusion Library.search runs in the server ({now['fusion']}), beside "
              "the fusion it ran before; the full-text half is retrieval.py's in-memory BM25, not the store's FTS5/tsvector. Mean "
              "over the phrasings asked (bench/retrieval.py has every phrasing and fusion).")

    def cells(d: Any, shown: tuple[str, ...] = ("hybrid", "BM25 only", "vector only")) -> list[str]:
        return [_g(d.get(m)) if isinstance(d, dict) else "-" for m in shown]

    old_sets = old.get("sets") or {}
    for name, s in now["sets"].items():
        t.rows.append([name, str(s["questions"]), *cells(s, methods),
                       " / ".join(cells(old_sets.get(name))) if old else "-"])
    t.rows.append(["mean", "", *cells(now["mean"], methods), " / ".join(cells(old.get("mean"))) if old else "-"])
    return t


def tables(r: dict[str, Any]) -> list[Table]:
    prev, note = _previous_note(r)
    out = [_ingest(r, prev), _search(r, prev), _retrieval(r, prev)]
    out[0].note = f"{out[0].note} {note}".strip()
    return out


def targets(r: Any, verdict: Callable[[bool, float, str], str]) -> list[list[str]]:
    """[what, bound, measured, verdict] rows for search at 100k chunks and hybrid recall@5."""
    if not isinstance(r, dict) or r.get("status") != "ok":
        return []
    rows = []
    search = r.get("search") or {}
    for key, store in STORES:
        at = search.get(key, {}).get("100000") if isinstance(search.get(key), dict) else None
        if at:
            rows.append([f"document search p95 at 100k chunks, {store}", f"≤ {SEARCH_TARGET_MS:g} ms",
                         f"{at['p95']:g} ms", verdict(at["p95"] <= SEARCH_TARGET_MS, at["p95"] - SEARCH_TARGET_MS,
                                                      " ms")])
    mean = (r.get("retrieval") or {}).get("mean")
    if isinstance(mean, dict) and "hybrid" in mean:
        v = mean["hybrid"]
        rows.append([f"documents: hybrid recall@5 (mean; {r['retrieval'].get('fusion', '?')})",
                     f"≥ {RECALL_TARGET:g}", f"{v:g}", verdict(v >= RECALL_TARGET, v - RECALL_TARGET, "")])
    return rows
