"""Chats grounded in chosen documents read them through two store calls: a document's
chunks whole and in order (`document_chunks`), and a search limited to some documents'
chunks (`Library.search(only=...)`); both keep to the owner. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nanochat_lite.documents.blocks import Block
from nanochat_lite.documents.chunk import chunk_blocks, minilm_spans
from nanochat_lite.documents.library import Library
from nanochat_lite.documents.service import open_document_store
from nanochat_lite.documents.store import DocumentStore
from nanochat_lite.embeddings import Embedder

LONG = " ".join(f"Paragraph {i} tells of the harbour lighthouse keeper and tide number {i}." for i in range(60))


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocumentStore]:
    spec = str(tmp_path / "h.db") if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    s = open_document_store(spec)
    yield s
    s.close()


def _add(store: DocumentStore, library: Library, embedder: Embedder, owner: str, name: str,
         blocks: list[Block]) -> tuple[str, list[int]]:
    chunks = chunk_blocks(blocks, minilm_spans(embedder.model_dir))
    vectors = embedder.embed([c.embed_text for c in chunks]).vectors
    doc = store.add(owner, "default", name, "text", 100)
    ids = store.finish(doc.id, pages=None, chunks=chunks, vectors=vectors)
    assert ids is not None
    library.added(owner, "default", ids, vectors)
    return doc.id, ids


def test_whole_documents_and_search_among_chosen(store: DocumentStore, embedder: Embedder) -> None:
    library = Library(store, dim=384)
    long_id, long_ids = _add(store, library, embedder, "alice", "harbour.txt", [Block(LONG, None, "Harbour")])
    bread_id, _ = _add(store, library, embedder, "alice", "bread.txt",
                       [Block("Sourdough bread rises overnight in a cool kitchen.", 1, None),
                        Block("Bake the loaf in a hot Dutch oven for forty minutes.", 2, None)])
    assert len(long_ids) > 2  # several chunks, so their order is something to check

    chunks = store.document_chunks([bread_id, long_id], owner="alice")
    bread = [c for c in chunks if c.document_id == bread_id]
    assert chunks[:len(bread)] == bread  # the first document named comes first
    text = " ".join(c.text for c in bread)
    assert bread[0].page == 1 and text.index("Sourdough") < text.index("Dutch oven")
    assert [c.id for c in chunks[len(bread):]] == long_ids  # the document's own order
    assert store.document_chunks([bread_id], owner="bob") == []  # another owner's: nothing
    assert store.document_chunks([], owner="alice") == []

    query = "how long does the loaf bake?"
    vector = embedder.embed([query]).vectors[0]
    assert library.search("alice", query, vector, 1)[0].document_id == bread_id
    only_long = set(long_ids)
    hits = library.search("alice", query, vector, 3, only=only_long)
    assert hits and all(h.document_id == long_id for h in hits)
    assert library.search("bob", query, vector, 3, only=only_long) == []
