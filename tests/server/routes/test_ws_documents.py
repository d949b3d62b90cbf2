"""`{"type": "watch_document", "id"}` on the WebSocket: the same progress / ready / error
frames as a document's SSE events, each carrying `document_id`; another owner's or a
missing id is `document_not_found`; a chat on the same socket is not held up by a watch.

The real document store (SQLite in tmp_path) and a fake indexer whose progress the test
moves by hand, so every frame is known in advance. Fake engine, no model: the real
server's watch is in tests/server/test_documents_ws.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import REPLY
from server_helpers import TEST_SECURITY, Frames
from starlette.testclient import TestClient

from nanochat_lite.documents.indexer import Progress
from nanochat_lite.documents.library import Library
from nanochat_lite.documents.service import DocumentService
from nanochat_lite.documents.store_sqlite import SQLiteDocuments
from nanochat_lite.history import LOCAL_OWNER
from nanochat_lite.server import Runtime, create_app


class HandIndexer:
    """The indexer's `progress(doc_id)` and nothing else: the test sets each state."""

    def __init__(self) -> None:
        self.jobs: dict[str, Progress] = {}

    def progress(self, doc_id: str) -> Progress | None:
        return self.jobs.get(doc_id)

    def close(self) -> None:
        pass


@pytest.fixture
def docs(tmp_path: Path) -> Iterator[DocumentService]:
    store = SQLiteDocuments(tmp_path / "docs.db")
    svc = DocumentService(Library(store, dim=4), HandIndexer(), max_bytes=1 << 20)  # type: ignore[arg-type]
    yield svc
    store.close()


@pytest.fixture
def sock(runtime: Runtime, docs: DocumentService) -> Iterator[Frames]:
    app = create_app(runtime, security=TEST_SECURITY, documents=docs)
    with TestClient(app, raise_server_exceptions=False) as client, client.websocket_connect("/ws") as ws:
        yield Frames(ws)


def until_final(ws: Frames) -> list[dict]:
    frames = [ws.next()]
    while frames[-1]["type"] == "progress":
        frames.append(ws.next())
    return frames


def test_watch_follows_progress_to_ready(sock: Frames, docs: DocumentService) -> None:
    doc = docs.library.store.add(LOCAL_OWNER, "default", "atlas.pdf", "pdf", 1234)
    progress = Progress(doc.id, LOCAL_OWNER, done=2, total=5)
    docs.indexer.jobs[doc.id] = progress  # type: ignore[attr-defined]
    sock.send({"type": "watch_document", "id": doc.id})
    assert sock.next() == {"type": "progress", "done": 2, "total": 5, "document_id": doc.id}
    progress._set(done=5)
    frame = sock.next()
    while frame == {"type": "progress", "done": 2, "total": 5, "document_id": doc.id}:
        frame = sock.next()  # the tick before the change was seen
    assert frame == {"type": "progress", "done": 5, "total": 5, "document_id": doc.id}
    progress._set(state="ready", chunks=5)
    assert until_final(sock)[-1] == {"type": "ready", "chunks": 5, "document_id": doc.id}
    sock.send({"type": "ping"})  # the socket is still usable
    assert sock.next() == {"type": "pong"}


def test_watch_of_a_failed_or_finished_document_answers_at_once(sock: Frames, docs: DocumentService) -> None:
    bad = docs.library.store.add(LOCAL_OWNER, "default", "locked.pdf", "pdf", 10)
    docs.library.store.fail(bad.id, "encrypted", "'locked.pdf' is encrypted; send it without a password")
    sock.send({"type": "watch_document", "id": bad.id})
    assert sock.next() == {"type": "error", "code": "encrypted",
                           "message": "'locked.pdf' is encrypted; send it without a password", "document_id": bad.id}


def test_watch_of_another_owners_or_a_missing_id_is_document_not_found(sock: Frames, docs: DocumentService) -> None:
    theirs = docs.library.store.add("bob", "default", "bob.txt", "text", 10)
    docs.indexer.jobs[theirs.id] = Progress(theirs.id, "bob", done=1, total=3)  # type: ignore[attr-defined]
    for doc_id in (theirs.id, "no-such-document", "x" * 500, "", "tab\there"):
        sock.send({"type": "watch_document", "id": doc_id})
        frame = sock.next()
        assert frame["type"] == "error" and frame["code"] == "document_not_found", frame
        assert frame["document_id"] == doc_id and "no document with id" in frame["message"]
    for bad in ({"type": "watch_document"}, {"type": "watch_document", "id": 7}):
        sock.send(bad)
        frame = sock.next()
        assert frame["type"] == "error" and frame["code"] == "invalid_request" and "id" in frame["message"], frame


