"""Documents: retrieval quality on a public labelled set, and in-memory search latency.

    .venv/bin/python -m nanochat_lite.bench.retrieval [--quick] [--json]

Quality. The corpus is Python's own reference documentation as the standard library
ships it for `help()`: `pydoc_data.topics.topics`, 79 topic texts here (about 465k
characters, a few hundred printed pages), each parsed as a text file and chunked as an
upload would be (documents/parse.py, documents/chunk.py: 200 pieces, overlap 32).
The questions and their answers come from the data, not from us. Two sets:
- "help names": `pydoc.Helper.keywords` and `pydoc.Helper.topics` map every name
  `help()` accepts ("lambda", "elif", "TRUTHVALUE", "DYNAMICFEATURES"...) to the label
  of the topic text that answers it, directly or through another name ("elif" -> "if"),
  resolved exactly as `help(name)` resolves it (upper-case topic names lower-cased).
  Names whose entry is empty ("True", "None") are skipped and counted.
- "topic keys": each label of `pydoc_data.topics.topics` itself, hyphens read as
  spaces ("typesseq-mutable" -> "typesseq mutable").
- "section headings" (built as TREC Complex Answer Retrieval builds its queries): each
  distinct heading the parser finds in the topics (their reStructuredText titles, like
  "Binary arithmetic operations") asks for the chunks under that heading, searched in
  a second index of the same chunks without their headings.
Each name becomes a question through each fixed phrasing of `TEMPLATES`; the relevant
chunks are the chunks of the topic with that label (of the section, for headings). recall@k is the share of questions
with at least one relevant chunk among the first k results; MRR the mean of 1/rank of
the first one (0 past 10). Fusions are compared on every set and phrasing; the mean
recall@5 over all of them picks the default (documents/search.py). The index holds
heading-blended vectors (search.chunk_vectors); the methods marked "own vectors" search
each chunk's own vector instead, as before that blend. Every figure is also given for
each half of the questions (split by a hash of the question's name): parameters were
chosen on half A, and half B shows whether they hold on questions they were not chosen on.

Latency. Search alone (the query's embedding is timed apart) at 1k, 10k and 100k chunks:
random unit vectors for the matrix half, and for BM25 the pydoc chunks repeated with
variations (each copy drops a tenth of the words at random and gains a word of its own)
so that posting lists grow as they would. p50/p95 over the questions, in milliseconds.

Vectors for the pydoc chunks are cached in the temp folder (keyed by the model and the
texts), never in the checkout: embedding them takes a minute or two on a busy machine.
`run(quick)` returns a JSON-ready dict; `--quick` uses 16 topics and stops at 10k.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pydoc
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..documents.chunk import DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP, Chunk, chunk_blocks, minilm_spans
from ..documents.parse import parse
from ..documents.search import (
    DEFAULT_VECTOR_WEIGHT,
    HEADING_BLEND,
    BM25Index,
    Fusion,
    HybridSearch,
    Mode,
    VectorIndex,
    chunk_vectors,
    convex,
    rrf,
    section_key,
)

# Fixed phrasings, the first one primary: the figures depend on the phrasing (BM25 most:
# words like "documentation" are rare in the corpus and pull in chunks that hold them),
# so every one is reported.
TEMPLATES = ("What is {name} in Python?", "{name}", "What is {name}?",
             "What does the Python documentation say about {name}?")
K = 5
QUICK_TOPICS = 16
CANDIDATES = 50
SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
LATENCY_QUERIES = 200  # timed searches per size (the questions, round and round)
QUICK_LATENCY_QUERIES = 40
MISS_EXAMPLES = 10  # misses shown, with what came back instead
DEFAULT = f"convex {DEFAULT_VECTOR_WEIGHT} vector"  # documents/search.py's default fusion
# What the server ranks with (documents/library.py): the default fusion, then at most one
# chunk of a section among the first 10 (search.spread).
SERVER = f"{DEFAULT}, one chunk per section"
FUSIONS: dict[str, Callable[[], Fusion]] = {
    DEFAULT: lambda: convex(DEFAULT_VECTOR_WEIGHT),
    "convex 0.8 vector": lambda: convex(0.8),
    "convex 0.5 vector": lambda: convex(0.5),
    "rrf k=60": lambda: rrf(60),
    "rrf k=10": lambda: rrf(10),
    "rrf k=60, vector x2": lambda: rrf(60, vector_weight=2.0),
}
# What the search did before heading blending (documents/search.py's chunk_vectors): each
# chunk's own vector, the same fusion.
UNBLENDED = " (own vectors, no heading blend)"
BEFORE = f"hybrid, convex 0.7 vector{UNBLENDED}"


@dataclass(frozen=True)
class Question:
    name: str  # as it goes into the template
    label: str  # key of pydoc_data.topics.topics that answers it


def _resolve(name: str, seen: frozenset[str] = frozenset()) -> str | None:
    """The topic label help(name) shows, following string cross-references as
    pydoc.Helper.showtopic does; None when the entry is empty or loops."""
    entry = pydoc.Helper.topics.get(name, pydoc.Helper.keywords.get(name))
    if isinstance(entry, str):
        return _resolve(entry, seen | {name}) if entry and entry not in seen else None
    if isinstance(entry, tuple) and entry and isinstance(entry[0], str):
        return entry[0]
    return None


def qa_set() -> tuple[dict[str, str], dict[str, list[Question]], list[str]]:
    """(topic texts by label, the question sets, names skipped and why).

    "help names": every name pydoc.Helper lists, resolved to its label (topic names,
    upper case there, lower-cased); "topic keys": each label of the data itself, its
    hyphens read as spaces ("typesseq-mutable" -> "typesseq mutable").
    """
    from pydoc_data.topics import topics

    names, skipped = [], []
    for name in sorted({*pydoc.Helper.keywords, *pydoc.Helper.topics}):
        label = _resolve(name)
        if label is None or label not in topics:
            skipped.append(f"{name}: {'no topic' if label is None else f'label {label!r} not shipped'}")
            continue
        names.append(Question(name.lower() if name.isupper() else name, label))
    keys = [Question(label.replace("-", " "), label) for label in sorted(topics)]
    return dict(topics), {"help names": names, "topic keys": keys}, skipped


def _model_dir() -> Path:
    from .. import models
    from ..config import default_home

    return models.ensure(default_home(os.environ), models.DEFAULT_EMBEDDING)


def _embed_cached(embed: Callable[[list[str]], np.ndarray], model_dir: Path, texts: list[str]) -> np.ndarray:
    """Vectors for `texts`, from the temp-folder cache when the model and texts match."""
    key = hashlib.sha256()
    weights = model_dir / "model.safetensors"
    key.update(f"{model_dir.name}\0{weights.stat().st_size}\0{weights.stat().st_mtime_ns}\0".encode())
    for text in texts:
        key.update(text.encode("utf-8", "surrogatepass") + b"\0")
    folder = Path(tempfile.gettempdir()) / "nanochat-lite-bench-retrieval"
    path = folder / f"{key.hexdigest()[:32]}.npy"
    if path.is_file():
        cached: np.ndarray = np.load(path, allow_pickle=False)
        if cached.shape[0] == len(texts):
            return cached
    vectors = embed(texts)
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{path.name}.{os.getpid()}.tmp"
    with temp.open("wb") as f:
        np.save(f, vectors, allow_pickle=False)
    os.replace(temp, path)
    return vectors


def _metrics(ranks: list[int | None]) -> dict[str, float]:
    """recall@1/5/10 and MRR@10 from each question's first relevant rank (1-based)."""
    n = max(1, len(ranks))
    return {"recall@1": sum(1 for r in ranks if r is not None and r <= 1) / n,
            "recall@5": sum(1 for r in ranks if r is not None and r <= 5) / n,
            "recall@10": sum(1 for r in ranks if r is not None and r <= 10) / n,
            "mrr@10": sum(1.0 / r for r in ranks if r is not None and r <= 10) / n}


