"""Embeddings section of `nanochat-lite bench`: sentences/s at batch 1, 32 and 256, summarised.

The measuring is `embeddings_speed.run` (worker processes, alternating engines);
sentence-transformers is timed beside ours when it is importable. This module only
turns its per-round samples into median/min/max per batch size.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

BATCHES = (1, 32, 256)


def run(quick: bool, threads: int, model_dir: Path) -> dict[str, Any]:
    """{"engines": {name: {"version", "batch_N": {median, min, max, n}, "cold_load_s": {...}}}, ...}."""
    from . import embeddings_speed

    raw = embeddings_speed.run(quick, threads=threads, model_dir=model_dir)
    engines: dict[str, Any] = {}
    for name, data in raw["engines"].items():
        rounds = data["rounds"]
        engine: dict[str, Any] = {"version": data["version"]}
        for key in [f"batch_{b}" for b in BATCHES] + ["cold_load_s"]:
            values = [r[key] for r in rounds if key in r]
            if values:
                digits = 3 if key == "cold_load_s" else 1
                engine[key] = {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
                               "max": round(max(values), digits), "n": len(values)}
        engines["nanochat-lite" if name == "ours" else name] = engine
    for name, why in raw["unavailable"].items():  # not installed, or its child crashed
        engines[name] = why
    return {"status": "ok", "threads": threads, "rounds": raw["rounds"], "texts": raw["texts"],
            "method": (f"cold load: {raw['rounds']} fresh child process(es) per engine; throughput: "
                       f"{raw['repeats']} passes over {raw['texts']} texts (search queries to 400-word passages) "
                       "per batch size, engines alternating"),
            "engines": engines}  # "nanochat-lite": nanochat_lite.embeddings.Embedder (numpy)
