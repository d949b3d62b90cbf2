"""The document routes on a real server (real embedder, real SQLite or PostgreSQL store):
upload, events, list, get, delete, search; two keys that never see each other's
documents; bad files refused with the reason and nothing stored; a restart that finds
the documents again (vectors rebuilt from the store)."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverproc import ServerProc

# The documents' test files are made by tests/documents/docmake.py (PDFs written by hand,
# .docx through python-docx, zips); pytest puts that folder on the path only when it
# collects a test there, so this file alone needs it too.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "documents"))
from docmake import docx, pdf, zip_bomb  # noqa: E402

ALICE = "alice-4f0c1d6b0b3f4e0e9d7a2c5b8e1f3a6d"
BOB = "bob-9b2e7c4a1d8f6e3b0a5c2d9e7f4b1a8c"
KEY_ARGS = ("--api-key", f"alice:{ALICE}", "--api-key", f"bob:{BOB}")

MANUAL = """# Volcanoes

Volcanoes erupt when magma rises through the crust. Basaltic lava flows are runny,
while rhyolitic eruptions are explosive and throw out ash and pumice.

# Sourdough

To bake sourdough bread, feed the starter the night before, mix flour and water,
let the dough rise for hours and bake it in a hot Dutch oven.
"""
ATLAS_PAGES = [["The Danube flows through ten countries and ends in the Black Sea."],
               ["Mount Kilimanjaro is the highest mountain in Africa, a dormant stratovolcano in Tanzania."],
               ["The Atacama desert in Chile is one of the driest places on Earth."]]
ATLAS_OUTLINE = [("Rivers", 0), ("Mountains", 1), ("Deserts", 2)]  # a heading a page: a chunk a page


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def upload(server: ServerProc, key: str, name: str, data: bytes, collection: str | None = None) -> httpx.Response:
    form = {"collection": collection} if collection is not None else None
    return httpx.post(server.url + "/api/documents", headers=auth(key), files={"file": (name, data)}, data=form,
                      timeout=120)


def events(server: ServerProc, key: str, doc_id: str) -> list[dict[str, Any]]:
    """Every event of a document's stream, up to its final one (the read timeout guards a hang)."""
    frames: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{server.url}/api/documents/{doc_id}/events", headers=auth(key), timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                frames.append(json.loads(line[6:]))
                if frames[-1]["type"] != "progress":
                    break
    return frames


def indexed(server: ServerProc, key: str, name: str, data: bytes, collection: str | None = None) -> dict[str, Any]:
    r = upload(server, key, name, data, collection)
    assert r.status_code == 202, r.text
    body = r.json()["data"]
    frames = events(server, key, body["id"])
    assert frames[-1]["type"] == "ready", frames
    progress = [f for f in frames if f["type"] == "progress"]
    assert [f["done"] for f in progress] == sorted(f["done"] for f in progress)
    assert all(0 <= f["done"] <= f["total"] == frames[-1]["chunks"] for f in progress if f["total"])
    return {**body, "chunks": frames[-1]["chunks"]}