def _searches(texts: list[str], blended: np.ndarray, own: np.ndarray,
              sections: list[Hashable]) -> dict[str, tuple[HybridSearch, Mode]]:
    """Every method measured, over one index of `texts` (ids are positions): `blended`
    vectors (search.chunk_vectors) and, for the before/after comparison, each chunk's `own`;
    `sections` is each chunk's search.section_key, for the server's spread."""
    ids = list(range(len(texts)))
    vectors, unblended = VectorIndex(blended.shape[1], capacity=len(texts)), VectorIndex(own.shape[1],
                                                                                         capacity=len(texts))
    vectors.add(ids, blended)
    unblended.add(ids, own)
    words = BM25Index()
    words.add(ids, texts)
    searches: dict[str, tuple[HybridSearch, Mode]] = {
        "BM25 only": (HybridSearch(vectors, words, candidates=CANDIDATES), "fulltext"),
        "vector only": (HybridSearch(vectors, words, candidates=CANDIDATES), "vector"),
        f"vector only{UNBLENDED}": (HybridSearch(unblended, words, candidates=CANDIDATES), "vector"),
    }
    for name, make in FUSIONS.items():
        searches[f"hybrid, {name}"] = (HybridSearch(vectors, words, candidates=CANDIDATES, fusion=make()), "hybrid")
    searches[f"hybrid, {SERVER}"] = (HybridSearch(vectors, words, candidates=CANDIDATES,
                                                   section_of=sections.__getitem__), "hybrid")
    searches[BEFORE] = (HybridSearch(unblended, words, candidates=CANDIDATES, fusion=convex(0.7)), "hybrid")
    return searches


