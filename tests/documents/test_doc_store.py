"""The document store and its in-memory vectors, on SQLite and on a real PostgreSQL,
with the real MiniLM embedder: store, search, owners, delete, failure, restart, and the
background indexer (progress, yielding to chat)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from nanochat_lite.documents.blocks import Block
from nanochat_lite.documents.chunk import Chunk, chunk_blocks, minilm_spans
from nanochat_lite.documents.indexer import Indexer
from nanochat_lite.documents.library import Library
from nanochat_lite.documents.service import open_document_store, open_documents
from nanochat_lite.documents.store import DocumentStore, final_event
from nanochat_lite.embeddings import Embedder

TOPICS = {
    "volcano": "Volcanoes erupt when magma rises through the crust. Basaltic lava flows are runny, "
               "while rhyolitic eruptions are explosive and throw out ash and pumice.",
    "bread": "To bake sourdough bread, feed the starter the night before, mix flour and water, "
             "let the dough rise for hours and bake it in a hot Dutch oven.",
    "chess": "In chess the knight moves in an L shape and can jump over other pieces; castling "
             "moves the king two squares toward a rook.",
}


@pytest.fixture
def store(spec: str) -> Iterator[DocumentStore]:
    s = open_document_store(spec)
    yield s
    s.close()


def _store_doc(store: DocumentStore, embedder: Embedder, owner: str, topic: str,
               collection: str = "default") -> tuple[str, list[int]]:
    blocks = [Block(TOPICS[topic], 3, topic.title())]
    chunks = chunk_blocks(blocks, minilm_spans(embedder.model_dir))
    vectors = embedder.embed([c.embed_text for c in chunks]).vectors
    doc = store.add(owner, collection, f"{topic}.txt", "text", len(TOPICS[topic]))
    ids = store.finish(doc.id, pages=3, chunks=chunks, vectors=vectors)
    assert ids is not None and len(ids) == len(chunks)
    return doc.id, ids


def _library(store: DocumentStore) -> Library:
    return Library(store, dim=384)


def _search(library: Library, embedder: Embedder, owner: str, query: str, k: int = 3,
            collection: str | None = None) -> list[str]:
    vector = embedder.embed([query]).vectors[0]
    return [r.name for r in library.search(owner, query, vector, k, collection=collection)]


def test_store_search_isolation_delete(store: DocumentStore, embedder: Embedder) -> None:
    library = _library(store)
    for topic in TOPICS:
        _, ids = _store_doc(store, embedder, "alice", topic)
        library.added("alice", "default", ids, _vector_of(store, ids))
    _, bob_ids = _store_doc(store, embedder, "bob", "bread", collection="kitchen")
    library.added("bob", "kitchen", bob_ids, _vector_of(store, bob_ids))

    # Hybrid search finds the document that answers, by meaning and by words.
    assert _search(library, embedder, "alice", "how do lava eruptions work?")[0] == "volcano.txt"
    assert _search(library, embedder, "alice", "knight castling")[0] == "chess.txt"
    hit = library.search("alice", "sourdough", embedder.embed(["sourdough"]).vectors[0], 1)[0]
    assert hit.page == 3 and hit.heading == "Bread" and "starter" in hit.text and hit.score > 0

    # Owners: bob sees only his own; alice's ids answer bob as missing ones.
    alice_docs = store.of_owner(owner="alice")
    assert sorted(d.name for d in alice_docs) == ["bread.txt", "chess.txt", "volcano.txt"]
    assert all(d.status == "ready" and d.chunks >= 1 and d.pages == 3 for d in alice_docs)
    assert [d.name for d in store.of_owner(owner="bob")] == ["bread.txt"]
    assert store.of_owner(owner="bob", collection="default") == []
    volcano = next(d for d in alice_docs if d.name == "volcano.txt")
    assert store.get(volcano.id, owner="bob") is None and store.delete(volcano.id, owner="bob") is None
    assert _search(library, embedder, "bob", "how do lava eruptions work?") == ["bread.txt"]
    assert store.fulltext("bob", "lava magma", 10) == []
    assert _search(library, embedder, "carol", "bread") == []
    assert _search(library, embedder, "alice", "bread", collection="kitchen") == []

    # Delete: the document, its chunks, their full-text rows and vectors go.
    gone = store.delete(volcano.id, owner="alice")
    assert gone and store.get(volcano.id, owner="alice") is None
    library.removed("alice", gone)
    assert store.chunk_hits(gone) == {}
    assert store.fulltext("alice", "magma", 10) == []
    assert "volcano.txt" not in _search(library, embedder, "alice", "lava eruption magma", k=10)
    assert library.chunks_in_memory("alice") == sum(d.chunks for d in store.of_owner(owner="alice"))


def test_search_lets_one_chunk_of_a_section_into_the_first_places(store: DocumentStore, embedder: Embedder) -> None:
    """Library.search spreads by section (search.spread): three lava chunks of one section
    would fill the first three places; the one chunk of the next best section comes second.
    With only one section among the candidates, all its chunks still come back."""
    lava = ["Basaltic lava flows are runny and travel far from the vent.",
            "Lava from a volcano cools into basalt; runny lava flows make shield volcanoes.",
            "Rhyolitic lava is thick, and its eruptions throw out ash and pumice."]
    chunks = [Chunk(text, None, "Lava", 12, i) for i, text in enumerate(lava)]
    chunks.append(Chunk("Magma chambers under a volcano feed its lava flows.", None, "Magma", 10, 3))
    chunks.append(Chunk("Knights move in an L shape.", None, "Chess", 6, 4))
    doc = store.add("alice", "default", "volcano.txt", "text", 200)
    ids = store.finish(doc.id, pages=None, chunks=chunks, vectors=embedder.embed([c.embed_text for c in chunks]).vectors)
    assert ids is not None
    library = _library(store)
    library.added("alice", "default", ids, _vector_of(store, ids))
    query = "runny basaltic lava flows"
    hits = library.search("alice", query, embedder.embed([query]).vectors[0], 3)
    assert [h.heading for h in hits] == ["Lava", "Magma", "Chess"], hits  # one per section first
    everything = library.search("alice", query, embedder.embed([query]).vectors[0], 5)
    assert [h.heading for h in everything][:3] == ["Lava", "Magma", "Chess"]
    assert sorted(h.text for h in everything if h.heading == "Lava") == sorted(lava)  # the rest after them
    # Scores are the fusion's own: the spread reorders, it does not rescore.
    lava_scores = [h.score for h in everything if h.heading == "Lava"]
    assert lava_scores == sorted(lava_scores, reverse=True) and lava_scores[0] == everything[0].score


def _vector_of(store: DocumentStore, ids: list[int]) -> np.ndarray:
    """The stored vectors of these chunks, read back through the store's own loader."""
    rows = {int(i): v for block in store.vector_blocks() for i, v in zip(block.ids, block.vectors)}
    return np.stack([rows[i] for i in ids])


