"""Embedding speed: ours (ONNX Runtime) with sentence-transformers beside it, on the same texts.

    .venv/bin/python -m nanochat_lite.bench.embeddings_speed [--quick] [--threads N] [--json]
        [--st-python /path/to/venv/bin/python]

Prints issue #21's table: sentences per second for two kinds of input, 6–14-word
sentences and 140–180-word passages, in calls of 1 text (the first 64 sentences or 32
passages, one by one), 32 and 256 texts; beside ours, sentence-transformers on the same
texts and the ratio; and the minimum cosine between the two engines' vectors for every
text. The texts are real prose, cut from Python's own documentation as the standard
library ships it (`pydoc_data.topics`), made once in this process and handed to both
engines, so the two always embed the very same inputs whatever interpreter runs theirs.

sentence-transformers is no dependency of ours. Its engine runs under the interpreter
given by `--st-python PATH` (or the environment variable NANOCHAT_LITE_ST_PYTHON), e.g.
a separate venv with sentence_transformers and torch; without either, under this
interpreter when it can import sentence_transformers; else its column says "not
installed". Each engine runs in its own child process (isolate.py: torch's OpenMP threads
spin after a call and would slow ONNX Runtime in the same process); the parent asks the
two children for one measurement at a time, alternating which goes first, so a load
spike from elsewhere on the machine hits both alike. A child other than ours that
crashes is "crashed (signal N)" and the run goes on without it. Figures are median
(min–max) over the repeats; the ratio is ours over theirs, of the medians and of the
bests: on a machine whose cores are shared, the ratio in one run is what counts.

`run(quick=False) -> dict` is the entry point for other code (the `embeddings` section
of `nanochat-lite bench`); importing this module measures nothing.

Not measured: memory use, the HTTP layer, texts past the 256-piece limit (the passages
stay under it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from . import isolate

BATCH_SIZES = (1, 32, 256)
# (label in the table, key of inputs(), texts embedded one by one for the batch-1 figure)
KINDS = (("6–14 words", "sentences", 64), ("140–180 words", "chunks", 32))
ST_PYTHON_ENV = "NANOCHAT_LITE_ST_PYTHON"
ST_MISSING = "not installed (pip install sentence-transformers, or give --st-python PATH)"
OURS, ST = "nanochat-lite", "sentence-transformers"
# By --quick: (cold rounds: fresh processes per engine, throughput repeats per row, texts
# per kind; calls of 1 take the first 64 or 32 of them).
SIZES = {False: (3, 5, 256), True: (1, 1, 64)}


# -- the inputs -----------------------------------------------------------------------------
def _prose() -> list[str]:
    """Paragraphs of running text from pydoc_data, without code, grammar rules or tables."""
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            para = " ".join(para.split())
            if para.count(" ") < 5 or para.startswith((">>>", "...")):
                continue
            if sum(c.isalpha() or c == " " for c in para) < 0.95 * len(para):
                continue  # mostly symbols: code, grammar, tables
            out.append(para)
    return out


def inputs(n: int = 256) -> dict[str, list[str]]:
    """{"sentences": n sentences of 6–14 words, "chunks": n windows of 140–180 words},
    deterministic for one Python version (its pydoc_data)."""
    prose = _prose()
    sentences = sorted({s for para in prose for s in re.split(r"(?<=[.!?])\s+", para) if 6 <= len(s.split()) <= 14})
    random.Random(1).shuffle(sentences)
    words = " ".join(prose).split()
    rng = random.Random(2)
    chunks, pos = [], 0
    while len(chunks) < n:
        size = rng.randint(140, 180)
        if pos + size > len(words):
            pos = 0
        chunks.append(" ".join(words[pos : pos + size]))
        pos += size + rng.randint(0, 50)
    rng.shuffle(chunks)
    return {"sentences": sentences[:n], "chunks": chunks}


# -- the child ------------------------------------------------------------------------------
def embed_worker(engine: str, model_dir: str, threads: int | None, texts: dict[str, list[str]]
                 ) -> tuple[dict[str, Any], Callable[[dict[str, Any]], dict[str, Any]]]:
    """In a child process (isolate.Worker): load one engine and embed a first text.

    The ready info is {"engine", "cold_load_s", "ready_at"}; the cold-load clock starts
    here, before numpy is imported. Then {"kind", "batch"} answers {"rate": texts/s} for
    one pass over that kind's texts in calls of `batch`, and {"kind", "save": path}
    writes that kind's L2-normalised vectors to `path` (.npy) for the cosine check."""
    start = time.perf_counter()
    embed: Callable[[list[str]], Any]
    if engine == "ours":
        from nanochat_lite.embeddings import Embedder

        embedder = Embedder(Path(model_dir), threads=threads)

        def embed(batch: list[str]) -> Any:
            return embedder.embed(batch).vectors

        embed(["The first sentence."])
        import onnxruntime

        version = f"nanochat_lite.embeddings (ONNX Runtime {onnxruntime.__version__})"
    else:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import sentence_transformers
        import torch
        from sentence_transformers import SentenceTransformer

        if threads is not None:
            torch.set_num_threads(threads)
        model = SentenceTransformer(model_dir, device="cpu")

        def embed(batch: list[str]) -> Any:
            return model.encode(batch, show_progress_bar=False, convert_to_numpy=True)

        embed(["The first sentence."])
        version = f"sentence-transformers {sentence_transformers.__version__} (torch {torch.__version__})"
    ready = {"engine": version, "cold_load_s": time.perf_counter() - start, "ready_at": time.time()}
    for kind in texts.values():  # warm caches and lazy paths at both lengths
        embed(kind[:32])

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        pool = texts[str(request["kind"])]
        if "save" in request:
            import numpy as np

            vectors = np.asarray(embed(pool), np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            np.save(str(request["save"]), vectors, allow_pickle=False)
            return {"saved": len(pool)}
        size = int(request["batch"])
        if size == 1:
            pool = pool[: int(request["one_by_one"])]
        calls = [pool[i : i + size] for i in range(0, len(pool), size)]
        started = time.perf_counter()
        for call in calls:
            embed(call)
        return {"rate": len(pool) / (time.perf_counter() - started)}

    return ready, handle


# Engine name -> (the child's factory, its `engine` argument).
ENGINES: dict[str, tuple[Callable[..., Any] | str, str]] = {OURS: (embed_worker, "ours"), ST: (embed_worker, "st")}


# -- the parent -----------------------------------------------------------------------------
def _have_sentence_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("sentence_transformers") is not None


def st_python(explicit: str | None = None) -> tuple[str | None, str]:
    """(the interpreter to run sentence-transformers with, or None and the row's reason).

    `explicit` (--st-python), else $NANOCHAT_LITE_ST_PYTHON, else this interpreter when it
    can import sentence_transformers."""
    given = explicit or os.environ.get(ST_PYTHON_ENV)
    if given:
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            return None, f"not installed: {given} (--st-python / ${ST_PYTHON_ENV}) is not an executable file"
        return str(path), ""
    if _have_sentence_transformers():
        return sys.executable, ""
    return None, ST_MISSING


class _Engines:
    """One child process per engine; an engine other than ours whose child crashes or
    fails is dropped and its reason kept in `lost` ("crashed (signal 11)")."""

    def __init__(self, pythons: dict[str, str], model_dir: Path, threads: int | None,
                 texts: dict[str, list[str]]) -> None:
        self.pythons, self.model_dir, self.threads, self.texts = pythons, model_dir, threads, texts
        self.lost: dict[str, str] = {}

    def live(self) -> list[str]:
        return [n for n in self.pythons if n not in self.lost]

    def start(self, name: str) -> tuple[isolate.Worker, dict[str, Any]] | None:
        python = self.pythons[name]
        env = {"HF_HUB_OFFLINE": "1"}
        if python != sys.executable:  # another venv: it finds this package where this process found it
            root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        try:
            factory, engine = ENGINES[name]
            w = isolate.Worker(factory, python=python, env=env, engine=engine, model_dir=str(self.model_dir),
                               threads=self.threads, texts=self.texts)
        except isolate.PeerFailed as e:
            self._lose(name, e)
            return None
        ready = dict(w.info)
        ready["cold_from_exec_s"] = ready.pop("ready_at") - w.spawned
        return w, ready

    def ask(self, name: str, w: isolate.Worker, request: dict[str, Any]) -> dict[str, Any] | None:
        try:
            answer: dict[str, Any] = w.call(request)
            return answer
        except isolate.PeerFailed as e:
            w.close()
            self._lose(name, e)
            return None

    def _lose(self, name: str, e: isolate.PeerFailed) -> None:
        if name == OURS:  # our own engine failing is the section's failure
            raise e
        self.lost[name] = isolate.row_text(e)


def _default_model_dir() -> Path:
    from nanochat_lite import models
    from nanochat_lite.config import Config

    return models.ensure(Config.from_env().home, models.DEFAULT_EMBEDDING)


def _summary(values: list[float], digits: int = 1) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}


