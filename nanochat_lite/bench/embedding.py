"""Embeddings section: sentences/s at batch 1, 32 and 256 through `bench/embeddings_bench.py`.

That script lives in the source checkout, not in the installed package, so it is
loaded by path; without it (an installed wheel) the section says "not available".
sentence-transformers is timed by the same script when it is importable.
"""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "embeddings_bench.py"
BATCHES = (1, 32, 256)


def _load_script() -> Any:
    if not SCRIPT.exists():
        raise FileNotFoundError(f"{SCRIPT} not found (it ships with the source checkout, not the package)")
    spec = importlib.util.spec_from_file_location("_nanochat_embeddings_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise AttributeError(f"{SCRIPT} has no run(quick) function")
    return module


def run(quick: bool, threads: int, model_dir: Path) -> dict[str, Any]:
    """{"engines": {name: {"version", "batch_N": {median, min, max, n}, "cold_load_s": {...}}}, ...}."""
    try:
        script = _load_script()
    except Exception as e:
        return {"status": "not available", "reason": f"{type(e).__name__}: {e}"}
    raw = script.run(quick, threads=threads, model_dir=model_dir)
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
    if "sentence-transformers" not in engines:
        engines["sentence-transformers"] = "not installed"
    return {"status": "ok", "threads": threads, "rounds": raw["rounds"],
            "method": ("each round is a fresh child process; per round, the best of "
                       f"{1 if quick else 3} passes over 256 texts (search queries to 400-word passages)"),
            "engines": engines}  # "nanochat-lite": nanochat_lite.embeddings.Embedder (numpy)
