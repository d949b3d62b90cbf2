"""What the server holds for documents: the store, the vectors in memory, the indexer.

    docs = open_documents(config.db_path, embedder=runtime.embedder_cache.get,
                          busy=lambda: runtime.generating > 0, max_bytes=50 << 20)
    ...
    docs.close()

Opening marks documents a stopped server left 'indexing' as failed (`interrupted`) and
loads every stored vector into memory (100k chunks x 384 floats: 150 MB, a few seconds).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..history import is_postgres_url
from .parse import DEFAULT_MAX_BYTES
from .store import DocumentStore

if TYPE_CHECKING:  # numpy and the search half load when the documents open, not with the web stack
    from .indexer import EmbedderLike, Indexer
    from .library import Library

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2's, the only embedder the server loads


def open_document_store(spec: str | os.PathLike[str]) -> DocumentStore:
    """The document tables in the database `spec` names (a SQLite path or a PostgreSQL
    URL, as `history.open_store` takes), created if missing. Raises StoreError."""
    if is_postgres_url(spec):
        from .store_postgres import PostgresDocuments  # psycopg only for those who use it

        return PostgresDocuments(str(spec))
    from .store_sqlite import SQLiteDocuments

    return SQLiteDocuments(spec)


@dataclass
class DocumentService:
    library: Library
    indexer: Indexer
    max_bytes: int

    def close(self) -> None:
        self.indexer.close()
        self.library.store.close()


def open_documents(spec: str | os.PathLike[str], *, embedder: Callable[[], EmbedderLike],
                   busy: Callable[[], bool] = bool, max_bytes: int = DEFAULT_MAX_BYTES,
                   dim: int = EMBEDDING_DIM) -> DocumentService:
    """The document tables in the conversation database `spec`; raises StoreError."""
    from .indexer import Indexer
    from .library import Library

    store = open_document_store(spec)
    try:
        store.interrupt_indexing()
        library = Library(store, dim=dim)
    except BaseException:
        store.close()
        raise
    return DocumentService(library, Indexer(library, embedder=embedder, busy=busy), max_bytes)