def run(quick: bool = False, *, threads: int | None = None, model_dir: Path | None = None,
        st_python_path: str | None = None) -> dict[str, Any]:
    """Measure both engines; a JSON-ready dict (the `embeddings` section's result):

    {"status": "ok", "engines": {name: {"version", "cold_load_s": summary, ...} or the
    reason it has no figures}, "rows": [{"input", "batch", "texts", name: summary, ...,
    "ratio_median", "ratio_best"}], "min_cosine": {input: cosine} or a reason, ...}."""
    model_dir = model_dir or _default_model_dir()
    rounds, repeats, n_texts = SIZES[quick]
    texts = inputs(n_texts)
    pythons = {OURS: sys.executable}
    st, why_not = st_python(st_python_path)
    unavailable = {} if st else {ST: why_not}
    if st:
        pythons[ST] = st
    load_start = os.getloadavg()[0]
    eng = _Engines(pythons, model_dir, threads, texts)
    cold: dict[str, list[dict[str, Any]]] = {name: [] for name in pythons}
    for _ in range(rounds - 1):  # the last round's processes stay for the throughput runs
        for name in eng.live():
            started = eng.start(name)
            if started:
                cold[name].append(started[1])
                started[0].close()
    children: dict[str, isolate.Worker] = {}
    rates: dict[tuple[str, int], dict[str, list[float]]] = {}
    cosines: dict[str, float] | str = f"not measured: {ST} has no figures"
    try:
        for name in eng.live():
            started = eng.start(name)
            if started:
                children[name] = started[0]
                cold[name].append(started[1])
        for _label, kind, one_by_one in KINDS:
            for size in BATCH_SIZES:
                row = rates[(kind, size)] = {}
                for repeat in range(repeats):
                    order = eng.live() if repeat % 2 == 0 else eng.live()[::-1]  # load hits both alike
                    for name in order:
                        answer = eng.ask(name, children[name], {"kind": kind, "batch": size,
                                                                "one_by_one": one_by_one})
                        if answer is not None:
                            row.setdefault(name, []).append(float(answer["rate"]))
        if ST in eng.live():
            cosines = _min_cosines(eng, children)
    finally:
        for child in children.values():
            child.close()
    unavailable.update(eng.lost)
    return _result(quick, threads, (rounds, repeats, n_texts), eng.live(), cold, rates, cosines, unavailable,
                   (load_start, os.getloadavg()[0]))