def test_a_chat_runs_while_a_document_is_watched(sock: Frames, docs: DocumentService) -> None:
    doc = docs.library.store.add(LOCAL_OWNER, "default", "long.pdf", "pdf", 10)
    progress = Progress(doc.id, LOCAL_OWNER, done=0, total=300)
    docs.indexer.jobs[doc.id] = progress  # type: ignore[attr-defined]
    sock.send({"type": "watch_document", "id": doc.id})
    assert sock.next()["document_id"] == doc.id
    sock.send({"type": "chat", "message": "hello"})
    chat: list[dict] = []
    while not chat or chat[-1]["type"] not in ("done", "error"):
        frame = sock.next()
        if "document_id" not in frame:
            chat.append(frame)
    assert chat[0]["type"] == "start" and chat[-1]["type"] == "done" and chat[-1]["message"] == "".join(REPLY)
    progress._set(state="error", code="document_not_found", message="the document was deleted while it was indexed")
    assert until_final(sock)[-1] == {"type": "error", "code": "document_not_found", "document_id": doc.id,
                                     "message": "the document was deleted while it was indexed"}


def test_watch_without_documents_says_so(ws: Frames) -> None:
    ws.send({"type": "watch_document", "id": "abc"})
    frame = ws.next()
    assert frame["type"] == "error" and frame["code"] == "not_available" and frame["document_id"] == "abc"


def test_a_socket_follows_at_most_max_watches_documents(sock: Frames, docs: DocumentService) -> None:
    from nanochat_lite.server.routes.ws import MAX_WATCHES

    ids = []
    for i in range(MAX_WATCHES + 1):
        doc = docs.library.store.add(LOCAL_OWNER, "default", f"d{i}.txt", "text", 10)
        docs.indexer.jobs[doc.id] = Progress(doc.id, LOCAL_OWNER, done=0, total=9)  # type: ignore[attr-defined]
        ids.append(doc.id)
    for doc_id in ids[:MAX_WATCHES]:
        sock.send({"type": "watch_document", "id": doc_id})
        frame = sock.next()
        while frame.get("document_id") != doc_id:  # the earlier watches' ticks
            frame = sock.next()
        assert frame["type"] == "progress"
    sock.send({"type": "watch_document", "id": ids[-1]})
    frame = sock.next()
    while frame["type"] == "progress":
        frame = sock.next()
    assert frame["code"] == "too_many_watches" and frame["document_id"] == ids[-1], frame
    docs.indexer.jobs[ids[0]]._set(state="ready", chunks=9)  # type: ignore[attr-defined]
    while not (frame["type"] == "ready" and frame["document_id"] == ids[0]):
        frame = sock.next()
    # One finished (the client has its final frame): room for one more at once.
    sock.send({"type": "watch_document", "id": ids[-1]})
    frame = sock.next()
    while frame.get("document_id") != ids[-1]:
        frame = sock.next()
    assert frame == {"type": "progress", "done": 0, "total": 9, "document_id": ids[-1]}


def test_a_store_that_goes_down_is_storage_unavailable_and_the_socket_lives(
        sock: Frames, docs: DocumentService, monkeypatch: pytest.MonkeyPatch) -> None:
    from nanochat_lite.history import StorageUnavailable

    store = docs.library.store
    doc = store.add(LOCAL_OWNER, "default", "elsewhere.pdf", "pdf", 10)  # not this indexer's: followed in the store
    sock.send({"type": "watch_document", "id": doc.id})
    assert sock.next() == {"type": "progress", "done": 0, "total": 0, "document_id": doc.id}

    def down(*_args: object, **_kw: object) -> None:
        raise StorageUnavailable("the document store cannot be used right now (connection refused)")

    monkeypatch.setattr(store, "get", down)
    frame = sock.next()
    while frame["type"] == "progress":
        frame = sock.next()
    assert frame["code"] == "storage_unavailable" and frame["document_id"] == doc.id, frame
    assert "connection refused" in frame["message"] and "watch again" in frame["message"]
    sock.send({"type": "watch_document", "id": doc.id})  # down when the watch starts: the same frame at once
    frame = sock.next()
    assert frame["code"] == "storage_unavailable" and frame["document_id"] == doc.id, frame
    monkeypatch.undo()
    store.fail(doc.id, "interrupted", "the server stopped while it was indexed")
    sock.send({"type": "watch_document", "id": doc.id})  # back: the watch works again on the same socket
    assert sock.next() == {"type": "error", "code": "interrupted", "document_id": doc.id,
                           "message": "the server stopped while it was indexed"}