def half(name: str) -> str:
    """"A" or "B", fixed per question by a hash of its name: parameters were chosen on A
    only, and B is the held-out check."""
    return "AB"[hashlib.sha1(name.encode("utf-8")).digest()[0] % 2]


def quality(quick: bool, embedder: Any, model_dir: Path) -> dict[str, Any]:
    topics, sets, skipped = qa_set()
    labels = sorted(topics)
    templates: tuple[str, ...] = TEMPLATES
    if quick:  # the topics the first help names ask about, 16 of them; one phrasing
        labels = sorted({q.label for q in sets["help names"]})[:QUICK_TOPICS]
        sets = {name: [q for q in qs if q.label in labels] for name, qs in sets.items()}
        templates = TEMPLATES[:1]
    spans = minilm_spans(model_dir)
    chunks: list[Chunk] = []
    chunk_label: list[str] = []
    started = time.perf_counter()
    for label in labels:
        for chunk in chunk_blocks(parse(topics[label].encode("utf-8"), f"{label}.txt"), spans):
            chunks.append(chunk)
            chunk_label.append(label)
    chunk_seconds = time.perf_counter() - started
    # TREC CAR style: each section heading the parser found asks for its section's chunks,
    # searched in an index of the chunks *without* their headings (else the answer would
    # hold the question word for word).
    chunk_heading = [c.heading or "" for c in chunks]
    sections = [section_key(i, label, c.heading, c.page) for i, (label, c) in enumerate(zip(chunk_label, chunks))]
    sets["section headings"] = [Question(h, h) for h in sorted(set(chunk_heading) - {""})]

    def embed(batch: list[str]) -> np.ndarray:
        vectors: np.ndarray = embedder.embed(batch).vectors
        return vectors

    def cached(batch: list[str]) -> np.ndarray:
        return _embed_cached(embed, model_dir, batch)

    started = time.perf_counter()
    texts = [c.embed_text for c in chunks]
    bare = [c.text for c in chunks]
    indexes = {"with headings": _searches(texts, chunk_vectors(cached, texts, [c.heading for c in chunks]),
                                          cached(texts), sections),
               # no headings in the text: nothing to blend (the chunks' sections are known all the same)
               "without headings": _searches(bare, cached(bare), cached(bare), sections)}
    embed_seconds = time.perf_counter() - started

    rows, misses, examples = [], {}, []
    all_queries: list[str] = []
    all_vectors = []
    for set_name, questions in sets.items():
        index, key = ("without headings", chunk_heading) if set_name == "section headings" else ("with headings",
                                                                                                 chunk_label)
        for template in templates:
            queries = [template.format(name=q.name) for q in questions]
            query_vectors = embed(queries)
            all_queries += queries
            all_vectors.append(query_vectors)
            row: dict[str, Any] = {"set": set_name, "index": index, "template": template,
                                   "questions": len(questions), "methods": {}}
            for method, (search, mode) in indexes[index].items():
                ranks = []
                for q, text, vector in zip(questions, queries, query_vectors):
                    hits = [h.chunk_id for h in search.search(text, vector, 10, mode=mode)]
                    ranks.append(next((r for r, i in enumerate(hits, start=1) if key[i] == q.label), None))
                row["methods"][method] = _metrics(ranks)
                for h in "AB":  # recall@5 of each half of the questions
                    row["methods"][method][f"recall@5 {h}"] = _metrics(
                        [r for q, r in zip(questions, ranks) if half(q.name) == h])["recall@5"]
                if (set_name, template, method) == ("help names", templates[0], f"hybrid, {SERVER}"):
                    misses = {q.name: q.label for q, r in zip(questions, ranks) if r is None or r > K}
                    examples = _miss_examples(search, questions, queries, query_vectors, texts, chunk_label)
            rows.append(row)
    methods = list(rows[0]["methods"])
    mean = {m: round(statistics.mean(r["methods"][m]["recall@5"] for r in rows), 3) for m in methods}
    halves = {h: {m: round(statistics.mean(r["methods"][m][f"recall@5 {h}"] for r in rows), 3) for m in methods}
              for h in "AB"}
    best = max((m for m in mean if m.startswith("hybrid")), key=lambda m: mean[m])
    return {"corpus": f"pydoc_data.topics (Python {sys.version.split()[0]})", "topics": len(labels),
            "chunks": len(chunks), "chunk_tokens": DEFAULT_MAX_TOKENS, "overlap": DEFAULT_OVERLAP,
            "chunking_s": round(chunk_seconds, 2), "embedding_s": round(embed_seconds, 2),
            "skipped": skipped, "candidates": CANDIDATES, "rows": rows, "mean_recall@5": mean,
            "mean_recall@5_halves": halves, "heading_blend": HEADING_BLEND,
            "best_hybrid": best, "default_fusion_misses_at_5": misses, "miss_examples": examples,
            "_texts": texts, "_queries": all_queries, "_query_vectors": np.concatenate(all_vectors)}


