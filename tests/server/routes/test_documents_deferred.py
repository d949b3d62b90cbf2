"""`serve` opens the documents (numpy, every stored vector) after the first answers, off
the way to the first token (DocumentService.deferred); a document request that comes
first opens them itself, off the event loop. An open that fails is a 503 naming it, on
every door, and the next request tries again; chat is not affected.

Fake engine, no model: the real server opens its documents this way in every real-server
document test (tests/server/routes/test_documents.py, test_documents_ws.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_helpers import TEST_SECURITY, Frames
from starlette.testclient import TestClient

from nanochat_lite.documents.indexer import Indexer
from nanochat_lite.documents.library import Library
from nanochat_lite.documents.service import DocumentService, DocumentsUnavailable
from nanochat_lite.documents.store_sqlite import SQLiteDocuments
from nanochat_lite.server import Runtime, create_app


class Opener:
    """Opens a real SQLite document store; fails while `broken` is set; counts calls."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls = 0
        self.broken = False
        self.store: SQLiteDocuments | None = None

    def __call__(self) -> tuple[Library, Indexer]:
        self.calls += 1
        if self.broken:
            raise OSError("disk I/O error reading the vectors")
        self.store = SQLiteDocuments(self.path)
        library = Library(self.store, dim=4)
        return library, Indexer(library, embedder=lambda: None)  # type: ignore[arg-type,return-value]


@pytest.fixture
def opener(tmp_path: Path) -> Opener:
    return Opener(tmp_path / "docs.db")


@pytest.fixture
def svc(opener: Opener) -> Iterator[DocumentService]:
    service = DocumentService.deferred(opener, max_bytes=1 << 20)
    yield service
    service.close()


def test_nothing_opens_until_first_use_and_then_once(svc: DocumentService, opener: Opener) -> None:
    assert opener.calls == 0 and not svc.is_open
    threads = [threading.Thread(target=svc.open) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert opener.calls == 1 and svc.is_open
    assert svc.library.store is opener.store


def test_a_failed_open_is_retried_and_a_closed_service_never_opens(svc: DocumentService, opener: Opener) -> None:
    opener.broken = True
    with pytest.raises(DocumentsUnavailable, match="cannot open the document store: disk I/O error"):
        svc.open()
    opener.broken = False
    svc.open()
    assert opener.calls == 2
    svc.close()
    with pytest.raises(DocumentsUnavailable, match="shutting down"):
        svc.open()
    assert opener.calls == 2


def test_an_opened_or_deferred_service_takes_parts_or_an_opener_not_both(opener: Opener) -> None:
    library, indexer = opener()
    with pytest.raises(ValueError):
        DocumentService(library, indexer, opener=opener)
    with pytest.raises(ValueError):
        DocumentService()


def test_the_first_document_request_opens_them(runtime: Runtime, svc: DocumentService, opener: Opener) -> None:
    app = create_app(runtime, security=TEST_SECURITY, documents=svc)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/api/documents")
        assert r.status_code == 200 and r.json()["data"]["documents"] == []
    assert opener.calls == 1


def test_an_open_that_fails_is_a_503_on_every_door_and_chat_goes_on(runtime: Runtime, svc: DocumentService,
                                                                     opener: Opener) -> None:
    opener.broken = True
    app = create_app(runtime, security=TEST_SECURITY, documents=svc)
    with TestClient(app, raise_server_exceptions=False) as client:
        for method, path, body in (("GET", "/api/documents", None), ("GET", "/api/documents/d1", None),
                                   ("POST", "/api/documents/search", {"query": "volcano"}),
                                   ("POST", "/api/chat", {"message": "hi", "documents": True})):
            r = client.request(method, path, json=body)
            assert r.status_code == 503, (path, r.status_code, r.text)
            error = r.json()["error"]
            assert error["code"] == "storage_unavailable" and "disk I/O error" in error["message"], error
        with client.websocket_connect("/ws") as ws:
            frames = Frames(ws)
            frames.send({"type": "watch_document", "id": "d1"})
            frame = frames.next()
            assert frame["type"] == "error" and frame["code"] == "storage_unavailable", frame
            assert frame["document_id"] == "d1"
        assert client.post("/api/chat", json={"message": "hi"}).status_code == 200
        opener.broken = False
        assert client.get("/api/documents").status_code == 200  # the next request tried again