def search(server: ServerProc, key: str, query: str, **extra: Any) -> list[dict[str, Any]]:
    r = httpx.post(server.url + "/api/documents/search", headers=auth(key), json={"query": query, **extra}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["data"]["results"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, chat_model_path: Path, embedding_model_dir: Path):
    with ServerProc(tmp_path_factory.mktemp("docs"), "--threads", "2", "--max-document-mb", "1", *KEY_ARGS) as s:
        yield s


def test_upload_index_search_and_owners(server: ServerProc) -> None:
    manual = indexed(server, ALICE, "manual.md", MANUAL.encode())
    assert manual["status"] == "indexing" and manual["collection"] == "default"
    assert manual["events_url"] == f"/api/documents/{manual['id']}/events"
    atlas = indexed(server, ALICE, "atlas.pdf", pdf(ATLAS_PAGES, outline=ATLAS_OUTLINE), collection="geo")

    hits = search(server, ALICE, "highest mountain in Africa")
    assert hits[0]["document_id"] == atlas["id"] and hits[0]["name"] == "atlas.pdf" and hits[0]["page"] == 2
    assert hits[0]["heading"] == "Mountains"
    assert "Kilimanjaro" in hits[0]["text"] and set(hits[0]) == {"score", "document_id", "name", "page", "heading", "text"}
    bread = search(server, ALICE, "how to bake bread with a starter", k=1)
    assert len(bread) == 1 and bread[0]["heading"] == "Sourdough" and bread[0]["page"] is None
    assert {h["document_id"] for h in search(server, ALICE, "volcano", collection="geo", k=50)} == {atlas["id"]}

    listed = httpx.get(server.url + "/api/documents", headers=auth(ALICE)).json()["data"]["documents"]
    assert {d["name"]: d["status"] for d in listed} == {"manual.md": "ready", "atlas.pdf": "ready"}
    assert [d["name"] for d in httpx.get(server.url + "/api/documents?collection=geo",
                                         headers=auth(ALICE)).json()["data"]["documents"]] == ["atlas.pdf"]
    got = httpx.get(f"{server.url}/api/documents/{atlas['id']}", headers=auth(ALICE)).json()["data"]["document"]
    assert got["pages"] == 3 and got["kind"] == "pdf" and got["chunks"] == atlas["chunks"]
    assert events(server, ALICE, atlas["id"]) == [{"type": "ready", "chunks": atlas["chunks"]}]  # finished: at once

    # Bob: alice's documents do not exist for him.
    assert httpx.get(server.url + "/api/documents", headers=auth(BOB)).json()["data"]["documents"] == []
    assert search(server, BOB, "highest mountain in Africa") == []
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/events")):
        r = httpx.request(method, f"{server.url}/api/documents/{atlas['id']}{path}", headers=auth(BOB))
        assert r.status_code == 404 and r.json()["error"]["code"] == "document_not_found"
    missing = httpx.get(f"{server.url}/api/documents/{'0' * 32}", headers=auth(BOB))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "document_not_found"  # the same answer

    # Alice deletes: gone from the list, the reads and the search.
    r = httpx.delete(f"{server.url}/api/documents/{atlas['id']}", headers=auth(ALICE))
    assert r.status_code == 200 and r.json()["data"]["chunks"] == atlas["chunks"]
    assert httpx.get(f"{server.url}/api/documents/{atlas['id']}", headers=auth(ALICE)).status_code == 404
    assert all(h["document_id"] != atlas["id"] for h in search(server, ALICE, "Kilimanjaro Danube Atacama", k=50))


BAD = [
    ("empty.txt", b"", 400, "empty"),
    ("notes.txt", bytes(range(256)) * 40, 415, "binary"),
    ("locked.pdf", pdf([["secret plans"]], user_password="pw"), 400, "encrypted_pdf"),
    ("broken.pdf", b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\ngarbage", 400, "corrupt_pdf"),
    ("report.docx", zip_bomb(300 << 20), 413, "zip_bomb"),
    ("huge.txt", b"word " * (1 << 18), 413, "too_large"),  # 1.25 MiB over --max-document-mb 1: before reading
    ("big.txt", b"word " * ((1 << 18) // 5 * 4 + 100), 413, "too_large"),  # just over: read, then refused
]


@pytest.mark.parametrize("name,data,status,code", BAD, ids=[b[0] for b in BAD])
def test_bad_files_are_refused_with_the_reason(server: ServerProc, name: str, data: bytes, status: int,
                                               code: str) -> None:
    r = upload(server, BOB, name, data)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    # The message names the file, or (refused from its Content-Length, unread) the limit.
    assert error["code"] == code and (name in error["message"] or "--max-document-mb" in error["message"]), error
    names = [d["name"] for d in httpx.get(server.url + "/api/documents", headers=auth(BOB)).json()["data"]["documents"]]
    assert name not in names
    with sqlite3.connect(server.db) as db:  # nothing half-stored
        assert db.execute("SELECT COUNT(*) FROM documents WHERE name = ?", (name,)).fetchone()[0] == 0


def test_html_scripts_are_not_indexed_and_docx_is(server: ServerProc) -> None:
    page = (b"<!doctype html><html><head><script>var zanzibarsecret = 1;</script><style>.qwertyuiop{}</style>"
            b"</head><body><h1>Tides</h1><p>The tide rises twice a day because of the Moon.</p></body></html>")
    doc = indexed(server, BOB, "tides.html", page)
    texts = " ".join(h["text"] for h in search(server, BOB, "zanzibarsecret qwertyuiop var", k=50))
    assert "Moon" in texts and "zanzibarsecret" not in texts and "qwertyuiop" not in texts
    assert search(server, BOB, "why does the tide rise?")[0]["document_id"] == doc["id"]
    word = indexed(server, BOB, "garden.docx", docx([("h1", "Roses"), ("p", "Prune roses in late winter.")]))
    hit = search(server, BOB, "when to prune roses", k=1)[0]
    assert hit["document_id"] == word["id"] and hit["heading"] == "Roses"


def test_bad_requests(server: ServerProc) -> None:
    r = httpx.post(server.url + "/api/documents", headers=auth(BOB), json={"file": "x"})
    assert r.status_code == 415
    r = httpx.post(server.url + "/api/documents", headers=auth(BOB), files={"other": ("a.txt", b"hello")})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("the form has no `file`")
    r = upload(server, BOB, "a.txt", b"hello there", collection="x" * 65)
    assert r.status_code == 400 and "collection" in r.json()["error"]["message"]
    for body, param in (({"query": ""}, "query"), ({"query": "x", "k": 0}, "k"), ({"query": "x", "k": 51}, "k"),
                        ({"query": "x" * 501}, "query"), ({"k": 3}, "query")):
        r = httpx.post(server.url + "/api/documents/search", headers=auth(BOB), json=body)
        assert r.status_code == 400 and param in r.json()["error"]["message"], body
    assert httpx.get(server.url + "/api/documents", headers=auth(BOB)).status_code == 200
    assert httpx.get(server.url + "/api/documents").status_code == 401  # no key, no documents
    paths = httpx.get(server.url + "/openapi.json", headers=auth(BOB)).json()["paths"]
    assert set(paths["/api/documents"]) == {"get", "post"} and set(paths["/api/documents/{doc_id}"]) == {"get", "delete"}
    search_op = paths["/api/documents/search"]["post"]
    assert "requestBody" in search_op and "404" in paths["/api/documents/{doc_id}/events"]["get"]["responses"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_restart_finds_the_documents_again(backend: str, request: pytest.FixtureRequest,
                                           tmp_path: Path, chat_model_path: Path, embedding_model_dir: Path) -> None:
    db: Any = tmp_path / "h.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    with ServerProc(tmp_path, "--threads", "2", db=db) as first:
        doc = indexed(first, "", "manual.md", MANUAL.encode())
    with ServerProc(tmp_path, "--threads", "2", db=db) as second:
        started = time.monotonic()
        hits = search(second, "", "what makes an eruption explosive?")
        assert time.monotonic() - started < 60
        assert hits and hits[0]["document_id"] == doc["id"] and hits[0]["heading"] == "Volcanoes"
        listed = httpx.get(second.url + "/api/documents").json()["data"]["documents"]
        assert [(d["id"], d["status"], d["owner"]) for d in listed] == [(doc["id"], "ready", "local")]
