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
spike from elsewhere on the machine hits both alike. The table shows the best and the
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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


def _worker(engine: str, model_dir: Path, threads: int | None) -> None:
    """Child process: report the cold load, then time one scenario per request on stdin.

    Protocol, one JSON object per line: it prints {"cold_load_s", "ready_at", "engine",
    "blas"} once ready, then for each line "batch_N" it reads, {"batch_N": sentences/s}.
    """
    start = time.perf_counter()  # the cold-load clock starts before numpy is imported
    if engine == "ours":
        from nanochat_lite.embeddings import Embedder

        embedder = Embedder(model_dir, threads=threads)
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
        model = SentenceTransformer(str(model_dir), device="cpu")
        model.encode(["The first sentence."])
        cold = time.perf_counter() - start

        def embed(texts: list[str]) -> Any:
            return model.encode(texts, show_progress_bar=False)

        version = f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}"

    ready = {"engine": version, "cold_load_s": cold, "ready_at": time.time(), "blas": _blas_info()}
    print(json.dumps(ready), flush=True)
    texts = corpus()
    embed(texts[:32])  # warm caches and lazy paths
    for line in sys.stdin:
        scenario = line.strip()
        size = int(scenario.removeprefix("batch_"))
        pool = texts[:64] if size == 1 else texts
        chunks = [pool[i : i + size] for i in range(0, len(pool), size)]
        print(json.dumps({scenario: _time_chunks(embed, chunks)}), flush=True)


class _Child:
    """A worker process of one engine, driven line by line."""

    def __init__(self, engine: str, model_dir: Path, threads: int | None) -> None:
        cmd = [sys.executable, "-m", "nanochat_lite.bench.embeddings_speed", "--worker", engine, "--model-dir", str(model_dir)]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        spawned = time.time()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.ready = self._read()
        self.ready["cold_from_exec_s"] = self.ready.pop("ready_at") - spawned

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"benchmark worker exited early (code {self.proc.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def measure(self, scenario: str) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(scenario + "\n")
        self.proc.stdin.flush()
        return float(self._read()[scenario])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _have_sentence_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("sentence_transformers") is not None


def _default_model_dir() -> Path:
    from nanochat_lite import models
    from nanochat_lite.config import Config

    return models.ensure(Config.from_env().home, models.DEFAULT_EMBEDDING)


def run(quick: bool = False, *, threads: int | None = None, model_dir: Path | None = None) -> dict[str, Any]:
    """Measure; returns {"engines": {name: {"best": {...}, "median": {...}, ...}}, ...}.

    Cold loads: `rounds` fresh processes per engine. Throughput: one process per engine,
    measurements alternating between them, `repeats` per scenario.
    """
    model_dir = model_dir or _default_model_dir()
    engines = {"ours": "ours"}
    if _have_sentence_transformers():
        engines["sentence-transformers"] = "st"
    rounds, repeats = (1, 2) if quick else (3, 5)
    cold: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
    for _ in range(rounds - 1):  # the last round's processes stay for the throughput runs
        for name, engine in engines.items():
            child = _Child(engine, model_dir, threads)
            cold[name].append(child.ready)
            child.close()
    children = {name: _Child(engine, model_dir, threads) for name, engine in engines.items()}
    for name, child in children.items():
        cold[name].append(child.ready)
    speeds: dict[str, dict[str, list[float]]] = {name: {} for name in engines}
    try:
        for size in _BATCH_SIZES:
            scenario = f"batch_{size}"
            for _ in range(repeats):
                for name, child in children.items():  # alternate: machine load hits both alike
                    speeds[name].setdefault(scenario, []).append(child.measure(scenario))
    finally:
        for child in children.values():
            child.close()

    out: dict[str, Any] = {
        "threads": threads,
        "rounds": rounds,
        "repeats": repeats,
        "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")},
        "engines": {},
    }
    for name in engines:
        best = {m: max(v) for m, v in speeds[name].items()}
        median = {m: statistics.median(v) for m, v in speeds[name].items()}
        for m in ("cold_load_s", "cold_from_exec_s"):
            values = [r[m] for r in cold[name]]
            best[m], median[m] = min(values), statistics.median(values)
        out["engines"][name] = {
            "version": cold[name][0]["engine"],
            "blas": cold[name][0]["blas"],
            "best": best,
            "median": median,
            "samples": {**speeds[name], "cold_load_s": [r["cold_load_s"] for r in cold[name]]},
            # One dict per repeat (throughput) and per cold round, for callers that
            # summarise samples themselves (nanochat_lite/bench/embedding.py).
            "rounds": [
                {k: v[i] for k, v in speeds[name].items() if i < len(v)}
                | ({"cold_load_s": cold[name][i]["cold_load_s"]} if i < len(cold[name]) else {})
                for i in range(max(repeats, len(cold[name])))
            ],
        }
    return out


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
    lines.append("s/s = sentences per second; cold = first embedding after the process wants it; "
                 "+exec = the same from spawning the interpreter")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Embedding throughput and cold load.")
    parser.add_argument("--quick", action="store_true", help="one round, fewer repeats")
    parser.add_argument("--threads", type=int, default=None, help="BLAS / torch threads (default: theirs)")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("--worker", choices=("ours", "st"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.model_dir, args.threads)
        return 0
    result = run(args.quick, threads=args.threads, model_dir=args.model_dir)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
