"""The `documents` section of `nanochat-lite bench`: issue 21's figures in one run.

    run(model, threads, ctx, home, sizes=..., previous=previous_figures(path)) -> JSON-ready dict

Three parts, each measured on its own (one that fails is its error; the others still run):
- ingest (docs_ingest.py): a long PDF uploaded to a real server, pages/s, chunks/s, the
  embedding batch size, and a chat turn's first-token time while it indexes vs idle;
- search (docs_search.py): `Library.search` p50/p95 at 1k/10k/100k chunks on SQLite and,
  when PostgreSQL can run here, on PostgreSQL;
- retrieval (retrieval.py's quality half): recall@5 on the pydoc_data questions for the
  server's hybrid fusion (convex, as Library.search fuses), reciprocal rank fusion beside it,
  BM25 alone and vectors alone (over retrieval.py's in-memory BM25, not the store's
  FTS5/tsvector the server reads).

Previous figures: the documents section of an earlier results.json (the one given with
`--previous`, else the output folder's own from the last run, read before it is
overwritten) is copied under "previous" with its date, so the report shows it beside
today's without needing the old file.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

SECTION = "documents"
# Library.search (what the server runs) fuses with search.py's convex() at its default
# weight and spreads the result by section (retrieval.SERVER); beside it, reciprocal rank
# fusion, which it used before.
SERVER_FUSION = "convex 0.7 vector, one chunk per section"
OTHER_FUSION = "rrf k=60"


def previous_figures(path: Path) -> dict[str, Any] | None:
    """{"from", "date", "quick", "figures"} from the results.json at `path` (or in the
    folder `path`), or None when there is none or it holds no documents figures.
    Raises ValueError when the file is there but is not a bench results.json."""
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        return None
    try:
        old = json.loads(file.read_text(encoding="utf-8"))
        header, section = old["header"], old["sections"].get(SECTION)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not a results.json written by `nanochat-lite bench` ({type(e).__name__}: {e})"
                         ) from None
    if not isinstance(section, dict) or section.get("status") != "ok":
        return None
    figures = {k: v for k, v in section.items() if k != "previous"}  # one generation back, not a chain
    return {"from": str(file), "date": header.get("date", "?"), "quick": bool(header.get("quick")),
            "figures": figures}


def retrieval_summary(quick: bool, model_dir: Path, threads: int | None) -> dict[str, Any]:
    """recall@5 of hybrid (the server's fusion, and RRF, which it used before), BM25
    only and vector only, per question set (mean over the phrasings asked) and over everything."""
    from ..embeddings import Embedder
    from . import retrieval

    q = retrieval.quality(quick, Embedder(model_dir, threads=threads), model_dir)
    names = {"hybrid": f"hybrid, {SERVER_FUSION}", "hybrid, other": f"hybrid, {OTHER_FUSION}",
             "BM25 only": "BM25 only", "vector only": "vector only"}
    sets: dict[str, Any] = {}
    for row in q["rows"]:
        sets.setdefault(row["set"], {"questions": row["questions"], "phrasings": 0, "_r": {m: [] for m in names}})
        sets[row["set"]]["phrasings"] += 1
        for label, method in names.items():
            sets[row["set"]]["_r"][label].append(row["methods"][method]["recall@5"])
    for s in sets.values():
        s.update({label: round(statistics.mean(values), 3) for label, values in s.pop("_r").items()})
    return {"corpus": q["corpus"], "topics": q["topics"], "chunks": q["chunks"], "fusion": SERVER_FUSION,
            "other": OTHER_FUSION,
            "k": retrieval.K, "sets": sets,
            "mean": {label: q["mean_recall@5"][method] for label, method in names.items()}}


def run(model: Path, threads: int, ctx: int, home: Path, *, quick: bool, pages: int, turns: int,
        sizes: Sequence[int], queries: int, serve_args: tuple[str, ...] = (),
        previous: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    from .. import models
    from . import docs_ingest, docs_search

    out: dict[str, Any] = {"status": "ok", "quick": quick}
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "ingest": lambda: docs_ingest.run(model, threads, ctx, home, pages=pages, turns=turns, serve_args=serve_args,
                                          log=log),
        "search": lambda: docs_search.run(sizes, queries, log=log),
        "retrieval": lambda: retrieval_summary(quick, models.ensure(home, models.DEFAULT_EMBEDDING), threads or None),
    }
    for name, measure in parts.items():
        log(f"  -- {name}")
        try:
            out[name] = measure()
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one part's failure is its row; the other parts' figures stay
            log(f"  {name} failed: {type(e).__name__}: {e}")
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    out["previous"] = previous
    return out
