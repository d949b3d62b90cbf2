"""Issue 21 experiment: can cheap changes lift hybrid recall@5 on the pydoc QA set toward 0.9?

    .venv/bin/python scripts/recall_try.py [--windows 64] [--stride 32] [--window-weight 0.5]
        [--vector-weight 0.7] [--same-text]

Measures, on the same corpus, question sets, phrasings and halves as
`nanochat_lite.bench.retrieval` (A: the half parameters were tuned on; B: held out),
recall@5 of hybrid (convex 0.7 vector), BM25 only and vector only for:
- "baseline": what the product does today (heading-blended chunk vectors, raw query).
- "multi-vector": each chunk's text also embedded as overlapping sub-windows (`--windows`
  pieces, `--stride`); a chunk's vector score mixes its blended cosine with the best window's
  (max) -- MiniLM mean-pools 200 pieces, which dilutes a short matching span.
- "split query": the question's identifier-like words split for BM25 and the embedding:
  snake/camel case, and run-together words absent from the corpus ("basicmethods")
  segmented into words of its own vocabulary ("split BM25 only": for BM25 alone).
- "bare max": the query embedded as-is and as its bare name (template removed), the
  vector score the max of the two cosines.
- "quoted terms": BM25 also indexes each word written between double quotes as '"word'
  and a query's words also match those (pydoc quotes keywords: 'The "for" statement'),
  aimed at the one-word keyword misses ("for", "in", "is", "elif").
- combinations of the above ("all three": split + bare max + multi-vector).
`--same-text` counts a chunk of a topic shipped twice under two labels ("else" and "if"
hold the same text) as relevant for either.
Nothing here changes the product; vectors are cached in the temp folder like the bench's.
Not handled: the latency half of the bench (unchanged by these ideas except the window
matrix, whose size is reported).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
import time
from collections import Counter
from typing import Any

import numpy as np

from nanochat_lite.bench.retrieval import TEMPLATES, Question, _embed_cached, _model_dir, half, qa_set
from nanochat_lite.documents.chunk import Chunk, chunk_blocks, minilm_spans
from nanochat_lite.documents.parse import parse
from nanochat_lite.documents.search import BM25Index, Ranking, chunk_vectors, convex, terms

K = 5
CANDIDATES = 50
VECTOR_WEIGHT = 0.7
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_QUOTED = re.compile(r'"(\w+)"')
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def windows(text: str, offsets: list[tuple[int, int]], size: int, stride: int) -> list[str]:
    """Overlapping slices of `text` of `size` pieces every `stride` pieces (the last one
    reaching the end); one slice, the whole text, when it is no longer than `size`.

    'a b c d e' with one piece per word, size 2, stride 2 -> ['a b', 'c d', 'd e']
    """
    if len(offsets) <= size:
        return [text]
    starts = list(range(0, len(offsets) - size, stride)) + [len(offsets) - size]
    return [text[offsets[s][0]:offsets[s + size - 1][1]] for s in starts]


def segment(word: str, df: Counter[str], *, min_part: int = 4) -> list[str]:
    """`word`, absent from the corpus (df: document frequency of each term), split into
    corpus words of at least `min_part` letters; the split with the fewest parts, then the
    highest product of frequencies. Words the corpus holds stay whole ('nonlocal'), and
    short parts are refused: with 2 or 3 letters 'typesseq' became 'type ss eq' and
    'subscripts' 'sub scripts'.

    'basicmethods' with df {'basic': 9, 'methods': 40} -> ['basic', 'methods']
    """
    n = len(word)
    whole = df.get(word, 0)
    if whole:
        return [word]
    # best[i]: (parts, -log-frequency sum, split) for word[:i]
    best: list[tuple[int, float, list[str]] | None] = [None] * (n + 1)
    best[0] = (0, 0.0, [])
    for end in range(1, n + 1):
        for start in range(max(0, end - 20), end - min_part + 1):
            prev, part = best[start], word[start:end]
            if prev is None or df.get(part, 0) <= whole:
                continue
            cand = (prev[0] + 1, prev[1] - math.log(df[part]), prev[2] + [part])
            if best[end] is None or cand[:2] < best[end][:2]:  # type: ignore[index]
                best[end] = cand
    done = best[n]
    return done[2] if done is not None and done[0] > 1 else [word]


def split_query(text: str, df: Counter[str]) -> str:
    """Identifier-like words split: snake_case and camelCase into words, then each
    run-together word segmented (`segment`). 'What is basicmethods?' -> 'What is basic methods?'"""
    def one(m: re.Match[str]) -> str:
        parts = [p for w in m.group(0).split("_") for p in _CAMEL.sub(" ", w).split()]
        return " ".join(" ".join(segment(p.casefold(), df)) if p.islower() else p for p in parts)
    return _IDENT.sub(one, text)


def quoted_terms(text: str) -> list[str]:
    """`terms`, plus each single word written between double quotes again as '"word'
    (pydoc quotes every keyword and grammar literal: 'The "for" statement').

    'The "for" statement' -> ['the', 'for', 'statement', '"for']
    """
    return terms(text) + ['"' + w.casefold() for w in _QUOTED.findall(text)]


def quoted_query(text: str) -> list[str]:
    """A query's terms, each also as its quoted form, so that 'for' also meets '"for'."""
    found = terms(text)
    return found + ['"' + t for t in found]


