"""`watch_document` on the real server's WebSocket (real embedder, real SQLite store, two
keys): a document's progress frames then `ready`, the same final frame as its SSE events,
each frame naming the document; the other key's watch is `document_not_found`, as for an
id that does not exist. The fake-indexer tests of the same frame are in
tests/server/routes/test_ws_documents.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from serverproc import ServerProc

ALICE = "alice-0c7d3e5f9a1b4c2d8e6f0a3b5c7d9e1f"
BOB = "bob-5e1a9c3d7f2b4a6c8e0d1f3a5b7c9e2d"
# Forty paragraphs on different things: several chunks, so several embedder batches to follow.
TEXT = "\n\n".join(f"# Part {i}\n\nParagraph {i} is about the number {i}, its square {i * i} and its cube "
                   f"{i ** 3}; " * 3 for i in range(40))
RECV_TIMEOUT_S = 120  # a hang guard on a loaded 2-core machine, not a measure


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, chat_model_path: Path, embedding_model_dir: Path):
    with ServerProc(tmp_path_factory.mktemp("docs-ws"), "--threads", "1", "--api-key", f"alice:{ALICE}",
                    "--api-key", f"bob:{BOB}") as s:
        yield s


def watch(server: ServerProc, key: str, doc_id: str) -> list[dict[str, Any]]:
    """The frames of one watch, up to its final one (a ping first: the socket is answering)."""
    with connect(server.ws_url, additional_headers=auth(key), open_timeout=10) as ws:
        ws.send(json.dumps({"type": "watch_document", "id": doc_id}))
        frames = [json.loads(ws.recv(timeout=RECV_TIMEOUT_S))]
        while frames[-1]["type"] == "progress":
            frames.append(json.loads(ws.recv(timeout=RECV_TIMEOUT_S)))
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=RECV_TIMEOUT_S)) == {"type": "pong"}
    return frames


def test_watch_document_on_the_real_server(server: ServerProc) -> None:
    r = httpx.post(server.url + "/api/documents", headers=auth(ALICE), files={"file": ("numbers.md", TEXT.encode())},
                   timeout=120)
    assert r.status_code == 202, r.text
    doc_id = r.json()["data"]["id"]
    frames = watch(server, ALICE, doc_id)
    assert all(f["document_id"] == doc_id for f in frames), frames
    final = frames[-1]
    assert final["type"] == "ready" and final["chunks"] > 1, frames
    progress = [f for f in frames if f["type"] == "progress"]
    assert set(f["type"] for f in frames[:-1]) <= {"progress"}
    assert [f["done"] for f in progress] == sorted(f["done"] for f in progress)
    assert all(0 <= f["done"] <= f["total"] == final["chunks"] for f in progress if f["total"]), progress
    doc = httpx.get(f"{server.url}/api/documents/{doc_id}", headers=auth(ALICE)).json()["data"]["document"]
    assert doc["status"] == "ready" and doc["chunks"] == final["chunks"]

    # Finished: the final frame at once, the same as the SSE stream's.
    assert watch(server, ALICE, doc_id) == [{"type": "ready", "chunks": doc["chunks"], "document_id": doc_id}]
    with httpx.stream("GET", f"{server.url}/api/documents/{doc_id}/events", headers=auth(ALICE), timeout=60) as s:
        sse = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert sse == [{"type": "ready", "chunks": doc["chunks"]}]

    # Bob: alice's document does not exist for him, exactly like an id nobody has.
    for key, some_id in ((BOB, doc_id), (ALICE, "no-such-document")):
        got = watch(server, key, some_id)
        assert len(got) == 1 and got[0]["type"] == "error" and got[0]["code"] == "document_not_found", got
        assert got[0]["document_id"] == some_id
