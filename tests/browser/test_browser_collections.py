"""Document collections on the chat page against one real `nanochat-lite serve` (real
embedder, real model): the documents panel's collection field decides where uploads go,
"use my documents" asks the collection it was turned on with (`{"collection": NAME}` on
the chat frame, `true` for `default`), and a document of another collection is not cited.
A collection name the server refuses shows the server's message and uploads nothing.
The switch's memory still reads what pages before collections saved (a list of ids).
The panel's field is remembered across reloads (a corrupt saved value is read as empty).
"""

from __future__ import annotations

import json

import httpx
import pytest

from browser_helpers import SERVER_ARGS, current_conversation, open_chat, send, set_settings, wait_answers
from serverproc import ServerProc

INDEX_TIMEOUT_MS = 180_000  # the embedder's first load plus a loaded 2-core machine: a hang guard
ANSWER_TIMEOUT_MS = 300_000  # a grounded prompt on 2 shared cores: tens of seconds to the first token
QUOKKA = b"The quokka's locker code is 4719. Nobody else knows it.\n"
PANTRY = b"The pantry's spare key hangs behind the flour tin in the cellar.\n"
DOCS_KEY = "nanochat-lite.documents"
COLLECTION_KEY = "nanochat-lite.collection"


@pytest.fixture(scope="module")
def server(tmp_path_factory, chat_model_path, embedding_model_dir):
    with ServerProc(tmp_path_factory.mktemp("browser-collections"), *SERVER_ARGS) as s:
        yield s


def documents(server: ServerProc) -> dict[str, str]:
    """name -> collection of every document of the (key-less) owner."""
    r = httpx.get(server.url + "/api/documents", timeout=30)
    assert r.status_code == 200, r.text
    return {d["name"]: d["collection"] for d in r.json()["data"]["documents"]}


def stored_answer(server: ServerProc, cid: str) -> dict:
    r = httpx.get(f"{server.url}/api/conversations/{cid}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["data"]["messages"][-1]


def chips(page: object) -> list[str]:
    return page.eval_on_selector_all(".msg-assistant .cite-chip", "cs => cs.map(c => c.textContent)")


def test_the_switch_asks_the_collection_it_was_turned_on_with(server, new_page):
    page = new_page().page
    sent: list[dict] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(json.loads(payload))))
    open_chat(page, server.url)
    # The paperclip with the panel's field empty: into `default`.
    page.set_input_files("#doc-file", files=[{"name": "pantry.txt", "mimeType": "text/plain", "buffer": PANTRY}])
    page.wait_for_selector("#uploads .upload[data-state=ready] >> text=pantry.txt", timeout=INDEX_TIMEOUT_MS)

    # The panel: name the collection, upload from there.
    page.click("#tab-documents")
    page.fill("#docs-collection", "notes")
    page.set_input_files("#docs-file", files=[{"name": "quokka-notes.txt", "mimeType": "text/plain",
                                                "buffer": QUOKKA}])
    row = "#docs-uploads .upload[data-state=ready] >> text=quokka-notes.txt"
    page.wait_for_selector(row, timeout=INDEX_TIMEOUT_MS)
    assert page.get_attribute("#docs-uploads .upload-name", "data-collection") == "notes"
    assert documents(server) == {"pantry.txt": "default", "quokka-notes.txt": "notes"}
    listed = page.locator("#docs-list tr", has=page.locator(".doc-name", has_text="quokka-notes.txt"))
    listed.wait_for()
    assert listed.locator(".doc-collection").text_content() == "notes"
    page.wait_for_function("() => document.querySelectorAll('#docs-collections option').length === 2")
    assert page.eval_on_selector_all("#docs-collections option", "os => os.map(o => o.value)") == ["default", "notes"]

    # Back in the chat: off, the switch names what turning it on would use; on, what it uses.
    page.click("#tab-chat")
    assert not page.is_checked("#use-docs")
    assert page.text_content("#use-docs-collection") == "notes"
    assert page.get_attribute("#use-docs-collection", "data-state") == "next"
    page.check("#use-docs")
    assert page.get_attribute("#use-docs-collection", "data-state") == "on"
    set_settings(page, max_tokens=8, temperature=0)
    send(page, "What is the quokka's locker code?")
    wait_answers(page, 1, timeout=ANSWER_TIMEOUT_MS)
    shown = chips(page)
    assert any(c.endswith("quokka-notes.txt") for c in shown), shown
    assert not any("pantry" in c for c in shown), shown
    frames = [f for f in sent if f.get("type") == "chat"]
    assert len(frames) == 1 and frames[0]["documents"] == {"collection": "notes"}, frames
    notes_cid = current_conversation(page)
    stored = stored_answer(server, notes_cid)
    assert stored["citations"] and {c["name"] for c in stored["citations"]} == {"quokka-notes.txt"}, stored

    # The panel's field moves on; the conversation keeps the collection it was turned on with.
    page.click("#tab-documents")
    page.fill("#docs-collection", "")
    page.click("#tab-chat")
    assert page.text_content("#use-docs-collection") == "notes" and page.is_visible("#use-docs-collection")
    page.click("#new-chat")
    assert not page.is_checked("#use-docs") and page.is_hidden("#use-docs-collection")
    page.check("#use-docs")  # with `default` now: sent as `true`, cites the pantry note only
    assert page.is_hidden("#use-docs-collection")
    send(page, "Where does the pantry's spare key hang?")
    wait_answers(page, 1, timeout=ANSWER_TIMEOUT_MS)
    shown = chips(page)
    assert any(c.endswith("pantry.txt") for c in shown) and not any("quokka" in c for c in shown), shown
    frames = [f for f in sent if f.get("type") == "chat"]
    assert len(frames) == 2 and frames[1]["documents"] is True, frames
    default_cid = current_conversation(page)
    assert {c["name"] for c in stored_answer(server, default_cid)["citations"]} == {"pantry.txt"}

    saved = json.loads(page.evaluate("k => localStorage.getItem(k)", DOCS_KEY))
    assert saved == {notes_cid: "notes", default_cid: "default"}
    # A reload into the `notes` conversation: remembered.
    page.goto(f"{server.url}/#c={notes_cid}")
    page.wait_for_selector(f"#m-{stored['id']}")
    assert page.is_checked("#use-docs") and page.text_content("#use-docs-collection") == "notes"