def _top(scores: np.ndarray, k: int) -> Ranking:
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(i), float(scores[i])) for i in order]


def _corpus(model_dir: Any, same_text: bool) -> tuple[list[Chunk], list[str], dict[str, list[Question]]]:
    topics, sets, _ = qa_set()
    spans = minilm_spans(model_dir)
    chunks: list[Chunk] = []
    labels: list[str] = []
    for label in sorted(topics):
        for chunk in chunk_blocks(parse(topics[label].encode("utf-8"), f"{label}.txt"), spans):
            chunks.append(chunk)
            labels.append(label)
    sets["section headings"] = [Question(h, h) for h in sorted({c.heading for c in chunks if c.heading})]
    if same_text:  # a topic shipped twice under two labels ("else", "if") answers for both
        first = {text: label for label, text in sorted(topics.items(), reverse=True)}
        labels = [first[topics[label]] for label in labels]
        sets = {name: [Question(q.name, first[topics[q.label]]) if q.label in topics else q for q in qs]
                for name, qs in sets.items()}
    return chunks, labels, sets


def main(argv: list[str] | None = None) -> int:  # long: one straight experiment script, read top to bottom
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=64, help="pieces per sub-window")
    ap.add_argument("--stride", type=int, default=32)
    ap.add_argument("--window-weight", type=float, default=0.5, help="of the best window's cosine, against the chunk's")
    ap.add_argument("--vector-weight", type=float, default=VECTOR_WEIGHT, help="of the convex fusion")
    ap.add_argument("--same-text", action="store_true",
                    help="a chunk of a topic whose text is the answer's, shipped under another label, counts")
    args = ap.parse_args(argv)
    from nanochat_lite.embeddings import Embedder

    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    model_dir = _model_dir()
    embedder = Embedder(model_dir)
    seconds: dict[str, float] = {}

    def cached(batch: list[str]) -> np.ndarray:
        vectors: np.ndarray = _embed_cached(lambda b: embedder.embed(b).vectors, model_dir, batch)
        return vectors

    chunks, chunk_label, sets = _corpus(model_dir, args.same_text)
    chunk_heading = [c.heading or "" for c in chunks]
    texts, bare = [c.embed_text for c in chunks], [c.text for c in chunks]
    started = time.perf_counter()
    index_vectors = {"with": chunk_vectors(cached, texts, [c.heading for c in chunks]), "without": cached(bare)}
    seconds["chunks (cached)"] = time.perf_counter() - started
    # Sub-windows of each chunk's own text (no heading: the blended chunk vector carries it).
    spans = minilm_spans(model_dir)(bare)
    per_chunk = [windows(t, s, args.windows, args.stride) for t, s in zip(bare, spans)]
    owner = np.repeat(np.arange(len(chunks)), [len(w) for w in per_chunk])
    flat = [w for ws in per_chunk for w in ws]
    started = time.perf_counter()
    window_vectors = np.asarray(cached(flat), np.float32)
    seconds[f"{len(flat)} windows"] = time.perf_counter() - started
    print(f"{len(chunks)} chunks, {len(flat)} windows of {args.windows} pieces (stride {args.stride}): "
          f"{len(flat) - len(chunks)} extra vectors, {seconds[f'{len(flat)} windows']:.1f} s (0 when cached)")
    bm25 = {"with": BM25Index(), "without": BM25Index()}
    bm25["with"].add(list(range(len(chunks))), texts)
    bm25["without"].add(list(range(len(chunks))), bare)
    quoted = {"with": BM25Index(tokenize=quoted_terms), "without": BM25Index(tokenize=quoted_terms)}
    quoted["with"].add(list(range(len(chunks))), texts)
    quoted["without"].add(list(range(len(chunks))), bare)
    for words in quoted.values():  # indexed with quoted_terms; queries (never quoted) read with quoted_query
        words._tokenize = quoted_query
    df = {name: Counter(t for text in source for t in set(terms(text))) for name, source in
          (("with", texts), ("without", bare))}
    fuse = convex(args.vector_weight)

    def max_windows(cosines: np.ndarray) -> np.ndarray:  # (windows,) -> (chunks,)
        best = np.full(len(chunks), -1.0, np.float32)
        np.maximum.at(best, owner, cosines)
        return best

    variants = ("baseline", "multi-vector", "split query", "split BM25 only", "bare max", "split + bare max",
                "all three", "quoted terms", "split + quoted")
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for set_name, questions in sets.items():
        index, key = ("without", chunk_heading) if set_name == "section headings" else ("with", chunk_label)
        for template in TEMPLATES:
            raw = [template.format(name=q.name) for q in questions]
            split = [split_query(t, df[index]) for t in raw]
            names_split = [split_query(q.name, df[index]) for q in questions]
            qv = {"raw": cached(raw), "split": cached(split), "name": cached([q.name for q in questions]),
                  "name split": cached(names_split)}
            for variant in variants:
                use_split = "split" in variant or variant == "all three"
                multi = "multi" in variant or variant == "all three"
                bare_max = "bare max" in variant or variant == "all three"
                split_vector = use_split and variant != "split BM25 only"
                ranks: dict[str, list[int | None]] = {"hybrid": [], "BM25": [], "vector": []}
                for i, q in enumerate(questions):
                    query_vectors = [qv["split" if split_vector else "raw"][i]]
                    if bare_max:
                        query_vectors.append(qv["name split" if split_vector else "name"][i])
                    scores = np.max([index_vectors[index] @ v for v in query_vectors], axis=0)
                    if multi:
                        best = np.max([max_windows(window_vectors @ v) for v in query_vectors], axis=0)
                        scores = (1 - args.window_weight) * scores + args.window_weight * best
                    by_vector = _top(scores, CANDIDATES)
                    words = quoted[index] if "quoted" in variant else bm25[index]
                    by_text = words.search(split[i] if use_split else raw[i], CANDIDATES)
                    for method, ranking in (("vector", by_vector), ("BM25", by_text),
                                            ("hybrid", fuse(by_vector, by_text))):
                        hits = [c for c, _ in ranking[:10]]
                        ranks[method].append(next((r for r, c in enumerate(hits, 1) if key[c] == q.label), None))
                row: dict[str, Any] = {"set": set_name, "template": template, "variant": variant}
                for method, rs in ranks.items():
                    for h in ("all", "A", "B"):
                        kept = [r for q, r in zip(questions, rs) if h == "all" or half(q.name) == h]
                        row[f"{method} {h}"] = sum(1 for r in kept if r is not None and r <= K) / max(1, len(kept))
                if variant in ("baseline", "split + quoted") and (set_name, template) == ("help names", TEMPLATES[0]):
                    print(f"missed by {variant} (help names, first phrasing):",
                          [(q.name, q.label) for q, r in zip(questions, ranks["hybrid"]) if r is None or r > K])
                rows.append(row)
    seconds["searching"] = time.perf_counter() - started
    print(f"\nrecall@{K}, mean over the {len(rows) // len(variants)} (set, phrasing) rows; "
          f"multi-vector: {args.window_weight} x best window + {1 - args.window_weight} x chunk; "
          f"hybrid: convex {args.vector_weight} vector")
    header = f"{'variant':<16}" + "".join(f"{m + ' ' + h:>12}" for m in ("hybrid", "BM25", "vector")
                                          for h in ("A", "B", "all"))
    print(header)
    print("-" * len(header))
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        print(f"{variant:<16}" + "".join(f"{statistics.mean(r[f'{m} {h}'] for r in mine):>12.3f}"
                                         for m in ("hybrid", "BM25", "vector") for h in ("A", "B", "all")))
    print("\nper set, hybrid all:")
    for set_name in sets:
        print(f"  {set_name:<18}" + "".join(
            f"{v}: {statistics.mean(r['hybrid all'] for r in rows if r['set'] == set_name and r['variant'] == v):.3f}  "
            for v in variants))
    print("seconds:", {k: round(v, 1) for k, v in seconds.items()}, f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
