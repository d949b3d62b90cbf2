"""Embeddings section of `nanochat-lite bench`: `embeddings_speed.run` with the suite's settings.

The measuring, the inputs and the result's shape are embeddings_speed.py's: ours (ONNX
Runtime) and sentence-transformers on the same texts, 6–14 words and 140–180 words, in
calls of 1, 32 and 256, with the ratio and the minimum cosine between the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run(quick: bool, threads: int | None, model_dir: Path, st_python: str | None = None) -> dict[str, Any]:
    """The section's JSON-ready result (see embeddings_speed.run)."""
    from . import embeddings_speed

    return embeddings_speed.run(quick, threads=threads, model_dir=model_dir, st_python_path=st_python)
