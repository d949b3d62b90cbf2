"""Two replicas on one database (two document services, each with its own connection and
its own vectors in memory, as two `serve` processes on one --db would have): a document
indexed or deleted through one is found, or gone, through the other's next search, by
its vectors as well as its words; another owner never sees it. On a real PostgreSQL and
on one SQLite file, with the real MiniLM embedder."""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Set as AbstractSet

import pytest
from test_doc_store import wait_until

from nanochat_lite.documents import store as store_module
from nanochat_lite.documents.blocks import Block
from nanochat_lite.documents.search import terms
from nanochat_lite.documents.service import DocumentService, open_documents
from nanochat_lite.documents.store import Changes, Document
from nanochat_lite.embeddings import Embedder

VOLCANO = ("Volcanoes erupt when magma rises through the crust. Basaltic lava flows are runny, "
           "while rhyolitic eruptions are explosive and throw out ash and pumice.")
OTHERS = {
    "bread": "To bake sourdough bread, feed the starter the night before, mix flour and water, "
             "let the dough rise for hours and bake it in a hot Dutch oven.",
    "chess": "In chess the knight moves in an L shape and can jump over other pieces; castling "
             "moves the king two squares toward a rook.",
}
# Near the volcano text in meaning, with no word of it: only the vector half can find it.
BY_MEANING = "burning mountain spitting fire"
BY_WORDS = "pumice"  # in the volcano text only


@pytest.fixture
def replicas(spec: str, embedder: Embedder) -> Iterator[tuple[DocumentService, DocumentService]]:
    a = open_documents(spec, embedder=lambda: embedder)
    b = open_documents(spec, embedder=lambda: embedder)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _index(svc: DocumentService, owner: str, name: str, text: str, collection: str = "default") -> Document:
    """Upload and index `text` through this replica, as the route does; returns it once ready."""
    doc = svc.library.store.add(owner, collection, name, "text", len(text))
    progress = svc.indexer.submit(doc, [Block(text, None, None)])
    wait_until(lambda: progress.state != "indexing", f"{name} to be indexed")
    assert progress.state == "ready", progress.snapshot()
    ready = svc.library.store.get(doc.id, owner=owner)
    assert ready is not None and ready.status == "ready" and ready.chunks >= 1
    return ready


def _names(svc: DocumentService, embedder: Embedder, owner: str, query: str, k: int = 5) -> list[str]:
    vector = embedder.embed([query]).vectors[0]
    return [r.name for r in svc.library.search(owner, query, vector, k)]


