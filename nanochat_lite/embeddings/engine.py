"""`Embedder`: texts in, L2-normalised sentence vectors out, as sentence-transformers gives.

BERT WordPiece through Hugging Face `tokenizers`; the encoder through ONNX Runtime on a
graph built from the model's own safetensors (graph.py); mean pooling over the real
tokens and L2 normalisation in numpy.

How it stays fast on a CPU: texts are sorted by length and cut into small runs of
similar length (padding wastes at most ~_MAX_PADDING of a run, and a run is small
enough that its activations stay in cache), the way sentence-transformers sorts.
ONNX Runtime pre-packs the weights once, so even one short text costs little, and its
fused kernels keep attention, LayerNorm and GELU out of Python. A call of several runs
hands them to `threads` Python threads at once (ONNX Runtime releases the GIL), so
each core mostly works through whole runs rather than meeting the other at a barrier
after every operator; on a busy shared machine that measured ~1.1-1.3x faster than
one run at a time. A call of one run (one text) is split inside its operators.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .graph import ensure_graph
from .model_files import MAX_TOKENS, REQUIRED_FILES, EmbeddingError, read_config

_RUN_TOKENS = 256  # padded pieces per ONNX Runtime run at most, unless one text is longer
_MAX_PADDING = 1.05  # a run's padded size over its real pieces at most (beyond its first text)
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: np.ndarray  # (n, dim) float32, rows of L2 norm 1, in the order of the texts
    token_counts: list[int]  # pieces fed to the model per text, [CLS]/[SEP] included, <= max_tokens
    truncated: list[bool]  # True where the text had more than max_tokens pieces


@dataclass(frozen=True)
class _Loaded:
    tokenizer: Any  # tokenizers.Tokenizer
    session: Any  # onnxruntime.InferenceSession
    pool: ThreadPoolExecutor | None  # runs several runs at once; None with one thread


class Embedder:
    """Sentence embeddings for one model folder.

    Construction is cheap: it reads config.json and checks that the files exist. The
    tokenizer, the graph and the ONNX Runtime session load on the first `embed`, or on
    `load()`, and `load_seconds` records how long that took (the first load of a model
    folder also builds the graph, about a second; later loads read it back). Safe to
    share between threads: loading happens once, and calls compute one at a time (they
    would only share the same cores).

    `threads` is how many threads one `embed` computes on: ONNX Runtime's intra-op
    pool, and as many Python threads handing it runs; None means every core this
    process may use. ONNX Runtime's threads sleep rather than spin between operators:
    spinning measured 1.5-2x slower on a shared, busy 2-core machine, and would take
    CPU from the chat engine between calls.
    """

    max_tokens: int = MAX_TOKENS

    def __init__(self, model_dir: Path, *, threads: int | None = None) -> None:
        self.model_dir = Path(model_dir)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be a positive number or None, got {threads}")
        self.threads = threads
        missing = [name for name in REQUIRED_FILES if not (self.model_dir / name).is_file()]
        if missing:
            raise EmbeddingError(
                f"{self.model_dir}: not an embedding model folder, missing {', '.join(missing)}. "
                "Pull it again with the model store (all-minilm-l6-v2)."
            )
        self._config = read_config(self.model_dir / "config.json")
        self.dim: int = self._config["hidden_size"]
        self.model_name: str = self.model_dir.name
        self.load_seconds: float | None = None
        self._loaded_parts: _Loaded | None = None
        self._load_lock = threading.Lock()
        self._compute_lock = threading.Lock()

    def load(self) -> None:
        """Load the tokenizer and the encoder now rather than on the first `embed`."""
        self._loaded()

    def embed(self, texts: list[str]) -> EmbeddingResult:
        """Embed each text; rows of `vectors` follow the order of `texts`.

        Any string is valid: the empty string and whitespace-only strings embed as
        [CLS] [SEP]; lone surrogates (not encodable as UTF-8) become U+FFFD first.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings; wrap a single text as [text]")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
        parts = self._loaded()
        if not texts:
            return EmbeddingResult(np.zeros((0, self.dim), np.float32), [], [])
        ids = _encode(parts.tokenizer, texts)
        truncated = [len(x) > MAX_TOKENS for x in ids]
        # Keep [CLS] + the first MAX_TOKENS-2 pieces + [SEP], as tokenizers' own truncation does.
        ids = [x[: MAX_TOKENS - 1] + x[-1:] if cut else x for x, cut in zip(ids, truncated)]
        counts = [len(x) for x in ids]
        vectors = np.empty((len(ids), self.dim), np.float32)
        runs = list(_runs(counts))

        def encode(run: list[int]) -> np.ndarray:
            return _encode_run(parts.session, [ids[i] for i in run])

        with self._compute_lock:
            done = map(encode, runs) if parts.pool is None or len(runs) < 2 else parts.pool.map(encode, runs)
            for run, run_vectors in zip(runs, done):  # pool.map re-raises a run's exception here
                vectors[run] = run_vectors
        return EmbeddingResult(vectors=vectors, token_counts=counts, truncated=truncated)

    def _loaded(self) -> _Loaded:
        parts = self._loaded_parts
        if parts is not None:
            return parts
        with self._load_lock:
            if self._loaded_parts is None:
                start = time.perf_counter()
                threads = self.threads or _usable_cores()
                pool = ThreadPoolExecutor(threads, thread_name_prefix="embed") if threads > 1 else None
                self._loaded_parts = _Loaded(_tokenizer(self.model_dir),
                                             _session(self.model_dir, self._config, threads), pool)
                self.load_seconds = time.perf_counter() - start
            return self._loaded_parts