def test_restart_rebuilds_vectors_from_the_store(spec: str, embedder: Embedder) -> None:
    first = open_document_store(spec)
    _, ids = _store_doc(first, embedder, "alice", "chess")
    expected = embedder.embed([c.embed_text for c in chunk_blocks([Block(TOPICS["chess"], 3, "Chess")],
                                                                 minilm_spans(embedder.model_dir))]).vectors
    first.close()
    again = open_document_store(spec)  # a new process would do the same: no state but the database
    try:
        library = _library(again)
        assert library.chunks_in_memory("alice") == len(ids)
        assert np.array_equal(_vector_of(again, ids), expected)  # float32 round trip, bit for bit
        assert _search(library, embedder, "alice", "how does the knight move?") == ["chess.txt"]
    finally:
        again.close()


def test_failure_and_interruption_leave_no_chunks(store: DocumentStore, embedder: Embedder) -> None:
    doc = store.add("alice", "default", "broken.pdf", "pdf", 10)
    store.fail(doc.id, "corrupt_pdf", "'broken.pdf' is not a readable PDF")
    failed = store.get(doc.id, owner="alice")
    assert failed is not None and failed.status == "error" and failed.chunks == 0
    assert final_event(failed) == {"type": "error", "code": "corrupt_pdf", "message": "'broken.pdf' is not a readable PDF"}

    # Deleted while indexing: finishing stores nothing.
    doc2 = store.add("alice", "default", "gone.txt", "text", 10)
    assert store.delete(doc2.id, owner="alice") == []
    chunks = chunk_blocks([Block(TOPICS["bread"], None, None)], minilm_spans(embedder.model_dir))
    assert store.finish(doc2.id, pages=None, chunks=chunks, vectors=embedder.embed([c.text for c in chunks]).vectors) is None
    assert store.fulltext("alice", "sourdough", 10) == [] and list(store.vector_blocks()) == []

    # A server that stopped mid-indexing: the next start marks it, with the reason.
    doc3 = store.add("alice", "default", "long.pdf", "pdf", 10)
    assert store.interrupt_indexing() == 1
    interrupted = store.get(doc3.id, owner="alice")
    assert interrupted is not None and interrupted.status == "error" and interrupted.error_code == "interrupted"


