"""`nanochat-lite docs` against a scripted stand-in of the documents API (a stdlib
http.server on a loopback port, in a thread): what is sent, what is printed, exit codes.
The same commands against the real server: tests/commands/test_docs_cli_server.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nanochat_lite.cli import main
from nanochat_lite.commands import docs_client
from nanochat_lite.commands.docs import api_key, server_url
from nanochat_lite.commands.docs_client import _sse_events
from nanochat_lite.config import Config
from serverproc import free_port


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeDocs:
    """Replies by request: `uploads` in turn for each POST /api/documents, `events[id]`
    as the raw SSE body, `documents` for the list, `refuse` {path: (status, code, message)}."""

    uploads: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    events: dict[str, bytes] = field(default_factory=dict)
    documents: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    refuse: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    key: str | None = None
    hold: threading.Event | None = None  # set: event streams stay open, silent, until it is set
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def reply(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        self.seen.append(Seen(h.command, h.path, dict(h.headers), h.rfile.read(length)))
        if self.key and h.headers.get("Authorization") != f"Bearer {self.key}":
            return _json(h, 401, error("unauthorized", "this server needs an API key: send Authorization: Bearer KEY"))
        if h.path in self.refuse:
            status, code, message = self.refuse[h.path]
            return _json(h, status, error(code, message))
        if h.command == "POST" and h.path == "/api/documents":
            status, body = self.uploads.pop(0)
            return _json(h, status, body)
        if h.command == "GET" and h.path.startswith("/api/documents/") and h.path.endswith("/events"):
            doc_id = h.path.split("/")[3]
            if doc_id not in self.events:
                return _json(h, 404, error("document_not_found", f"no document with id {doc_id!r}"))
            h.send_response(200)
            h.send_header("Content-Type", "text/event-stream")
            h.end_headers()
            h.wfile.write(self.events[doc_id])
            h.wfile.flush()
            if self.hold is not None:
                self.hold.wait(60)
            return None
        if h.command == "GET" and h.path.startswith("/api/documents"):
            return _json(h, 200, ok({"documents": self.documents}))
        if h.command == "DELETE":
            return _json(h, 200, ok({"deleted": True}))
        if h.command == "POST" and h.path == "/api/documents/search":
            return _json(h, 200, ok({"results": self.results}))
        return _json(h, 404, error("not_found", "no such route"))


def ok(data: dict[str, Any]) -> dict[str, Any]:
    return {"success": True, "data": data}


def error(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message}}


def accepted(doc_id: str, name: str, collection: str = "default") -> tuple[int, dict[str, Any]]:
    return 202, ok({"id": doc_id, "name": name, "collection": collection, "status": "indexing",
                    "events_url": f"/api/documents/{doc_id}/events"})


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


def _json(h: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(raw)))
    h.end_headers()
    h.wfile.write(raw)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDocs]:
    for name in ("NANOCHAT_LITE_API_KEY", "HOST", "PORT"):
        monkeypatch.delenv(name, raising=False)
    state = FakeDocs()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.reply(self)

        do_POST = do_DELETE = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        if state.hold is not None:
            state.hold.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def docs(fake: FakeDocs, *args: str) -> int:
    return main(["docs", *args, "--server", fake.url])


def form_fields(seen: Seen) -> dict[str, tuple[str | None, bytes]]:
    """A multipart body as {field: (filename, bytes)}, read by the email package."""
    head = f"Content-Type: {seen.headers['Content-Type']}\r\n\r\n".encode()
    message = BytesParser(policy=policy.HTTP).parsebytes(head + seen.body)
    return {part.get_param("name", header="content-disposition"): (part.get_filename(), part.get_payload(decode=True))
            for part in message.iter_parts()}


# -- add ------------------------------------------------------------------------------------
def test_add_follows_progress_to_ready(fake: FakeDocs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "guide.md"
    f.write_bytes(b"# Install\n\nRun the installer.\n")
    fake.uploads.append(accepted("d1", "guide.md", "manuals"))
    fake.events["d1"] = sse({"type": "progress", "done": 0, "total": 0}, {"type": "progress", "done": 1, "total": 4},
                            {"type": "progress", "done": 3, "total": 4}, {"type": "ready", "chunks": 4})
    assert main(["docs", "add", str(f), "--collection", "manuals", "--server", fake.url, "--api-key", "k1"]) == 0
    out, err = capsys.readouterr()
    assert out == "d1\tguide.md\t4 chunks\n"
    assert "guide.md" in err and "4/4" in err, err
    upload, events = fake.seen
    assert (upload.method, upload.path, events.method, events.path) == (
        "POST", "/api/documents", "GET", "/api/documents/d1/events")
    assert upload.headers["Authorization"] == events.headers["Authorization"] == "Bearer k1"
    assert form_fields(upload) == {"collection": (None, b"manuals"), "file": ("guide.md", f.read_bytes())}


def test_indexing_error_ends_the_bar_where_it_was_and_exits_1(fake: FakeDocs, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "scan.pdf"
    f.write_bytes(b"%PDF-1.7 not really")
    fake.uploads.append(accepted("d2", "scan.pdf"))
    fake.events["d2"] = sse({"type": "progress", "done": 2, "total": 5},
                            {"type": "error", "code": "no_text", "message": "the PDF has no text layer"})
    assert docs(fake, "add", str(f)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "2/5" in err and "5/5" not in err, err
    assert "scan.pdf: indexing failed (no_text): the PDF has no text layer" in err


def test_a_refused_file_prints_the_servers_message_and_the_others_go_on(
        fake: FakeDocs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad, good = tmp_path / "tool.txt", tmp_path / "notes.txt"
    bad.write_bytes(b"\x7fELF\x00\x00binary")
    good.write_text("Some notes.")
    fake.uploads += [(415, error("binary", "tool.txt looks like a binary file, not text")),
                     accepted("d3", "notes.txt")]
    fake.events["d3"] = sse({"type": "ready", "chunks": 1})
    assert docs(fake, "add", str(bad), str(good)) == 1
    out, err = capsys.readouterr()
    assert out == "d3\tnotes.txt\t1 chunks\n"
    assert "tool.txt: refused by the server (415 binary): tool.txt looks like a binary file, not text" in err


def test_a_missing_file_uploads_nothing(fake: FakeDocs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    present = tmp_path / "here.md"
    present.write_text("# Here")
    assert docs(fake, "add", str(present), str(tmp_path / "gone.md"), str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "gone.md: no such file" in err and "a folder" in err and "Nothing was uploaded" in err, err
    assert fake.seen == []


def test_a_dropped_event_stream_is_settled_by_the_documents_status(
        fake: FakeDocs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "long.md"
    f.write_text("# Long\n\ntext")
    fake.uploads.append(accepted("d4", "long.md"))
    fake.events["d4"] = sse({"type": "progress", "done": 3, "total": 7}) + b"data: {\"type\": \"rea"  # cut off
    fake.documents = [{"id": "d4", "name": "long.md", "collection": "default", "status": "ready", "chunks": 7,
                       "created_at": 1_700_000_000.0}]
    assert docs(fake, "add", str(f)) == 0
    out, err = capsys.readouterr()
    assert out == "d4\tlong.md\t7 chunks\n"
    assert "7/7" in err, err


def test_a_silent_stream_times_out_and_the_status_settles_it(
        fake: FakeDocs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(docs_client, "EVENTS_TIMEOUT_S", 0.2)  # the server below never speaks again
    fake.hold = threading.Event()
    f = tmp_path / "quiet.md"
    f.write_text("# Quiet")
    fake.uploads.append(accepted("d7", "quiet.md"))
    fake.events["d7"] = sse({"type": "progress", "done": 1, "total": 3})
    fake.documents = [{"id": "d7", "name": "quiet.md", "status": "ready", "chunks": 3}]
    assert docs(fake, "add", str(f)) == 0
    assert capsys.readouterr().out == "d7\tquiet.md\t3 chunks\n"


def test_ctrl_c_leaves_the_server_indexing_and_says_where_to_look(
        fake: FakeDocs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(self: docs_client.DocumentsClient, doc_id: str) -> Iterator[dict[str, Any]]:
        yield {"type": "progress", "done": 1, "total": 9}
        raise KeyboardInterrupt

    monkeypatch.setattr(docs_client.DocumentsClient, "events", interrupted)
    f = tmp_path / "big.md"
    f.write_text("# Big")
    fake.uploads.append(accepted("d8", "big.md"))
    assert docs(fake, "add", str(f)) == 130
    out, err = capsys.readouterr()
    assert out == "" and "1/9" in err
    assert "Stopped following big.md; the server goes on indexing it (id d8): `nanochat-lite docs list`" in err


def test_a_stream_that_never_finishes_gives_up_after_the_retries(
        fake: FakeDocs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "stuck.md"
    f.write_text("# Stuck")
    fake.uploads.append(accepted("d5", "stuck.md"))
    fake.events["d5"] = sse({"type": "progress", "done": 1, "total": 2})
    fake.documents = [{"id": "d5", "name": "stuck.md", "status": "indexing", "chunks": 0}]
    assert docs(fake, "add", str(f)) == 1
    assert "stopped sending its progress 3 times" in capsys.readouterr().err
    assert sum(s.path == "/api/documents/d5/events" for s in fake.seen) == 3


def test_a_document_that_failed_before_the_stream_opened(fake: FakeDocs, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "x.docx"
    f.write_bytes(b"PK\x03\x04")
    fake.uploads.append(accepted("d6", "x.docx"))  # no events: 404 for its stream
    fake.documents = [{"id": "d6", "name": "x.docx", "status": "error", "error_code": "corrupt",
                       "error": "x.docx is not a readable .docx"}]
    assert docs(fake, "add", str(f)) == 1
    assert "x.docx: indexing failed (corrupt): x.docx is not a readable .docx" in capsys.readouterr().err


# -- the server's answers that stop everything -----------------------------------------------
def test_refused_connection_says_how_to_start_the_server(tmp_path: Path) -> None:
    f = tmp_path / "a.md"
    f.write_text("# A")
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["add", str(f)], ["list"], ["rm", "d1"], ["search", "anything"]):
        p = subprocess.run([sys.executable, "-m", "nanochat_lite", "docs", *args, "--server", url],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, (args, p.stderr)
        assert "Traceback" not in p.stderr
        assert f"No server answers at {url} (connection refused): start it with `nanochat-lite serve`" in p.stderr


def test_a_missing_key_says_how_to_pass_one(fake: FakeDocs, capsys: pytest.CaptureFixture[str]) -> None:
    fake.key = "right"
    assert docs(fake, "list") == 2
    err = capsys.readouterr().err
    assert "this server needs an API key" in err and "--api-key KEY" in err and "NANOCHAT_LITE_API_KEY" in err
    assert main(["docs", "list", "--server", fake.url, "--api-key", "right"]) == 0


def test_the_key_comes_from_the_environment_as_serve_reads_it(fake: FakeDocs, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    fake.key = "s3cret"
    monkeypatch.setenv("NANOCHAT_LITE_API_KEY", "alice:s3cret:100k:admin")
    assert docs(fake, "list") == 0
    monkeypatch.setenv("NANOCHAT_LITE_API_KEY", "alice:s3cret,bob:other")  # whose documents? not guessed
    assert docs(fake, "list") == 2
    assert "holds 2 keys; pass the one to use with --api-key KEY" in capsys.readouterr().err
    assert [s.headers.get("Authorization") for s in fake.seen] == ["Bearer s3cret", None]


def test_the_default_address_is_where_serve_listens() -> None:
    assert server_url(None, Config.load(env={})) == "http://127.0.0.1:8080"
    assert server_url(None, Config.load(env={"HOST": "0.0.0.0", "PORT": "9001"})) == "http://127.0.0.1:9001"
    assert server_url(None, Config.load(env={"HOST": "::1"})) == "http://[::1]:8080"
    assert server_url("http://box:1", Config.load(env={"PORT": "9001"})) == "http://box:1"
    assert api_key(None, {}) is None
    assert api_key("bob:k2", {"NANOCHAT_LITE_API_KEY": "k1"}) == "k2"


def test_a_busy_server_and_an_address_that_is_not_one(fake: FakeDocs, capsys: pytest.CaptureFixture[str]) -> None:
    fake.refuse["/api/documents"] = (503, "loading", "the model is loading")
    assert docs(fake, "list") == 2
    assert "The server could not do it (503 loading): the model is loading. Try again" in capsys.readouterr().err
    assert main(["docs", "list", "--server", "ftp://box"]) == 2
    assert "expected the server's address" in capsys.readouterr().err


# -- list, rm, search -----------------------------------------------------------------------
def test_list_prints_a_table(fake: FakeDocs, capsys: pytest.CaptureFixture[str]) -> None:
    fake.documents = [
        {"id": "a1", "name": "report.pdf", "collection": "work", "status": "ready", "chunks": 120,
         "created_at": 1_764_979_200.0},
        {"id": "b22", "name": "notes.md", "collection": "work", "status": "indexing", "chunks": 0,
         "created_at": 1_764_979_260.0}]
    assert docs(fake, "list", "--collection", "my work") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [
        ["ID", "NAME", "COLLECTION", "STATUS", "CHUNKS", "CREATED"],
        ["a1", "report.pdf", "work", "ready", "120", "2025-12-06", "00:00"],
        ["b22", "notes.md", "work", "indexing", "0", "2025-12-06", "00:01"]]
    assert fake.seen[0].path == "/api/documents?collection=my%20work"


def test_refusals_of_a_list_or_of_every_upload_stop_the_command(fake: FakeDocs, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    fake.refuse["/api/documents?collection=%0A"] = (400, "invalid_request", "`collection` must be printable")
    assert docs(fake, "list", "--collection", "\n") == 2
    assert "The server refused it (400 invalid_request): `collection` must be printable" in capsys.readouterr().err
    f = tmp_path / "a.md"
    f.write_text("# A")
    fake.refuse["/api/documents"] = (404, "not_available", "documents are not enabled on this server")
    assert docs(fake, "add", str(f), str(f)) == 2
    assert "(404 not_available): documents are not enabled on this server" in capsys.readouterr().err
    assert [s.method for s in fake.seen] == ["GET", "POST"]  # the second file was not tried


def test_list_of_nothing_says_how_to_add(fake: FakeDocs, capsys: pytest.CaptureFixture[str]) -> None:
    assert docs(fake, "list") == 0
    out, err = capsys.readouterr()
    assert out == "" and "No documents. Add some with `nanochat-lite docs add FILE`." in err


def test_rm_removes_each_and_names_the_unknown(fake: FakeDocs, capsys: pytest.CaptureFixture[str]) -> None:
    fake.refuse["/api/documents/zz"] = (404, "document_not_found", "no document with id 'zz'")
    assert docs(fake, "rm", "a1", "zz", "b/2") == 1
    out, err = capsys.readouterr()
    assert out == "removed a1\nremoved b/2\n"
    assert "zz: no document with id 'zz' (`nanochat-lite docs list` shows the ids)" in err
    assert [(s.method, s.path) for s in fake.seen] == [
        ("DELETE", "/api/documents/a1"), ("DELETE", "/api/documents/zz"), ("DELETE", "/api/documents/b%2F2")]


def test_search_prints_ranked_results(fake: FakeDocs, capsys: pytest.CaptureFixture[str]) -> None:
    long_text = "The installer asks for a folder. " * 20
    fake.results = [
        {"score": 0.8123, "document_id": "a1", "name": "guide.pdf", "page": 3, "heading": "Installing",
         "text": long_text},
        {"score": 0.4, "document_id": "b2", "name": "notes.md", "page": None, "heading": None,
         "text": "install\nit   twice"}]
    assert docs(fake, "search", "how", "to", "install", "-k", "3", "--collection", "work") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "1. guide.pdf  p. 3  0.812  Installing  [document a1]"
    assert lines[1].startswith("   The installer asks for a folder. The installer") and lines[1].endswith(" …")
    assert len(lines[1]) <= 3 + 240 + 2
    assert lines[2:] == ["2. notes.md  0.400  [document b2]", "   install it twice"]
    assert json.loads(fake.seen[0].body) == {"query": "how to install", "k": 3, "collection": "work"}


def test_search_refusal_and_bad_k(fake: FakeDocs, capsys: pytest.CaptureFixture[str]) -> None:
    fake.refuse["/api/documents/search"] = (400, "invalid_request", "`k` must be between 1 and 50, got 99")
    assert docs(fake, "search", "x", "-k", "99") == 2
    assert "The server refused it (400 invalid_request): `k` must be between 1 and 50, got 99" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        docs(fake, "search", "x", "-k", "0")
    assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err


# -- the event-stream reader ----------------------------------------------------------------
def test_sse_reader_joins_data_lines_and_skips_the_rest() -> None:
    lines = [b": keep-alive\n", b"\n", b"event: progress\r\n", b"data: {\"type\": \"progress\",\r\n",
             b"data:  \"done\": 1}\r\n", b"\r\n", b"id: 7\n", b"data: not json\n", b"\n", b"data: [1]\n", b"\n",
             b"data: {\"type\": \"ready\", \"chunks\": 2}\n", b"\n", b"data: {\"type\": \"lost\"}\n"]
    assert list(_sse_events(iter(lines))) == [{"type": "progress", "done": 1}, {"type": "ready", "chunks": 2}]
