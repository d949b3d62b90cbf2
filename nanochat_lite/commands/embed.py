"""``nanochat-lite embed``: sentence embeddings from the command line.

    nanochat-lite embed "A man is eating food." "Someone eats a meal."
    nanochat-lite embed --similarity "first text" "second text" "third text"
    nanochat-lite embed --json "some text"

Prints each text's vector (rounded to 4 decimals; --json: full float32 precision as
JSON), or with --similarity the cosine similarity matrix of the texts. Pulls the
embedding model through the model store on first use. Imported only when the command
is named, so other commands do not pay for numpy.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config

_ROUND = 4  # decimals in the plain-text output


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``embed`` on the main CLI's subparsers."""
    p = subparsers.add_parser("embed", help="print sentence embeddings or their cosine similarities")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed (quote each one)")
    p.add_argument("--similarity", action="store_true", help="print the cosine similarity matrix instead")
    p.add_argument("--json", action="store_true", help="print JSON rather than a table")
    p.add_argument("--threads", "-t", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--home", help="model cache folder (env NANOCHAT_LITE_HOME)")
    return p


def run(args: argparse.Namespace, config: Config) -> int:
    """Run the command; returns the exit status (2: a problem the user can fix).

    The model is pulled into (or found in) `config.home`.
    """
    from nanochat_lite import models
    from nanochat_lite.embeddings import Embedder, EmbeddingError

    threads = getattr(args, "threads", None)
    try:
        if threads is not None and threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        model_dir = models.ensure(config.home, models.DEFAULT_EMBEDDING, progress=_say)
        embedder = Embedder(model_dir, threads=threads)
        result = embedder.embed(list(args.texts))
    except (models.ModelError, EmbeddingError, ValueError, OSError) as e:
        _say(f"nanochat-lite embed: {e}")
        return 2

    vectors = result.vectors
    if args.similarity:
        matrix = vectors @ vectors.T  # rows are unit length: dot product = cosine
        if args.json:
            print(json.dumps({"model": embedder.model_name, "texts": args.texts,
                              "similarity": [[float(v) for v in row] for row in matrix]}))
        else:
            print(_similarity_table(args.texts, matrix))
        return 0
    if args.json:
        print(json.dumps({
            "model": embedder.model_name,
            "dim": embedder.dim,
            "data": [
                {"text": t, "embedding": [float(v) for v in vec], "tokens": n, "truncated": cut}
                for t, vec, n, cut in zip(args.texts, vectors, result.token_counts, result.truncated)
            ],
        }))
        return 0
    for text, vec, n, cut in zip(args.texts, vectors, result.token_counts, result.truncated):
        note = f", truncated to {embedder.max_tokens}" if cut else ""
        print(f"{_label(text)} ({n} tokens{note}, {embedder.dim} dims)")
        print("[" + ", ".join(f"{v:.{_ROUND}f}" for v in vec) + "]")
    return 0


def _similarity_table(texts: list[str], matrix: Any) -> str:
    """Cosine matrix with numbered rows; the texts are listed under it.

    ['a', 'b'] -> "       1      2\\n1  1.000  0.123\\n2  0.123  1.000\\n\\n1: 'a'\\n2: 'b'"
    """
    width = len(str(len(texts)))
    lines = [" " * width + "".join(f"{j + 1:>7}" for j in range(len(texts)))]
    for i, row in enumerate(matrix):
        lines.append(f"{i + 1:>{width}}" + "".join(f"{v:>7.3f}" for v in row))
    lines.append("")
    lines += [f"{i + 1:>{width}}: {_label(t)}" for i, t in enumerate(texts)]
    return "\n".join(lines)


def _label(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