def _min_cosines(eng: _Engines, children: dict[str, isolate.Worker]) -> dict[str, float] | str:
    """Per kind of input, the smallest cosine between the two engines' vectors of one text."""
    import numpy as np

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="nanochat-embed-cos-") as folder:
        for label, kind, _ in KINDS:
            vectors = {}
            for name in (OURS, ST):
                path = os.path.join(folder, f"{kind}-{name}.npy")
                if eng.ask(name, children[name], {"kind": kind, "save": path}) is None:
                    return f"not measured: {ST} {eng.lost.get(ST, 'failed')}"
                vectors[name] = np.load(path, allow_pickle=False)
            out[label] = round(float(np.min(np.sum(vectors[OURS] * vectors[ST], axis=1))), 6)
    return out


def _result(quick: bool, threads: int | None, sizes: tuple[int, int, int], live: list[str],
            cold: dict[str, list[dict[str, Any]]], rates: dict[tuple[str, int], dict[str, list[float]]],
            cosines: dict[str, float] | str, unavailable: dict[str, str], load: tuple[float, float]
            ) -> dict[str, Any]:
    rounds, repeats, n_texts = sizes
    engines: dict[str, Any] = {}
    for name in live:
        engines[name] = {"version": cold[name][0]["engine"],
                         "cold_load_s": _summary([c["cold_load_s"] for c in cold[name]], 3),
                         "cold_from_exec_s": _summary([c["cold_from_exec_s"] for c in cold[name]], 3)}
    engines.update(unavailable)
    rows = []
    for label, kind, one_by_one in KINDS:
        for size in BATCH_SIZES:
            samples = rates[(kind, size)]
            row: dict[str, Any] = {"input": label, "batch": size,
                                   "texts": min(one_by_one, n_texts) if size == 1 else n_texts}
            for name in (OURS, ST):
                row[name] = _summary(samples.get(name, [])) if name in live else engines[name]
            ours, theirs = samples.get(OURS, []), samples.get(ST, []) if ST in live else []
            row["ratio_median"] = round(statistics.median(ours) / statistics.median(theirs), 2) if theirs else None
            row["ratio_best"] = round(max(ours) / max(theirs), 2) if theirs else None
            rows.append(row)
    return {"status": "ok", "quick": quick, "threads": threads, "rounds": rounds, "repeats": repeats,
            "texts": n_texts, "rows": rows, "engines": engines, "min_cosine": cosines,
            "load_average": {"start": round(load[0], 2), "end": round(load[1], 2)},
            "method": (f"{n_texts} texts per kind from pydoc_data, the same for both engines; throughput: "
                       f"{repeats} pass(es) per row, engines alternating which goes first; cold load: {rounds} "
                       "fresh child process(es) per engine")}


