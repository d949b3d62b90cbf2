"""Background indexing: parsed blocks -> chunks -> vectors -> stored, in one worker thread.

    indexer = Indexer(library, embedder=lambda: runtime_embedder, busy=lambda: chats_running > 0)
    progress = indexer.submit(doc, blocks)     # returns at once; the thread does the rest
    progress.snapshot() -> {"type": "progress", "done": 32, "total": 410}  (or the final event)

One thread, one document at a time, in upload order: the embedder is the bottleneck and
two documents embedding at once would only take turns on the same cores. Each document:
chunk (chunk.py), embed `BATCH_SIZE` chunks at a time (counting `done` after each batch),
then store every chunk and vector in one transaction and add the vectors to the
library; a failure stores nothing but the document's status 'error' with the reason.

Chat first: before each batch, while `busy()` says a chat answer is being generated the
thread waits (up to `MAX_YIELD_S` a batch, so a server that is never idle still indexes).
An embedding batch of 16 chunks of ~200 tokens is ~0.3-0.5 s of both cores here; a chat
turn that starts meanwhile waits at most that for its prefill to get the cores back.

Not handled: resuming after a restart (the bytes are not kept; the document is marked
'error' `interrupted` at start-up), several processes indexing into one database's
in-memory vectors (each sees only its own documents added after start-up).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .blocks import Block, DocumentError
from .chunk import SpanTokenizer, chunk_blocks, minilm_spans
from .library import Library
from .search import chunk_vectors
from .store import Document

BATCH_SIZE = 16  # chunks per embedding call (see the module docstring)
MAX_YIELD_S = 5.0  # the longest a batch waits for chat to go idle
_POLL_S = 0.02  # how often a waiting batch looks at busy()
MAX_REMEMBERED = 10_000  # finished documents whose progress stays in memory (older: read from the store)
log = logging.getLogger("nanochat_lite.documents")


class EmbedderLike(Protocol):
    model_dir: Path
    dim: int

    def embed(self, texts: list[str]) -> Any: ...  # .vectors: (n, dim) float32


@dataclass
class Progress:
    """One document's indexing, shared between the worker thread and the event streams."""

    doc_id: str
    owner: str
    done: int = 0
    total: int = 0
    state: str = "indexing"  # -> "ready" | "error"
    chunks: int = 0
    code: str | None = None
    message: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, Any]:
        """The event a client should see now: progress, or the final ready/error."""
        with self._lock:
            if self.state == "ready":
                return {"type": "ready", "chunks": self.chunks}
            if self.state == "error":
                return {"type": "error", "code": self.code, "message": self.message}
            return {"type": "progress", "done": self.done, "total": self.total}

    def _set(self, **values: Any) -> None:
        with self._lock:
            for name, value in values.items():
                setattr(self, name, value)


class Indexer:
    def __init__(self, library: Library, *, embedder: Callable[[], EmbedderLike], busy: Callable[[], bool] = bool,
                 batch_size: int = BATCH_SIZE, max_yield_s: float = MAX_YIELD_S) -> None:
        self.library = library
        self._embedder = embedder
        self._busy = busy
        self.batch_size = batch_size
        self.max_yield_s = max_yield_s
        self._jobs: queue.Queue[tuple[Document, Sequence[Block], Progress] | None] = queue.Queue()
        self._progress: OrderedDict[str, Progress] = OrderedDict()
        self._progress_lock = threading.Lock()
        self._spans: SpanTokenizer | None = None
        self._thread = threading.Thread(target=self._run, name="nanochat-index", daemon=True)
        self._thread.start()

    def submit(self, doc: Document, blocks: Sequence[Block]) -> Progress:
        """Queue a stored 'indexing' document's parsed blocks; returns at once."""
        progress = Progress(doc.id, doc.owner)
        with self._progress_lock:
            self._progress[doc.id] = progress
            while len(self._progress) > MAX_REMEMBERED:
                oldest = next(iter(self._progress))
                if self._progress[oldest].state == "indexing":
                    break
                self._progress.popitem(last=False)
        self._jobs.put((doc, blocks, progress))
        return progress

    def progress(self, doc_id: str) -> Progress | None:
        with self._progress_lock:
            return self._progress.get(doc_id)

    @property
    def pending(self) -> int:
        return self._jobs.qsize()

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the current document (queued ones stay 'indexing': marked interrupted next start)."""
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        self._jobs.put(None)
        self._thread.join(timeout)

    # -- the worker ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            doc, blocks, progress = job
            try:
                self._index(doc, blocks, progress)
            except DocumentError as e:
                self._fail(doc, progress, e.code, str(e))
            except Exception as e:  # the embedder failed to load, the store is down: say so, go on
                log.warning("indexing %s failed: %s", doc.id, e)
                self._fail(doc, progress, "indexing_failed", f"indexing failed: {e}")

    def _fail(self, doc: Document, progress: Progress, code: str, message: str) -> None:
        try:
            self.library.store.fail(doc.id, code, message)
        except Exception as e:  # the store is down: the document stays 'indexing', marked interrupted next start
            log.warning("could not mark document %s failed: %s", doc.id, e)
        progress._set(state="error", code=code, message=message)

    def _index(self, doc: Document, blocks: Sequence[Block], progress: Progress) -> None:
        embedder = self._embedder()
        if self._spans is None:
            self._spans = minilm_spans(embedder.model_dir)
        chunks = chunk_blocks(blocks, self._spans)
        if not chunks:
            raise DocumentError(f"{doc.name!r} has no text to index.")
        progress._set(total=len(chunks))
        vectors = np.empty((len(chunks), embedder.dim), np.float32)
        for start in range(0, len(chunks), self.batch_size):
            self._yield_to_chat()
            batch = chunks[start : start + self.batch_size]
            # Each chunk's vector blended with its section heading's (search.chunk_vectors:
            # recall@5 on pydoc's topics 0.801 -> 0.847 in bench/retrieval.py).
            vectors[start : start + len(batch)] = chunk_vectors(
                lambda texts: embedder.embed(texts).vectors, [c.embed_text for c in batch], [c.heading for c in batch])
            progress._set(done=start + len(batch))
        pages = max((b.page for b in blocks if b.page is not None), default=None)
        ids = self.library.store.finish(doc.id, pages=pages, chunks=chunks, vectors=vectors)
        if ids is None:  # deleted while it was being indexed: nothing stored
            progress._set(state="error", code="document_not_found",
                          message="the document was deleted while it was indexed")
            return
        self.library.added(doc.owner, doc.collection, ids, vectors, document_id=doc.id)
        progress._set(state="ready", chunks=len(ids))

    def _yield_to_chat(self) -> None:
        deadline = time.monotonic() + self.max_yield_s
        while self._busy() and time.monotonic() < deadline:
            time.sleep(_POLL_S)
