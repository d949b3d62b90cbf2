"""Embedding speed: our numpy engine, and sentence-transformers beside it when importable.

    .venv/bin/python -m nanochat_lite.bench.embeddings_speed [--quick] [--threads N] [--json]
    HF_HUB_OFFLINE=1 /work/refvenv/bin/python -m nanochat_lite.bench.embeddings_speed   # side by side

(run from the checkout's root when the interpreter is not this project's: it finds the
package there, and so do the worker processes it starts).

Prints sentences per second for calls of 1 text (the corpus' first 64, one by one), 32
and 256 texts (the whole 256-text corpus), and the cold load: from a fresh process
wanting its first embedding (clock started before `import numpy`) to having it;
"+exec" adds the interpreter's own start-up. Each engine runs in its own child process
(torch's OpenMP threads spin after a call and would slow OpenBLAS in the same process);
the parent asks the two children for one measurement at a time, alternating, so a load
spike from elsewhere on the machine hits both alike. A child other than ours that crashes
(torch or a native BLAS built for another CPU) is listed as "crashed (signal N)" and the
run goes on without it (`isolate.py`). The table shows the best and the
median of the repeats; on a machine whose cores are shared, the best is the fairer
comparison.

`run(quick=False) -> dict` is the entry point for other code (the `embeddings` section
of `nanochat-lite bench`, `embedding.py`); importing this module measures nothing.

Not measured: memory use, the HTTP layer, texts longer than the 256-piece limit beyond
what the corpus holds (about 1 in 20 texts).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from . import isolate

_BATCH_SIZES = (1, 32, 256)
_CORPUS_SIZE = 256

_WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which this be "
    "or has had not but have first one their its new after who they two been also more time year "
    "city people world system music team school history government state public water river "
    "small large early later local national between during under while through about against "
    "model data search server request memory engine language network question answer morning "
    "evening train station market price report policy energy light house garden window street"
).split()


def corpus(n: int = _CORPUS_SIZE, seed: int = 7) -> list[str]:
    """Deterministic texts shaped like search queries, chat turns and passages.

    About 60% have 4-20 words, 30% 20-80 words, 10% 120-400 words (half of those pass the
    256-piece limit).
    """
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        r = rng.random()
        words = rng.randint(4, 20) if r < 0.6 else rng.randint(20, 80) if r < 0.9 else rng.randint(120, 400)
        sentence = " ".join(rng.choice(_WORDS) for _ in range(words))
        texts.append(sentence[0].upper() + sentence[1:] + ".")
    return texts


def _blas_info() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed: BLAS kernel unknown"}]
    keep = ("internal_api", "prefix", "version", "architecture", "num_threads", "threading_layer")
    return [{k: v for k, v in lib.items() if k in keep} for lib in threadpool_info()]


def _time_chunks(embed: Any, chunks: list[list[str]]) -> float:
    """Sentences per second for one pass of `embed` over every chunk."""
    start = time.perf_counter()
    for chunk in chunks:
        embed(chunk)
    return sum(len(c) for c in chunks) / (time.perf_counter() - start)


def embed_worker(engine: str, model_dir: str, threads: int | None, texts: int = _CORPUS_SIZE
                 ) -> tuple[dict[str, Any], Callable[[dict[str, Any]], dict[str, float]]]:
    """In a child process (isolate.Worker): load one engine and embed a first text; then
    each request {"scenario": "batch_N"} answers {"batch_N": sentences/s}.

    The ready info is {"engine", "cold_load_s", "ready_at", "blas"}; the cold-load clock
    starts here, before numpy is imported."""
    start = time.perf_counter()
    if engine == "ours":
        from nanochat_lite.embeddings import Embedder

        embedder = Embedder(Path(model_dir), threads=threads)
        embedder.embed(["The first sentence."])
        cold = time.perf_counter() - start

        def embed(texts: list[str]) -> Any:
            return embedder.embed(texts).vectors

        version = "nanochat_lite.embeddings (numpy)"
    else:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import sentence_transformers
        import torch
        from sentence_transformers import SentenceTransformer

        if threads is not None:
            torch.set_num_threads(threads)
        model = SentenceTransformer(model_dir, device="cpu")
        model.encode(["The first sentence."])
        cold = time.perf_counter() - start

        def embed(texts: list[str]) -> Any:
            return model.encode(texts, show_progress_bar=False)

        version = f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}"

    ready = {"engine": version, "cold_load_s": cold, "ready_at": time.time(), "blas": _blas_info()}
    pool_all = corpus()[:texts]
    embed(pool_all[:32])  # warm caches and lazy paths

    def handle(request: dict[str, Any]) -> dict[str, float]:
        scenario = str(request["scenario"])
        size = int(scenario.removeprefix("batch_"))
        pool = pool_all[:64] if size == 1 else pool_all
        chunks = [pool[i : i + size] for i in range(0, len(pool), size)]
        return {scenario: _time_chunks(embed, chunks)}

    return ready, handle


# Engine name -> (the child's factory, its `engine` argument).
ENGINES: dict[str, tuple[Callable[..., Any] | str, str]] = {"ours": (embed_worker, "ours"),
                                                            "sentence-transformers": (embed_worker, "st")}
ST_MISSING = "not installed (pip install sentence-transformers)"


class _Engines:
    """One child process per engine; an engine other than ours whose child crashes or
    fails is dropped and its reason kept in `lost` ("crashed (signal 11)")."""

    def __init__(self, names: list[str], model_dir: Path, threads: int | None, texts: int) -> None:
        self.model_dir, self.threads, self.texts = model_dir, threads, texts
        self.names = names
        self.lost: dict[str, str] = {}

    def live(self) -> list[str]:
        return [n for n in self.names if n not in self.lost]

    def start(self, name: str) -> tuple[isolate.Worker, dict[str, Any]] | None:
        try:
            factory, engine = ENGINES[name]
            w = isolate.Worker(factory, engine=engine, model_dir=str(self.model_dir),
                               threads=self.threads, texts=self.texts, env={"HF_HUB_OFFLINE": "1"})
        except isolate.PeerFailed as e:
            self._lose(name, e)
            return None
        ready = dict(w.info)
        ready["cold_from_exec_s"] = ready.pop("ready_at") - w.spawned
        return w, ready

    def measure(self, name: str, w: isolate.Worker, scenario: str) -> float | None:
        try:
            return float(w.call({"scenario": scenario})[scenario])
        except isolate.PeerFailed as e:
            w.close()
            self._lose(name, e)
            return None

    def _lose(self, name: str, e: isolate.PeerFailed) -> None:
        if name == "ours":  # our own engine failing is the section's failure
            raise e
        self.lost[name] = isolate.row_text(e)


def _have_sentence_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("sentence_transformers") is not None


def _default_model_dir() -> Path:
    from nanochat_lite import models
    from nanochat_lite.config import Config

    return models.ensure(Config.from_env().home, models.DEFAULT_EMBEDDING)


# By --quick: cold rounds (fresh processes per engine), throughput repeats per scenario,
# and texts of the corpus embedded per pass (the batch-1 pass takes the first 64 of them).
SIZES = {False: (3, 5, _CORPUS_SIZE), True: (1, 2, _CORPUS_SIZE)}


def run(quick: bool = False, *, threads: int | None = None, model_dir: Path | None = None) -> dict[str, Any]:
    """Measure; returns {"engines": {name: {"best": {...}, "median": {...}, ...}}, "unavailable": {...}, ...}.

    Cold loads: `rounds` fresh processes per engine. Throughput: one process per engine,
    measurements alternating between them, `repeats` per scenario. Each engine runs in a
    child process (isolate.py); one other than ours that crashes is listed under
    "unavailable" as "crashed (signal N)" and the rest goes on."""
    model_dir = model_dir or _default_model_dir()
    names = ["ours"] + (["sentence-transformers"] if _have_sentence_transformers() else [])
    unavailable = {} if "sentence-transformers" in names else {"sentence-transformers": ST_MISSING}
    rounds, repeats, texts = SIZES[quick]
    eng = _Engines(names, model_dir, threads, texts)
    cold: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(rounds - 1):  # the last round's processes stay for the throughput runs
        for name in eng.live():
            started = eng.start(name)
            if started:
                cold[name].append(started[1])
                started[0].close()
    children: dict[str, isolate.Worker] = {}
    speeds: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    try:
        for name in eng.live():
            started = eng.start(name)
            if started:
                children[name] = started[0]
                cold[name].append(started[1])
        for size in _BATCH_SIZES:
            scenario = f"batch_{size}"
            for _ in range(repeats):
                for name in eng.live():  # alternate: machine load hits both alike
                    v = eng.measure(name, children[name], scenario)
                    if v is not None:
                        speeds[name].setdefault(scenario, []).append(v)
    finally:
        for child in children.values():
            child.close()
    unavailable.update(eng.lost)

    out: dict[str, Any] = {
        "threads": threads,
        "rounds": rounds,
        "repeats": repeats,
        "texts": texts,
        "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")},
        "engines": {},
        "unavailable": unavailable,
    }
    for name in eng.live():
        out["engines"][name] = _engine_result(speeds[name], cold[name], repeats)
    return out


def _engine_result(speeds: dict[str, list[float]], cold: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    best = {m: max(v) for m, v in speeds.items()}
    median = {m: statistics.median(v) for m, v in speeds.items()}
    for m in ("cold_load_s", "cold_from_exec_s"):
        values = [r[m] for r in cold]
        best[m], median[m] = min(values), statistics.median(values)
    return {
        "version": cold[0]["engine"],
        "blas": cold[0]["blas"],
        "best": best,
        "median": median,
        "samples": {**speeds, "cold_load_s": [r["cold_load_s"] for r in cold]},
        # One dict per repeat (throughput) and per cold round, for callers that
        # summarise samples themselves (nanochat_lite/bench/embedding.py).
        "rounds": [
            {k: v[i] for k, v in speeds.items() if i < len(v)}
            | ({"cold_load_s": cold[i]["cold_load_s"]} if i < len(cold) else {})
            for i in range(max(repeats, len(cold)))
        ],
    }


def _table(result: dict[str, Any]) -> str:
    header = f"{'engine':<22} {'stat':<6} {'b=1 s/s':>9} {'b=32 s/s':>9} {'b=256 s/s':>10} {'cold s':>7} {'+exec s':>8}"
    lines = [
        f"threads={result['threads'] or 'default'}  cold rounds={result['rounds']}  "
        f"repeats={result['repeats']}  "
        f"OPENBLAS env: {result['openblas_env'] or 'none set'}",
        header,
        "-" * len(header),
    ]
    for engine, data in result["engines"].items():
        for stat in ("best", "median"):
            d = data[stat]
            lines.append(
                f"{engine:<22} {stat:<6} {d['batch_1']:>9.1f} {d['batch_32']:>9.1f} {d['batch_256']:>10.1f} "
                f"{d['cold_load_s']:>7.3f} {d['cold_from_exec_s']:>8.3f}"
            )
    for engine, data in result["engines"].items():
        lines.append(f"{engine}: {data['version']}; BLAS: {json.dumps(data['blas'])}")
    for engine, why in result["unavailable"].items():
        lines.append(f"{engine}: {why}")
    lines.append("s/s = sentences per second; cold = first embedding after the process wants it; "
                 "+exec = the same from spawning the interpreter")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Embedding throughput and cold load.")
    parser.add_argument("--quick", action="store_true", help="one round, fewer repeats")
    parser.add_argument("--threads", type=int, default=None, help="BLAS / torch threads (default: theirs)")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = parser.parse_args(argv)
    result = run(args.quick, threads=args.threads, model_dir=args.model_dir)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