def test_a_document_added_or_deleted_through_one_replica_is_found_or_gone_through_the_other(
        replicas: tuple[DocumentService, DocumentService], embedder: Embedder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = replicas
    caught_up: list[Changes | None] = []  # what A's catching up read: never its own documents' vectors
    replay = a.library.store.changes_since

    def recorded(generation: int, *, loaded: AbstractSet[str] = frozenset()) -> Changes | None:
        caught_up.append(replay(generation, loaded=loaded))
        return caught_up[-1]

    monkeypatch.setattr(a.library.store, "changes_since", recorded)
    assert not set(terms(BY_MEANING)) & set(terms(VOLCANO + " volcano.txt"))
    for topic, text in OTHERS.items():
        _index(a, "alice", f"{topic}.txt", text)
    _index(a, "bob", "bob-bread.txt", OTHERS["bread"])
    b.library.refresh()  # what every search does first
    before = b.library.chunks_in_memory("alice")
    assert before == sum(d.chunks for d in b.library.store.of_owner(owner="alice"))
    assert "volcano.txt" not in _names(b, embedder, "alice", BY_MEANING)

    volcano = _index(a, "alice", "volcano.txt", VOLCANO)

    # B, started before the volcano existed, finds it by meaning: its full text cannot.
    assert b.library.store.fulltext("alice", BY_MEANING, 10, total=10) == []
    assert _names(b, embedder, "alice", BY_MEANING)[0] == "volcano.txt"
    assert b.library.chunks_in_memory("alice") == before + volcano.chunks
    assert _names(b, embedder, "alice", BY_WORDS)[0] == "volcano.txt"
    # A replayed its own writes without reading their vectors back or doubling them.
    assert _names(a, embedder, "alice", BY_MEANING)[0] == "volcano.txt"
    assert a.library.chunks_in_memory("alice") == before + volcano.chunks
    assert len(caught_up) == 1 and caught_up[0] is not None and caught_up[0].added == []
    # Another owner never sees it, through either replica.
    for svc in (a, b):
        assert _names(svc, embedder, "bob", BY_MEANING) == ["bob-bread.txt"]
        assert _names(svc, embedder, "bob", BY_WORDS) == ["bob-bread.txt"]
        assert svc.library.chunks_in_memory("bob") == b.library.store.of_owner(owner="bob")[0].chunks

    # Deleted through A (as the route does): gone from B's answers and from B's vectors.
    gone = a.library.store.delete(volcano.id, owner="alice")
    assert gone
    a.library.removed("alice", gone)
    assert "volcano.txt" not in _names(b, embedder, "alice", BY_MEANING, k=10)
    assert "volcano.txt" not in _names(b, embedder, "alice", BY_WORDS, k=10)
    assert b.library.chunks_in_memory("alice") == before
    assert _names(b, embedder, "alice", "how does the knight move?")[0] == "chess.txt"


def test_a_replica_too_far_behind_reloads_every_vector(
        replicas: tuple[DocumentService, DocumentService], embedder: Embedder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the changes the store keeps, B cannot replay: it reads every vector again."""
    monkeypatch.setattr(store_module, "KEPT_CHANGES", 1)
    a, b = replicas
    bread = _index(a, "alice", "bread.txt", OTHERS["bread"])
    chess = _index(a, "alice", "chess.txt", OTHERS["chess"])
    gone = a.library.store.delete(bread.id, owner="alice")
    assert gone
    a.library.removed("alice", gone)
    assert b.library.store.changes_since(0) is None  # three changes, one kept
    assert _names(b, embedder, "alice", "sourdough starter and flour") == ["chess.txt"]
    assert b.library.chunks_in_memory("alice") == chess.chunks
    assert b.library.store.changes_since(b.library.store.generation()) is not None


def test_a_chunk_is_read_back_only_for_its_owner(
        replicas: tuple[DocumentService, DocumentService]) -> None:
    """The last guard: a vector a replica still holds (its chunk deleted, and on SQLite its id
    given to another owner's chunk) never shows that chunk's text to the wrong owner."""
    a, b = replicas
    doc = _index(a, "alice", "volcano.txt", VOLCANO)
    ids = [hit.id for hit in b.library.store.document_chunks([doc.id], owner="alice")]
    assert ids and set(b.library.store.chunk_hits(ids, owner="alice")) == set(ids)
    assert b.library.store.chunk_hits(ids, owner="bob") == {}


def test_a_chunk_id_given_again_is_read_back_not_lost(
        replicas: tuple[DocumentService, DocumentService], embedder: Embedder, spec: str) -> None:
    """SQLite gives the highest ids of deleted chunks to the next ones: B's own new document
    takes the ids of a document A deleted, whose vectors B still holds (in another
    collection). B's catch-up drops those ids, then must load the new document's vectors."""
    a, b = replicas
    by_meaning = "loaf baking kitchen"
    assert not set(terms(by_meaning)) & set(terms(OTHERS["bread"] + " bread.txt"))
    chess = _index(b, "alice", "chess.txt", OTHERS["chess"])
    volcano = _index(b, "alice", "volcano.txt", VOLCANO)
    b.library.refresh()
    gone = a.library.store.delete(volcano.id, owner="alice")
    assert gone
    a.library.removed("alice", gone)
    bread = _index(b, "alice", "bread.txt", OTHERS["bread"], collection="kitchen")
    reused = {c.id for c in b.library.store.document_chunks([bread.id], owner="alice")} & set(gone)
    assert reused if not spec.startswith("postgresql://") else not reused  # PostgreSQL never reuses one
    assert b.library.store.fulltext("alice", by_meaning, 10, total=10) == []
    assert _names(b, embedder, "alice", by_meaning)[0] == "bread.txt"
    assert b.library.chunks_in_memory("alice") == chess.chunks + bread.chunks


def _run_sql(spec: str, *statements: str) -> list[tuple[object, ...]]:
    """Run statements on the database behind `spec` through a connection of its own; the
    last one's rows."""
    if spec.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(spec, autocommit=True) as pg:
            cur = None
            for sql in statements:
                cur = pg.execute(sql)
            return list(cur.fetchall()) if cur is not None and cur.description else []
    import sqlite3

    lite = sqlite3.connect(spec, isolation_level=None)
    try:
        rows: list[tuple[object, ...]] = []
        for sql in statements:
            rows = lite.execute(sql).fetchall()
        return rows
    finally:
        lite.close()


def test_a_version_1_database_gains_the_generation_on_open(spec: str, embedder: Embedder) -> None:
    """Tables written before replicas kept in step (documents schema 1) get the generation
    row and the change log when a newer server opens them, their documents kept."""
    first = open_documents(spec, embedder=lambda: embedder)
    try:
        chess = _index(first, "alice", "chess.txt", OTHERS["chess"])
    finally:
        first.close()
    _run_sql(spec, "DROP TABLE document_changes", "DROP TABLE documents_generation",
             "UPDATE documents_schema SET version = 1")
    a = open_documents(spec, embedder=lambda: embedder)
    b = open_documents(spec, embedder=lambda: embedder)
    try:
        assert _run_sql(spec, "SELECT MAX(version) FROM documents_schema") == [(2,)]
        assert a.library.store.generation() == 0 and b.library.chunks_in_memory("alice") == chess.chunks
        _index(a, "alice", "volcano.txt", VOLCANO)
        assert _names(b, embedder, "alice", BY_MEANING)[0] == "volcano.txt"
    finally:
        a.close()
        b.close()
