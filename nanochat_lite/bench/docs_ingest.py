"""Ingest: a long PDF uploaded to a real server, and a chat turn's first-token time
while it indexes versus idle.

    run(model, threads, ctx, home, pages=300, turns=8) -> {"pages_per_s", "chunks_per_s", ...}

Starts this checkout's `nanochat-lite serve` on a free loopback port with a throwaway
database, warms it (one chat turn, one document search: the embedder loads), then:
1. idle: `turns` short streamed /api/chat turns, one at a time, nothing else running;
2. uploads a PDF of `pages` pages of Python's documentation (bookmake.py) and, while the
   document's status is still "indexing", the same turns again: the first right after
   the 202 (the document is indexing then by definition), each later one only if a
   GET of the document still says "indexing" before it is sent;
3. waits for "ready" (polled every `POLL_S`) and reports pages/s and chunks/s over the
   whole upload (request sent -> ready), the seconds the 202 took (parsing the PDF is
   done before it), and the indexer's embedding batch size.
TTFT is from sending the request to the first "token" frame, in milliseconds.
The server's embedder uses `threads`, as the chat engine does.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from .client import percentiles
from .common import nanochat_cmd
from .peers import NANO, Peer

POLL_S = 0.1  # how often the document's status is read while waiting for "ready"
READY_TIMEOUT_S = 300.0  # the server's start (model load) on a busy machine
PROMPT = "Name a colour."
ANSWER_TOKENS = 4


def _ttft_ms(client: httpx.Client, url: str) -> float:
    """One streamed /api/chat turn (a new conversation); ms to its first token."""
    started = time.perf_counter()
    body = {"message": PROMPT, "stream": True, "max_tokens": ANSWER_TOKENS, "temperature": 0}
    with client.stream("POST", url + "/api/chat", json=body) as r:
        r.raise_for_status()
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: ") and json.loads(line[6:]).get("type") == "token":
                ms = (time.perf_counter() - started) * 1000
                for _ in lines:  # read the answer out: the next turn starts on an idle engine
                    pass
                return ms
    raise RuntimeError(f"/api/chat streamed no token for {PROMPT!r}")


def _document(client: httpx.Client, url: str, doc_id: str) -> dict[str, Any]:
    r = client.get(f"{url}/api/documents/{doc_id}")
    r.raise_for_status()
    doc: dict[str, Any] = r.json()["data"]["document"]
    return doc


def _server(model: Path, threads: int, ctx: int, home: Path, serve_args: tuple[str, ...]) -> Peer:
    return Peer(NANO, lambda port, db: [*nanochat_cmd(port, str(model), threads, ctx, db), "--home", str(home),
                                        *serve_args], "/api/health", nanochat=True)


def run(model: Path, threads: int, ctx: int, home: Path, *, pages: int, turns: int,
        serve_args: tuple[str, ...] = (), log: Callable[[str], None] = print) -> dict[str, Any]:
    """The figures above, JSON-ready; raises RuntimeError when the server fails or the
    document ends in error (the message says which)."""
    from ..documents.indexer import BATCH_SIZE
    from .bookmake import book_pdf

    data, chapters = book_pdf(pages)
    log(f"  a {pages}-page PDF of Python's documentation: {len(data):,} bytes, {chapters} chapters")
    with tempfile.TemporaryDirectory() as scratch, _server(model, threads, ctx, home, serve_args).start(
            Path(scratch)) as proc, httpx.Client(timeout=600) as client:
        proc.wait_ready("/api/health", timeout=READY_TIMEOUT_S)
        url = proc.url
        _ttft_ms(client, url)  # warm: the first turn pays for loading the prompt cache
        client.post(url + "/api/documents/search", json={"query": "warm the embedder"}).raise_for_status()
        load_idle = os.getloadavg()[0]
        idle = [_ttft_ms(client, url) for _ in range(turns)]
        log(f"  idle: TTFT p50 {percentiles(idle)['median']} ms over {turns} turns")

        load_busy = os.getloadavg()[0]
        started = time.perf_counter()
        r = client.post(url + "/api/documents", files={"file": ("python-docs.pdf", data, "application/pdf")})
        if r.status_code != 202:
            raise RuntimeError(f"the upload was answered {r.status_code}: {r.text[:500]}")
        accepted_s = time.perf_counter() - started
        doc_id = r.json()["data"]["id"]
        busy = [_ttft_ms(client, url)]  # the 202 said "indexing": this turn starts while it indexes
        while len(busy) < turns and _document(client, url, doc_id)["status"] == "indexing":
            busy.append(_ttft_ms(client, url))
        log(f"  while indexing: TTFT p50 {percentiles(busy)['median']} ms over {len(busy)} turns")
        deadline = time.monotonic() + 3600  # only against a hang: a 300-page PDF takes minutes here
        while (doc := _document(client, url, doc_id))["status"] == "indexing":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{doc_id} still indexing after an hour")
            time.sleep(POLL_S)
        total_s = time.perf_counter() - started
        if doc["status"] != "ready":
            raise RuntimeError(f"the document ended {doc['status']}: {doc.get('error_code')}: {doc.get('error')}")
    chunks = int(doc["chunks"])
    log(f"  indexed {pages} pages, {chunks} chunks in {total_s:.1f} s")
    return {"pages": pages, "pdf_bytes": len(data), "chapters": chapters, "pages_read": doc.get("pages"),
            "chunks": chunks, "seconds": round(total_s, 2), "accepted_s": round(accepted_s, 2),
            "pages_per_s": round(pages / total_s, 2), "chunks_per_s": round(chunks / total_s, 2),
            "batch_size": BATCH_SIZE, "threads": threads, "answer_tokens": ANSWER_TOKENS,
            "ttft_idle_ms": percentiles(idle), "ttft_indexing_ms": percentiles(busy),
            "load_average": {"idle": round(load_idle, 2), "indexing": round(load_busy, 2),
                             "end": round(os.getloadavg()[0], 2)}}
