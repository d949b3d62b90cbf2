"""Documents on the chat page against one real `nanochat-lite serve` (real embedder, real
model): the paperclip's upload with its progress bar until "ready", the documents panel
(list, delete), a file dropped onto the chat, a refused file showing the server's reason,
and, with "use my documents" on, an answer whose citation chip opens the cited page.

What a row went through is recorded by a MutationObserver installed before the upload
(window.__uploadStates), so the states are checked without racing the page.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import httpx
import pytest

from browser_helpers import SERVER_ARGS, open_chat, send, wait_answers
from serverproc import ServerProc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "documents"))
from docmake import pdf  # noqa: E402

# A 3-page atlas: one fact a page, a heading a page (a chunk a page), the fact asked about on page 2.
ATLAS = pdf([["Rivers", "The Danube flows through ten countries and ends in the Black Sea."],
             ["Mountains", "Mount Kilimanjaro is the highest mountain in Africa, a dormant volcano in Tanzania."],
             ["Deserts", "The Atacama desert in Chile is one of the driest places on Earth."]],
            outline=[("Rivers", 0), ("Mountains", 1), ("Deserts", 2)])
INDEX_TIMEOUT_MS = 180_000  # the embedder's first load plus a loaded 2-core machine: a hang guard

RECORD_STATES = """() => {
  window.__uploadStates = {};
  new MutationObserver((records) => {
    for (const r of records) {
      const li = r.target;
      if (!(li instanceof HTMLElement) || !li.classList.contains('upload')) continue;
      const name = li.querySelector('.upload-name').textContent;
      const seen = (window.__uploadStates[name] ||= []);
      if (seen[seen.length - 1] !== li.dataset.state) seen.push(li.dataset.state);
    }
  }).observe(document.querySelector('#uploads'), {subtree: true, attributes: true, attributeFilter: ['data-state']});
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, chat_model_path, embedding_model_dir):
    with ServerProc(tmp_path_factory.mktemp("browser-docs"), *SERVER_ARGS) as s:
        yield s


def documents(server: ServerProc) -> list[dict]:
    r = httpx.get(server.url + "/api/documents", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["data"]["documents"]


def upload_row(page: object, name: str) -> object:
    return page.locator(".upload", has=page.locator(".upload-name", has_text=name))


def wait_ready(page: object, name: str) -> dict:
    page.wait_for_selector(f".upload[data-state=ready] >> text={name}", timeout=INDEX_TIMEOUT_MS)
    row = upload_row(page, name)
    return {"status": row.locator(".upload-status").text_content(),
            "states": page.evaluate("n => window.__uploadStates[n]", name)}


def test_paperclip_upload_progress_ready_panel_and_delete(server, new_page):
    w = new_page(accept_dialogs=True)
    page = w.page
    open_chat(page, server.url)
    page.evaluate(RECORD_STATES)
    assert page.is_visible("#attach")
    page.set_input_files("#doc-file", files=[{"name": "atlas.pdf", "mimeType": "application/pdf", "buffer": ATLAS}])
    bar = upload_row(page, "atlas.pdf").locator("progress.upload-bar")
    bar.wait_for(state="visible")
    got = wait_ready(page, "atlas.pdf")
    listed = [d for d in documents(server) if d["name"] == "atlas.pdf"]
    assert len(listed) == 1 and listed[0]["status"] == "ready" and listed[0]["pages"] == 3
    chunks = listed[0]["chunks"]
    assert got["status"] == f"ready · {chunks} chunk{'' if chunks == 1 else 's'}"
    # Bytes first, then the indexing followed over the WebSocket, then ready: in that order.
    assert got["states"][0] == "uploading" and got["states"][-2:] == ["indexing", "ready"], got
    assert bar.evaluate("b => [b.value, b.max]") == [1, 1]
    assert w.dialogs == []

    page.click("#tab-documents")
    row = page.locator("#docs-list tr", has=page.locator(".doc-name", has_text="atlas.pdf"))
    row.wait_for()
    assert row.locator(".doc-status").text_content() == "ready"
    assert row.locator(".doc-chunks").text_content() == str(chunks)
    assert row.locator(".doc-collection").text_content() == "default"
    assert row.locator(".doc-pages").text_content() == "3"
    row.locator("button[data-action=delete-doc]").click()
    row.wait_for(state="detached")
    assert any(d.startswith("confirm: Delete \"atlas.pdf\"") for d in w.dialogs), w.dialogs
    assert [d for d in documents(server) if d["name"] == "atlas.pdf"] == []


def test_a_dropped_file_uploads_and_a_refused_one_shows_why(server, new_page):
    page = new_page().page
    open_chat(page, server.url)
    page.evaluate(RECORD_STATES)
    text = "Notes on bread. Sourdough needs a starter fed the night before and a hot oven.\n"
    page.evaluate("""([name, b64]) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], name, {type: 'text/plain'}));
      const zone = document.querySelector('#panel-chat');
      for (const type of ['dragenter', 'dragover', 'drop']) {
        zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: dt}));
      }
    }""", ["bread-notes.txt", base64.b64encode(text.encode()).decode()])
    got = wait_ready(page, "bread-notes.txt")
    assert got["status"].startswith("ready · ") and got["states"][0] == "uploading", got
    assert not page.evaluate("() => document.querySelector('#panel-chat').classList.contains('drop-target')")
    assert [d["status"] for d in documents(server) if d["name"] == "bread-notes.txt"] == ["ready"]

    # An empty file: the server refuses it (400), and the row says why in its words.
    page.set_input_files("#doc-file", files=[{"name": "empty.txt", "mimeType": "text/plain", "buffer": b""}])
    page.wait_for_selector(".upload[data-state=error] >> text=empty.txt")
    message = upload_row(page, "empty.txt").locator(".upload-status").text_content()
    r = httpx.post(server.url + "/api/documents", files={"file": ("empty.txt", b"")}, timeout=30)
    assert r.status_code == 400 and message == r.json()["error"]["message"], (message, r.text)
    assert [d for d in documents(server) if d["name"] == "empty.txt"] == []