def test_a_refused_collection_name_shows_the_servers_message_and_uploads_nothing(server, new_page):
    page = new_page().page
    posts: list[str] = []
    page.on("request", lambda r: r.method == "POST" and "/api/documents" in r.url and posts.append(r.url))
    open_chat(page, server.url)
    page.click("#tab-documents")
    bad = "x" * 65  # one past the server's limit of 64 characters
    page.fill("#docs-collection", bad)
    page.set_input_files("#docs-file", files=[{"name": "refused.txt", "mimeType": "text/plain", "buffer": QUOKKA}])
    page.wait_for_selector("#docs-uploads .upload[data-state=error] >> text=refused.txt")
    r = httpx.get(server.url + "/api/documents", params={"collection": bad}, timeout=30)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "collection" in message
    assert page.text_content("#docs-collection-error") == message
    assert page.get_attribute("#docs-collection", "aria-invalid") == "true"
    assert page.text_content("#docs-uploads .upload-status") == message
    # The paperclip says the same, with the same name in the field.
    page.click("#tab-chat")
    page.set_input_files("#doc-file", files=[{"name": "refused-too.txt", "mimeType": "text/plain",
                                               "buffer": QUOKKA}])
    page.wait_for_selector("#uploads .upload[data-state=error] >> text=refused-too.txt")
    assert page.text_content("#uploads .upload-status") == message
    assert posts == [] and not {"refused.txt", "refused-too.txt"} & set(documents(server))
    # Typing clears the message; a good name is taken.
    page.click("#tab-documents")
    page.fill("#docs-collection", "notes")
    assert page.text_content("#docs-collection-error") == ""
    assert page.get_attribute("#docs-collection", "aria-invalid") is None