def _miss_examples(search: HybridSearch, questions: list[Question], queries: list[str], vectors: np.ndarray,
                   texts: list[str], labels: list[str], limit: int = MISS_EXAMPLES) -> list[dict[str, Any]]:
    """The first `limit` questions without a relevant chunk in the top K: the question, the
    topic that answers it with its opening, and what came back (topic, vector and BM25
    rank, opening) -- to read why a miss misses."""
    out: list[dict[str, Any]] = []
    first: dict[str, int] = {}
    for i, label in enumerate(labels):
        first.setdefault(label, i)
    for q, text, vector in zip(questions, queries, vectors):
        hits = search.search(text, vector, K)
        if any(labels[h.chunk_id] == q.label for h in hits):
            continue
        out.append({"question": text, "expected": q.label, "expected_opens": _opening(texts[first[q.label]]),
                    "got": [{"topic": labels[h.chunk_id], "vector_rank": h.vector_rank, "text_rank": h.text_rank,
                             "opens": _opening(texts[h.chunk_id])} for h in hits]})
        if len(out) == limit:
            break
    return out


def _opening(text: str, chars: int = 90) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[: chars - 1] + "…"


def _variant(texts: list[str], i: int) -> str:
    """The i-th synthetic chunk: copy i // len(texts) of a pydoc chunk, a tenth of its
    words dropped at random, plus a word of its own (copy 0 is the chunk itself)."""
    base = texts[i % len(texts)]
    copy = i // len(texts)
    if copy == 0:
        return base
    rng = random.Random(i)
    kept = [w for w in base.split() if rng.random() >= 0.1]
    return " ".join(kept) + f" copy{copy}"


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50": round(statistics.median(ordered), 3),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3)}


