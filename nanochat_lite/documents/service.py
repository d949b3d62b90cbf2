"""What the server holds for documents: the store, the vectors in memory, the indexer.

    docs = open_documents(config.db_path, embedder=runtime.embedder_cache.get,
                          busy=lambda: runtime.generating > 0, max_bytes=50 << 20)
    ...
    docs.close()

Opening marks documents a stopped server left 'indexing' as failed (`interrupted`) and
loads every stored vector into memory (100k chunks x 384 floats: 150 MB, a few seconds).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..history import StorageUnavailable, is_postgres_url
from .parse import DEFAULT_MAX_BYTES
from .store import DocumentStore

if TYPE_CHECKING:  # numpy and the search half load when the documents open, not with the web stack
    from .indexer import EmbedderLike, Indexer
    from .library import Library

log = logging.getLogger("nanochat_lite")
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2's, the only embedder the server loads
QUERY_VECTORS_KEPT = 256  # the last searched queries whose embeddings QueryVectors keeps


def open_document_store(spec: str | os.PathLike[str]) -> DocumentStore:
    """The document tables in the database `spec` names (a SQLite path or a PostgreSQL
    URL, as `history.open_store` takes), created if missing. Raises StoreError."""
    if is_postgres_url(spec):
        from .store_postgres import PostgresDocuments  # psycopg only for those who use it

        return PostgresDocuments(str(spec))
    from .store_sqlite import SQLiteDocuments

    return SQLiteDocuments(spec)


class QueryVectors:
    """The embeddings of the last `size` queries searched, by their text; thread-safe.

    Why: embedding even a four-word query costs as much as searching 100k chunks with it
    (10-20 ms on two busy cores), and a query comes again (asked again, paged, retried).
    One embedder per server, so the text alone is the key. "the cat" -> its vector or None.
    """

    def __init__(self, size: int = QUERY_VECTORS_KEPT) -> None:
        self.size = size
        self._kept: OrderedDict[str, Any] = OrderedDict()  # text -> (dim,) float32, oldest first
        self._lock = threading.Lock()

    def get(self, text: str) -> Any | None:
        with self._lock:
            vector = self._kept.get(text)
            if vector is not None:
                self._kept.move_to_end(text)
            return vector

    def put(self, text: str, vector: Any) -> None:
        with self._lock:
            self._kept[text] = vector
            self._kept.move_to_end(text)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)


class DocumentsUnavailable(StorageUnavailable):
    """The document tables or their vectors could not be opened (the server answers 503
    and tries again on the next request)."""


class DocumentService:
    """The library (store + vectors in memory) and the indexer, opened now or, from
    `DocumentService.deferred`, on first use: `serve` opens them once the first answers are
    out (cold start: numpy and the vectors are not on the way to the first token). Routes
    `await opened()` first, so the open runs off the event loop; the `library` and
    `indexer` attributes open (blocking) if nobody has yet."""

    def __init__(self, library: Library | None = None, indexer: Indexer | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, *, opener: Callable[[], tuple[Library, Indexer]] | None = None) -> None:
        if (library is None) != (indexer is None) or (library is None) == (opener is None):
            raise ValueError("DocumentService takes a library and an indexer, or an opener")
        self._parts = (library, indexer) if library is not None and indexer is not None else None
        self._opener = opener
        self._closed = False
        self._lock = threading.Lock()
        self.max_bytes = max_bytes
        self.query_vectors = QueryVectors()

    @classmethod
    def deferred(cls, opener: Callable[[], tuple[Library, Indexer]], max_bytes: int) -> DocumentService:
        return cls(max_bytes=max_bytes, opener=opener)

    @property
    def library(self) -> Library:
        return self.open()[0]

    @property
    def indexer(self) -> Indexer:
        return self.open()[1]

    @property
    def is_open(self) -> bool:
        return self._parts is not None

    def open(self) -> tuple[Library, Indexer]:
        """Open now if not yet (blocking); DocumentsUnavailable if it cannot."""
        parts = self._parts
        if parts is not None:
            return parts
        with self._lock:
            if self._parts is None:
                if self._closed or self._opener is None:
                    raise DocumentsUnavailable("the document store is closed: the server is shutting down")
                try:
                    self._parts = self._opener()
                except DocumentsUnavailable:
                    raise
                except Exception as e:  # StoreError, or stored vectors that cannot be read
                    log.error("cannot open the document store: %s", e)
                    raise DocumentsUnavailable(f"cannot open the document store: {e}") from None
            return self._parts

    async def opened(self) -> DocumentService:
        """This service, opened off the event loop if it was not yet."""
        if self._parts is None:
            await asyncio.to_thread(self.open)
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            parts, self._parts = self._parts, None
        if parts is not None:
            library, indexer = parts
            indexer.close()
            library.close()
            library.store.close()


def _open_parts(spec: str | os.PathLike[str], embedder: Callable[[], EmbedderLike], busy: Callable[[], bool],
                dim: int) -> tuple[Library, Indexer]:
    from .indexer import Indexer
    from .library import Library

    store = open_document_store(spec)
    try:
        store.interrupt_indexing()
        library = Library(store, dim=dim)
    except BaseException:
        store.close()
        raise
    return library, Indexer(library, embedder=embedder, busy=busy)


def open_documents(spec: str | os.PathLike[str], *, embedder: Callable[[], EmbedderLike],
                   busy: Callable[[], bool] = bool, max_bytes: int = DEFAULT_MAX_BYTES,
                   dim: int = EMBEDDING_DIM, defer: bool = False) -> DocumentService:
    """The document tables in the conversation database `spec`; raises StoreError.
    `defer`: opened on first use instead (errors then come as DocumentsUnavailable)."""
    def opener() -> tuple[Library, Indexer]:
        return _open_parts(spec, embedder, busy, dim)

    if defer:
        return DocumentService.deferred(opener, max_bytes)
    library, indexer = opener()
    return DocumentService(library, indexer, max_bytes)