def _tokenizer(model_dir: Path) -> Any:
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for a bad file
        raise EmbeddingError(f"{path}: not a readable tokenizer ({e}). Pull the model again.") from e
    # tokenizer.json ships with truncation at 128 and fixed padding to 128; we cut at
    # MAX_TOKENS ourselves (to know what was cut) and pad per run.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _session(model_dir: Path, config: dict[str, Any], threads: int) -> Any:
    import onnxruntime  # type: ignore[import-untyped]  # ships no type information

    graph = ensure_graph(model_dir, config)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see Embedder
    options.log_severity_level = 3  # errors only: its warnings are about unused optimisations
    try:
        return onnxruntime.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options,
                                            providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types are not importable by a stable name
        where = "the graph built in memory" if isinstance(graph, bytes) else str(graph)
        raise EmbeddingError(f"ONNX Runtime cannot load {where} ({e}). Delete the file and load again; "
                             "if it persists, pull the model again.") from e


def _usable_cores() -> int:
    """Cores this process may run on (fewer than os.cpu_count() under taskset or a cgroup)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    try:
        encodings = tokenizer.encode_batch(texts)
    except TypeError:
        # tokenizers rejects strings that are not valid UTF-8 (lone surrogates).
        encodings = tokenizer.encode_batch([_SURROGATES.sub("\ufffd", t) for t in texts])
    return [e.ids for e in encodings]


def _runs(counts: list[int]) -> Iterator[list[int]]:
    """Indices of the texts, by length, cut into runs for one ONNX Runtime call each.

    A run grows while its padded size (texts x longest) stays within _RUN_TOKENS and
    within _MAX_PADDING of its real pieces. Lengths [5, 5, 5, 6, 200]: [0, 1, 2], [3], [4]
    (padding the 5s to 6 would waste 14%).
    """
    order = sorted(range(len(counts)), key=counts.__getitem__)
    run: list[int] = []
    real = 0
    for i in order:
        padded = counts[i] * (len(run) + 1)
        if run and (padded > _RUN_TOKENS or padded > _MAX_PADDING * (real + counts[i])):
            yield run
            run, real = [], 0
        run.append(i)
        real += counts[i]
    if run:
        yield run


def padded(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of a run -> (input_ids, attention_mask), zero-padded to the longest."""
    longest = max(len(x) for x in ids)
    input_ids = np.zeros((len(ids), longest), np.int64)
    mask = np.zeros((len(ids), longest), np.int32)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return input_ids, mask


def _encode_run(session: Any, ids: list[list[int]]) -> np.ndarray:
    """Texts of similar length -> (texts, hidden) normalised mean-pooled vectors."""
    input_ids, mask = padded(ids)
    (hidden,) = session.run(["hidden"], {"input_ids": input_ids, "attention_mask": mask})
    # Mean over real tokens: padded rows of `hidden` hold values, so mask them out.
    pooled: np.ndarray = np.einsum("bsh,bs->bh", hidden, mask.astype(np.float32))
    pooled /= mask.sum(axis=1, dtype=np.float32)[:, None]
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
    return pooled