def latency(quick: bool, texts: list[str], queries: list[str], query_vectors: np.ndarray,
            embedder: Any) -> dict[str, Any]:
    dim = query_vectors.shape[1]
    rounds = QUICK_LATENCY_QUERIES if quick else LATENCY_QUERIES
    embed_ms = []
    for q in queries[: min(len(queries), 50)]:
        started = time.perf_counter()
        embedder.embed([q])
        embed_ms.append(1000 * (time.perf_counter() - started))
    sizes: dict[str, Any] = {}
    for n in QUICK_SIZES if quick else SIZES:
        rng = np.random.default_rng(n)
        matrix = rng.standard_normal((n, dim), dtype=np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        vectors = VectorIndex(dim, capacity=n)
        vectors.add(list(range(n)), matrix)
        del matrix
        started = time.perf_counter()
        words = BM25Index()
        words.add(list(range(n)), [_variant(texts, i) for i in range(n)])
        build_s = time.perf_counter() - started
        search = HybridSearch(vectors, words, candidates=CANDIDATES)
        timings: dict[str, list[float]] = {"vector": [], "bm25": [], "hybrid": []}
        for r in range(rounds):
            q, v = queries[r % len(queries)], query_vectors[r % len(queries)]
            for name, fn in (("vector", lambda: vectors.search(v, CANDIDATES)),
                             ("bm25", lambda: words.search(q, CANDIDATES)),
                             ("hybrid", lambda: search.search(q, v, K))):
                started = time.perf_counter()
                fn()
                timings[name].append(1000 * (time.perf_counter() - started))
        sizes[str(n)] = {"bm25_build_s": round(build_s, 2), "searches": rounds,
                         **{name: _percentiles(t) for name, t in timings.items()}}
        del vectors, words, search
    return {"unit": "ms", "embed_query": _percentiles(embed_ms), "sizes": sizes}


def run(quick: bool, *, model_dir: Path | None = None) -> dict[str, Any]:
    """Quality on the pydoc QA set, then search latency; JSON-ready (the `retrieval`
    section of `nanochat-lite bench`)."""
    from ..embeddings import Embedder

    model_dir = model_dir or _model_dir()
    embedder = Embedder(model_dir)
    load_start = os.getloadavg()[0]
    result: dict[str, Any] = {"status": "ok", "quick": quick, "load_average_start": load_start}
    q = quality(quick, embedder, model_dir)
    texts, queries, query_vectors = q.pop("_texts"), q.pop("_queries"), q.pop("_query_vectors")
    result["quality"] = q
    result["load_average_quality_end"] = os.getloadavg()[0]
    result["latency"] = latency(quick, texts, queries, query_vectors, embedder)
    result["load_average_end"] = os.getloadavg()[0]
    return result


def print_report(r: dict[str, Any]) -> None:
    q = r["quality"]
    print(f"Retrieval quality, recall@{K}: {q['corpus']}: {q['topics']} topics, {q['chunks']} chunks "
          f"({q['chunk_tokens']} pieces, overlap {q['overlap']}; chunked in {q['chunking_s']} s, embedded in "
          f"{q['embedding_s']} s or read from the cache); {q['candidates']} candidates per half; "
          f"{len(q['skipped'])} help names without a topic skipped")
    methods = list(q["mean_recall@5"])
    short = [m.replace(UNBLENDED, " own").replace("hybrid, ", "").replace(" vector", "v").replace(
        "BM25 only", "BM25").replace("vector only", "vector") for m in methods]
    header = f"{'questions':<17}{'n':>4}  {'phrasing':<54}" + "".join(f"{s:>14}" for s in short)
    print(header)
    print("-" * len(header))
    for row in q["rows"]:
        print(f"{row['set']:<17}{row['questions']:>4}  {row['template']:<54}"
              + "".join(f"{row['methods'][m]['recall@5']:>14.3f}" for m in methods))
    print(f"{'mean':<17}{'':>4}  {'':<54}" + "".join(f"{q['mean_recall@5'][m]:>14.3f}" for m in methods))
    for h, means in q["mean_recall@5_halves"].items():
        label = "tuned on" if h == "A" else "held out"
        print(f"{'mean, half ' + h:<17}{'':>4}  {label:<54}" + "".join(f"{means[m]:>14.3f}" for m in methods))
    print(f"best hybrid on the mean: {q['best_hybrid']}; \"own\": each chunk's own vector, before blending "
          f"it with its heading's ({q['heading_blend']} own)")
    print(f"missed at {K} by the server's ranking ({SERVER}), help names, first phrasing: "
          f"{q['default_fusion_misses_at_5']}")
    for miss in q["miss_examples"]:
        print(f"  {miss['question']!r}: wanted {miss['expected']} ({miss['expected_opens']!r}); got:")
        for hit in miss["got"]:
            print(f"    {hit['topic']:<22} vector #{hit['vector_rank'] or '-':<3} BM25 #{hit['text_rank'] or '-':<3} "
                  f"{hit['opens']!r}")
    lat = r["latency"]
    print(f"\nSearch latency (ms; the query's embedding apart: p50 {lat['embed_query']['p50']}, "
          f"p95 {lat['embed_query']['p95']}):")
    header = (f"{'chunks':>8}{'vector p50':>12}{'p95':>8}{'bm25 p50':>10}{'p95':>8}{'hybrid p50':>12}{'p95':>8}"
              f"{'bm25 build s':>14}")
    print(header)
    print("-" * len(header))
    for n, row in lat["sizes"].items():
        print(f"{int(n):>8,}{row['vector']['p50']:>12.2f}{row['vector']['p95']:>8.2f}{row['bm25']['p50']:>10.2f}"
              f"{row['bm25']['p95']:>8.2f}{row['hybrid']['p50']:>12.2f}{row['hybrid']['p95']:>8.2f}"
              f"{row['bm25_build_s']:>14.1f}")
    print(f"load average: {r['load_average_start']:.2f} at start, {r['load_average_quality_end']:.2f} after "
          f"quality, {r['load_average_end']:.2f} at end")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nanochat_lite.bench.retrieval", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_TOPICS} topics; latency at 1k and 10k only")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args(argv)
    result = run(args.quick)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