def test_the_switch_reads_what_pages_before_collections_saved(echo_server, new_page):
    """docswitch.js on the page itself: an old saved value (a plain list of ids) means the
    `default` collection; the next change writes the new shape, keeping the old ids; a
    corrupt value is read as nothing on, without an error."""
    page = new_page().page
    open_chat(page, echo_server.url)
    got = page.evaluate("""async (key) => {
      const { DocumentsSwitch } = await import('/static/docswitch.js');
      localStorage.setItem(key, JSON.stringify(['conv-old', 7, null]));
      const input = Object.assign(document.createElement('input'), {type: 'checkbox'});
      const nameBox = document.createElement('span');
      let panel = 'notes';
      const sw = new DocumentsSwitch(input, nameBox, () => panel);
      sw.show({id: 'conv-old'});
      const old = {checked: input.checked, fields: sw.fields({id: 'conv-old'}), name: nameBox.hidden ? null : nameBox.textContent};
      sw.show({id: 'conv-new'});
      const off = {checked: input.checked, fields: sw.fields({id: 'conv-new'}), name: nameBox.textContent,
                   state: nameBox.dataset.state};
      input.checked = true;
      input.dispatchEvent(new Event('change'));
      panel = 'default';  // the panel moves on: conv-new keeps `notes`
      const on = {fields: sw.fields({id: 'conv-new'}), name: nameBox.textContent, state: nameBox.dataset.state};
      const saved = JSON.parse(localStorage.getItem(key));
      localStorage.setItem(key, '{not json');
      sw.show({id: 'conv-old'});
      const corrupt = {checked: input.checked, fields: sw.fields({id: 'conv-old'})};
      localStorage.removeItem(key);
      return {old, off, on, saved, corrupt};
    }""", DOCS_KEY)
    assert got["old"] == {"checked": True, "fields": {"documents": True}, "name": None}
    assert got["off"] == {"checked": False, "fields": {}, "name": "notes", "state": "next"}
    assert got["on"] == {"fields": {"documents": {"collection": "notes"}}, "name": "notes", "state": "on"}
    assert got["saved"] == {"conv-old": "default", "conv-new": "notes"}
    assert got["corrupt"] == {"checked": False, "fields": {}}


def take_collection(page: object, name: str) -> None:
    """Type `name` into the panel's field and press Enter; wait until the page has kept it."""
    page.fill("#docs-collection", name)
    page.press("#docs-collection", "Enter")
    page.wait_for_function("([k, v]) => localStorage.getItem(k) === v", arg=[COLLECTION_KEY, json.dumps(name)])


def test_the_panels_collection_is_remembered_across_reloads(server, new_page):
    page = new_page().page
    open_chat(page, server.url)
    page.click("#tab-documents")
    take_collection(page, "projects")
    page.reload()
    page.wait_for_selector("#conn[data-state=connected]", timeout=20_000)
    # The switch names it at once (what turning it on would use), before the tab is opened.
    assert page.text_content("#use-docs-collection") == "projects"
    assert page.get_attribute("#use-docs-collection", "data-state") == "next"
    page.click("#tab-documents")
    assert page.input_value("#docs-collection") == "projects"
    page.set_input_files("#docs-file", files=[{"name": "reloaded.txt", "mimeType": "text/plain", "buffer": QUOKKA}])
    page.wait_for_selector("#docs-uploads .upload[data-document-id] >> text=reloaded.txt")
    assert page.get_attribute("#docs-uploads .upload-name", "data-collection") == "projects"
    assert documents(server)["reloaded.txt"] == "projects"
    # Cleared: `default` again, and that is remembered too.
    take_collection(page, "")
    page.reload()
    page.wait_for_selector("#conn[data-state=connected]", timeout=20_000)
    assert page.is_hidden("#use-docs-collection")
    page.click("#tab-documents")
    assert page.input_value("#docs-collection") == ""


@pytest.mark.parametrize("saved", ["{not json", "42", '{"collection": "notes"}', '["notes"]'])
def test_a_corrupt_saved_collection_reads_as_default(echo_server, new_page, saved):
    """An unreadable saved value: the field is empty (`default`), the page works (the
    new_page fixture fails the test on any uncaught error), and the next name is kept."""
    page = new_page().page
    open_chat(page, echo_server.url)
    page.evaluate("([k, v]) => localStorage.setItem(k, v)", [COLLECTION_KEY, saved])
    page.reload()
    page.wait_for_selector("#conn[data-state=connected]", timeout=20_000)
    assert page.is_hidden("#use-docs-collection")
    page.click("#tab-documents")
    assert page.input_value("#docs-collection") == ""
    take_collection(page, "notes")
    page.reload()
    page.wait_for_selector("#conn[data-state=connected]", timeout=20_000)
    page.click("#tab-documents")
    assert page.input_value("#docs-collection") == "notes"