def _cell(d: Any) -> str:
    if isinstance(d, str):
        return d
    return f"{d['median']:g} ({d['min']:g}–{d['max']:g})" if d.get("n") else "-"


def table(r: dict[str, Any]) -> str:
    """The result as issue #21's table (plain text)."""
    lines = [f"threads={r['threads'] or 'default'}  repeats={r['repeats']}  texts per kind={r['texts']}  "
             f"load average {r['load_average']['start']} at start, {r['load_average']['end']} at end",
             f"{'input':<15}{'batch':>6}  {'ours (ONNX Runtime)':<24}{'sentence-transformers':<26}{'ratio':>14}"]
    lines.append("-" * len(lines[-1]))
    for row in r["rows"]:
        ratio = f"{row['ratio_median']:.2f}x ({row['ratio_best']:.2f}x)" if row["ratio_median"] else "-"
        lines.append(f"{row['input']:<15}{row['batch']:>6}  {_cell(row[OURS]):<24}{_cell(row[ST]):<26}{ratio:>14}")
    lines.append(f"min cosine ours vs {ST}: {json.dumps(r['min_cosine'], ensure_ascii=False)}")
    for name, v in r["engines"].items():
        lines.append(f"{name}: {v if isinstance(v, str) else v['version'] + '; cold load ' + _cell(v['cold_load_s'])}")
    lines.append("sentences/s, median (min–max); ratio = ours / theirs, of the medians (of the bests)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Embedding throughput, ours beside sentence-transformers.")
    parser.add_argument("--quick", action="store_true", help="one round, one repeat, 64 texts per kind")
    parser.add_argument("--threads", type=int, default=None, help="threads per engine (default: theirs)")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--st-python", metavar="PATH", default=None,
                        help=f"interpreter that can import sentence_transformers (env {ST_PYTHON_ENV})")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = parser.parse_args(argv)
    result = run(args.quick, threads=args.threads, model_dir=args.model_dir, st_python_path=args.st_python)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
