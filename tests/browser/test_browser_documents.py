"""Documents on the chat page against one real `nanochat-lite serve` (real embedder, real
model): the paperclip's upload with its progress bar until "ready", the documents panel
(list, delete), a file dropped onto the chat, a refused file showing the server's reason,
the "use my documents" switch remembered per conversation, and citation chips that open
the cited text with its page (hostile names and texts staying text).

What a row went through is recorded by a MutationObserver installed before the upload
(window.__uploadStates), so the states are checked without racing the page.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import httpx
import pytest

from browser_helpers import SERVER_ARGS, current_conversation, open_chat, send, set_settings, wait_answers
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


HOSTILE = [{"n": 1, "name": '<img src=x onerror="window.__xss=1">.pdf', "page": 2, "score": 0.9,
            "document_id": "d1", "text": "<script>window.__xss=2</script> Kilimanjaro & <b>bold</b>"},
           {"n": 2, "name": "notes.md", "page": None, "score": 0.5, "document_id": "d2",
            "text": '<svg onload="window.__xss=3"></svg>'}]


@pytest.mark.parametrize("bypass_csp", [True, False], ids=["csp-bypassed", "csp-on"])
def test_citation_chips_open_the_cited_text_as_text(echo_server, new_page, bypass_csp):
    """citations.js on the page itself: a chip a citation, labelled "[n] name p. N", opening
    the dialog with the page and the text; names and texts with markup stay characters."""
    w = new_page(bypass_csp=bypass_csp)
    page = w.page
    open_chat(page, echo_server.url)
    labels = page.evaluate("""async (citations) => {
      const { setCitations } = await import('/static/citations.js');
      const li = document.createElement('li');
      li.className = 'msg msg-assistant';
      li.append(Object.assign(document.createElement('div'), {className: 'msg-meta'}));
      document.querySelector('#transcript').append(li);
      setCitations(li, citations);
      setCitations(li, citations);  // again (a replayed done frame): replaced, not doubled
      return [...li.querySelectorAll('.cite-chip')].map((c) => c.textContent);
    }""", HOSTILE)
    assert labels == [f"[1] {HOSTILE[0]['name']} p. 2", "[2] notes.md"]
    page.click(".cite-chip >> nth=0")
    page.wait_for_selector("#cite-dialog[open]")
    assert page.text_content("#cite-title") == f"[1] {HOSTILE[0]['name']}"
    assert page.text_content("#cite-page") == "p. 2"
    assert page.text_content("#cite-text") == HOSTILE[0]["text"]
    page.click("#cite-dialog [data-action=close]")
    page.click(".cite-chip >> nth=1")
    assert page.text_content("#cite-page") == "" and page.text_content("#cite-text") == HOSTILE[1]["text"]
    page.keyboard.press("Escape")
    seen = page.evaluate("""() => ({xss: window.__xss ?? null,
      bad: [...document.querySelectorAll('#cite-dialog *, .citations *')].filter(
        (e) => ['IMG', 'SCRIPT', 'SVG', 'B'].includes(e.tagName.toUpperCase())).length})""")
    assert seen == {"xss": None, "bad": 0}
    assert w.dialogs == []


def test_use_my_documents_is_remembered_per_conversation(server, new_page):
    page = new_page().page
    sent: list[dict] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(json.loads(payload))))
    open_chat(page, server.url)
    set_settings(page, max_tokens=4, temperature=0)
    assert not page.is_checked("#use-docs")
    page.check("#use-docs")  # on before the conversation exists: kept with the new chat's thread
    send(page, "Say hi.")
    wait_answers(page, 1, timeout=120_000)
    with_docs = current_conversation(page)
    chats = [f for f in sent if f.get("type") == "chat"]
    assert len(chats) == 1 and chats[0]["documents"] is True

    page.click("#new-chat")
    assert not page.is_checked("#use-docs")
    send(page, "Say hello.")
    wait_answers(page, 1, timeout=120_000)
    without = current_conversation(page)
    chats = [f for f in sent if f.get("type") == "chat"]
    assert len(chats) == 2 and "documents" not in chats[1] and chats[1].get("conversation_id") is None

    page.goto(f"{server.url}/#c={with_docs}")  # a reload: the switch comes from local storage
    page.wait_for_selector(f"#m-{conversation_last_id(server, with_docs)}")
    assert page.is_checked("#use-docs")
    page.evaluate("id => { location.hash = '#c=' + encodeURIComponent(id); }", without)
    page.wait_for_selector(f"#m-{conversation_last_id(server, without)}")
    assert not page.is_checked("#use-docs")


def conversation_last_id(server: ServerProc, cid: str) -> str:
    r = httpx.get(f"{server.url}/api/conversations/{cid}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["data"]["messages"][-1]["id"]


KEY = "docs-page-key-3e9a1c7b5d2f"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, chat_model_path, embedding_model_dir):
    with ServerProc(tmp_path_factory.mktemp("browser-docs-keyed"), *SERVER_ARGS, "--api-key", f"tester:{KEY}") as s:
        yield s


def test_upload_carries_the_key_and_asks_for_it_on_401(keyed_server, new_page):
    page = new_page().page
    page.goto(keyed_server.url)
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", KEY)
    page.press("#key-input", "Enter")
    page.wait_for_selector("#conn[data-state=connected]", timeout=20_000)
    # A key the server no longer takes (as if it was changed): the upload's 401 opens the
    # key form, and the file goes again with the new key.
    page.evaluate("() => localStorage.setItem('nanochat-lite.api-key', 'an-old-key')")
    page.set_input_files("#doc-file", files=[{"name": "keyed.txt", "mimeType": "text/plain",
                                               "buffer": b"A note kept under a key: the tide rises twice a day.\n"}])
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", KEY)
    page.press("#key-input", "Enter")
    page.wait_for_selector(".upload[data-state=ready] >> text=keyed.txt", timeout=INDEX_TIMEOUT_MS)
    r = httpx.get(keyed_server.url + "/api/documents", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert [d["name"] for d in r.json()["data"]["documents"]] == ["keyed.txt"]
    assert httpx.get(keyed_server.url + "/api/documents", timeout=30).status_code == 401


def test_an_answer_from_my_documents_cites_page_2(server, new_page):
    """The whole path a person takes: attach a 3-page PDF, switch "use my documents" on, ask
    about the fact on its page 2; a chip "[n] atlas-cited.pdf p. 2" shows under the answer and
    opens that page's text; the stored answer shows the same chips after a reload."""
    page = new_page().page
    open_chat(page, server.url)
    page.set_input_files("#doc-file", files=[{"name": "atlas-cited.pdf", "mimeType": "application/pdf",
                                               "buffer": ATLAS}])
    page.wait_for_selector(".upload[data-state=ready] >> text=atlas-cited.pdf", timeout=INDEX_TIMEOUT_MS)
    set_settings(page, max_tokens=24, temperature=0)
    page.check("#use-docs")
    send(page, "Which is the highest mountain in Africa?")
    wait_answers(page, 1, timeout=300_000)
    chips = page.eval_on_selector_all(".msg-assistant .cite-chip", "cs => cs.map(c => c.textContent)")
    page2 = [c for c in chips if c.endswith("atlas-cited.pdf p. 2")]
    assert page2, chips
    page.click(f".msg-assistant .cite-chip >> text={page2[0]}")
    page.wait_for_selector("#cite-dialog[open]")
    assert page.text_content("#cite-page") == "p. 2"
    assert "Kilimanjaro" in page.text_content("#cite-text")
    page.keyboard.press("Escape")

    cid = current_conversation(page)
    stored = httpx.get(f"{server.url}/api/conversations/{cid}", timeout=30).json()["data"]["messages"][-1]
    assert any(c["page"] == 2 and c["name"] == "atlas-cited.pdf" for c in stored["citations"]), stored
    assert stored["documents_mode"] in ("whole", "search")
    mode = page.get_attribute(".msg-assistant .citations", "data-mode")  # the live answer's, from its done frame
    page.reload()
    page.wait_for_selector(f"#m-{stored['id']} .cite-chip")
    assert page.eval_on_selector_all(f"#m-{stored['id']} .cite-chip", "cs => cs.map(c => c.textContent)") == chips
    # The answer says how the documents were read: whole, or the passages that matched best.
    assert mode == stored["documents_mode"] == page.get_attribute(f"#m-{stored['id']} .citations", "data-mode")
    assert page.text_content(f"#m-{stored['id']} .cite-label").startswith("Sources (")
    assert page.is_checked("#use-docs")