def wait_until(condition: Callable[[], bool], what: str, within: float = 120.0) -> None:
    """Poll until `condition` holds; the deadline only guards against a hang (also used by
    test_doc_replicas.py)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_indexer_progress_and_yield_to_chat(spec: str, embedder: Embedder) -> None:
    chatting = threading.Event()
    chatting.set()
    calls = [0]

    def busy() -> bool:
        calls[0] += 1
        return chatting.is_set()

    service = open_documents(spec, embedder=lambda: embedder, busy=busy)
    service.indexer.max_yield_s = 3600.0  # only `chatting` decides here
    try:
        long_text = " ".join(f"Section {i}: " + TOPICS["volcano"] for i in range(150))
        blocks = [Block(long_text, None, "Volcanoes")]
        doc = service.library.store.add("alice", "default", "long.txt", "text", len(long_text))
        progress = service.indexer.submit(doc, blocks)
        wait_until(lambda: calls[0] >= 20, "the indexer to ask whether chat is busy")
        assert progress.snapshot()["type"] == "progress" and progress.done == 0 and progress.total > 16
        chatting.clear()
        wait_until(lambda: progress.state != "indexing", "indexing to finish")
        assert progress.snapshot() == {"type": "ready", "chunks": progress.total}
        stored = service.library.store.get(doc.id, owner="alice")
        assert stored is not None and stored.status == "ready" and stored.chunks == progress.total
        assert service.library.chunks_in_memory("alice") == progress.total

        # An indexing failure (no text at all) stores the reason and no chunks.
        empty = service.library.store.add("alice", "default", "blank.txt", "text", 1)
        failed = service.indexer.submit(empty, [])
        wait_until(lambda: failed.state != "indexing", "the failure")
        assert failed.snapshot()["type"] == "error" and failed.code == "unreadable"
        row = service.library.store.get(empty.id, owner="alice")
        assert row is not None and row.status == "error" and row.chunks == 0
    finally:
        service.close()


def test_a_document_deleted_while_indexing_ends_document_not_found(spec: str, embedder: Embedder) -> None:
    chatting = threading.Event()
    chatting.set()  # the indexer waits on it before its first batch: the delete lands meanwhile
    calls = [0]

    def busy() -> bool:
        calls[0] += 1
        return chatting.is_set()

    service = open_documents(spec, embedder=lambda: embedder, busy=busy)
    service.indexer.max_yield_s = 3600.0
    try:
        doc = service.library.store.add("alice", "default", "gone.txt", "text", 10)
        progress = service.indexer.submit(doc, [Block(TOPICS["chess"], None, None)])
        wait_until(lambda: calls[0] >= 2, "the indexer to ask whether chat is busy")
        assert service.library.store.delete(doc.id, owner="alice") == []
        chatting.clear()
        wait_until(lambda: progress.state != "indexing", "the indexer to notice")
        assert progress.snapshot() == {"type": "error", "code": "document_not_found",
                                       "message": "the document was deleted while it was indexed"}
        assert service.library.chunks_in_memory("alice") == 0
    finally:
        service.close()


def test_fulltext_sees_every_write_at_once(spec: str, embedder: Embedder) -> None:
    """The full text's term counts (pick_terms) may be kept between queries, never past a
    write: this store's own, or another connection's on the same database."""
    reader, writer = open_document_store(spec), open_document_store(spec)
    try:
        assert reader.fulltext("alice", "knight castling", 5, total=0) == []  # no chunk holds them yet
        _, chess = _store_doc(writer, embedder, "alice", "chess")
        assert {i for i, _ in reader.fulltext("alice", "knight castling", 5, total=1)} == set(chess)

        assert reader.fulltext("alice", "magma", 5, total=1) == []
        volcano_id, volcano = _store_doc(reader, embedder, "alice", "volcano")
        assert {i for i, _ in reader.fulltext("alice", "magma", 5, total=2)} == set(volcano)
        writer.delete(volcano_id, owner="alice")
        assert reader.fulltext("alice", "magma", 5, total=1) == []
    finally:
        reader.close()
        writer.close()


def test_postgres_keeps_the_tsvector_in_the_row(pg_url: str) -> None:
    """ts_rank reads each matching chunk's tsvector: out of line (TOAST) that read cost
    2.5x the search at 100k chunks (store_postgres._BODY_INLINE)."""
    import psycopg

    open_document_store(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = 'chunks'::regclass "
                           "AND attname = 'body'").fetchone()
    assert row == ("m",)


def test_postgres_opens_while_another_replica_reads_the_chunks(pg_url: str) -> None:
    """The storage change waits for the table's lock: a replica reading the chunks past the
    lock timeout leaves it for the next start instead of failing this one."""
    import psycopg

    def storage(conn: psycopg.Connection) -> str:
        row = conn.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = 'chunks'::regclass "
                           "AND attname = 'body'").fetchone()
        assert row is not None
        return str(row[0])

    open_document_store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("ALTER TABLE chunks ALTER COLUMN body SET STORAGE EXTENDED")  # as a store made before
        with psycopg.connect(pg_url) as reader:  # a transaction reading the table, held open
            reader.execute("SELECT count(*) FROM chunks").fetchone()
            store = open_document_store(pg_url)  # waits out the lock timeout, then goes on
            try:
                assert store.fulltext("alice", "knight", 5, total=0) == []
            finally:
                store.close()
            assert storage(admin) == "x"
            reader.rollback()
        open_document_store(pg_url).close()
        assert storage(admin) == "m"


def test_sqlite_tables_sit_beside_the_conversations(tmp_path: Path) -> None:
    from nanochat_lite.history import open_store

    path = tmp_path / "h.db"
    conversations = open_store(path)
    docs = open_document_store(path)
    try:
        names = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"conversations", "messages", "documents", "chunks", "chunks_fts", "documents_schema"} <= names
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        docs.close()
        conversations.close()


def test_pick_terms_leaves_out_what_would_only_cost() -> None:
    from nanochat_lite.documents.store import pick_terms, tag

    counts = {"the": 99_000, "knight": 40, "moves": 3_000, "zebra": 0}
    assert pick_terms(counts, 100_000) == ["knight", "moves"]  # rarest first; 'the' in 99%: out
    assert pick_terms(counts, 100_000, budget=1_000) == ["knight"]  # 40 + 3,000 over the budget
    assert pick_terms({"the": 900, "cat": 30}, 1_000) == ["cat", "the"]  # a small library keeps every word
    assert pick_terms({"the": 99_000}, 100_000) == []  # only common words: the vectors decide
    assert tag("alice") != tag("bob") and tag("alice", "geo") != tag("alice", "kitchen") != tag("alice")
    assert tag("a b-c").isalnum()  # one FTS5 token whatever the name holds