def test_twenty_files_at_once_all_reach_ready(server, new_page):
    """More files than one socket follows at once (16): every row ends ready. (Whether the
    server turned some watches away with too_many_watches, which the page asks again for,
    depends on how fast the indexer is here; the fake-indexer test pins that frame down.)"""
    page = new_page().page
    open_chat(page, server.url)
    files = [{"name": f"many-{i:02d}.txt", "mimeType": "text/plain",
              "buffer": f"Note {i}: the number {i} squared is {i * i}.\n".encode()} for i in range(20)]
    page.set_input_files("#doc-file", files=files)
    page.wait_for_function("""() => {
      const rows = [...document.querySelectorAll('.upload')].filter(r => r.querySelector('.upload-name')
        .textContent.startsWith('many-'));
      return rows.length === 20 && rows.every(r => r.dataset.state === 'ready' || r.dataset.state === 'error');
    }""", timeout=INDEX_TIMEOUT_MS)
    states = page.eval_on_selector_all(".upload", """rs => rs.filter(r => r.querySelector('.upload-name')
      .textContent.startsWith('many-')).map(r => [r.querySelector('.upload-name').textContent, r.dataset.state,
                                                  r.querySelector('.upload-status').textContent])""")
    assert all(s == "ready" and t == "ready · 1 chunk" for _, s, t in states), states
    assert sorted(d["name"] for d in documents(server) if d["name"].startswith("many-")) == [f["name"] for f in files]
