"""The page's model picker against one real server serving several models (#22 item 5):
SmolLM2 (the default), Gemma 3 270M (a base model: no chat template), and from
--models-dir a second copy of SmolLM2 under another name and a corrupt file.
--models-memory 250 fits one SmolLM2 (138 MB with these flags) but not two, and never
Gemma (277 MB): loading the copy unloads the default, and Gemma is a 503 naming the
numbers. A one-model server shows no picker."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from browser_helpers import answers, current_conversation, open_chat, send, set_settings, wait_answers
from nanochat_lite import models
from serverproc import ServerProc

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"
COPY = "smol-b"  # SmolLM2 again, under another file name: a second chat model that loads fast
# f16 KV: the sizes below are that cache's (q8_0 would fit two SmolLM2 in 250 MB).
ARGS = ("--threads", "1", "--parallel", "2", "--ctx-size", "1024", "--models-memory", "250", "--kv-type", "f16")
TIMEOUT = 120_000  # ms; a hang guard on a loaded 2-core machine, not a speed bound

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_home: Path, chat_model_path: Path):
    models.ensure(model_home, GEMMA, progress=print)
    tmp = tmp_path_factory.mktemp("browser-models")
    folder = tmp / "more"
    folder.mkdir()
    (folder / f"{COPY}.gguf").symlink_to(chat_model_path)
    (folder / "broken.gguf").write_bytes(chat_model_path.read_bytes()[:4096])  # a header, no tensor data
    with ServerProc(tmp, "--model", SMOL, "--model", GEMMA, "--models-dir", str(folder), *ARGS) as s:
        yield s


def options(page) -> dict[str, dict]:
    return {o["value"]: o for o in page.evaluate("""() => [...document.querySelectorAll('#model-picker option')]
        .map(o => ({value: o.value, label: o.textContent, disabled: o.disabled, status: o.dataset.status,
                    title: o.title}))""")}


def wait_status(page, name: str, status: str) -> None:
    page.wait_for_function("""([name, status]) => [...document.querySelectorAll('#model-picker option')]
        .some(o => o.value === name && o.dataset.status === status)""", arg=[name, status], timeout=TIMEOUT)


def stored_models(server: ServerProc, cid: str) -> list[str]:
    r = httpx.get(f"{server.url}/api/conversations/{cid}", timeout=30)
    assert r.status_code == 200, r.text
    return [m["model"] for m in r.json()["data"]["messages"] if m["role"] == "assistant"]


def record_loading(page) -> None:
    """Record what the page saw: each /api/models status of COPY it read, and every badge
    an answer showed."""
    page.evaluate("""name => {
        window.__polled = []; window.__badges = [];
        const real = window.fetch;
        window.fetch = async (...args) => {
            const res = await real(...args);
            if (String(args[0]).startsWith('/api/models')) {
                res.clone().json().then(b => window.__polled.push(
                    (b.data.models.find(m => m.name === name) || {}).status));
            }
            return res;
        };
        new MutationObserver(() => {
            for (const b of document.querySelectorAll('.msg-assistant .badge')) {
                if (b.textContent && window.__badges[window.__badges.length - 1] !== b.textContent) {
                    window.__badges.push(b.textContent);
                }
            }
        }).observe(document.getElementById('transcript'), {subtree: true, childList: true, characterData: true});
    }""", COPY)


def test_picker_lists_every_model_and_each_conversation_keeps_its_own(server, new_page):
    page = new_page().page
    open_chat(page, server.url)
    page.wait_for_selector("#model-box:not([hidden])")
    page.wait_for_function("() => document.querySelectorAll('#model-picker option').length === 4")
    listed = options(page)
    assert set(listed) == {SMOL, GEMMA, COPY, "broken"}
    assert listed[SMOL]["label"] == f"{SMOL} · 98 MB · loaded" and not listed[SMOL]["disabled"]
    assert listed[COPY]["label"] == f"{COPY} · 98 MB · unloaded" and not listed[COPY]["disabled"]
    # A base model is listed, not offered for chat; a corrupt file says why it is unusable.
    assert listed[GEMMA]["label"] == f"{GEMMA} · 253 MB · no chat template (completions only)"
    assert listed[GEMMA]["disabled"]
    assert listed["broken"]["disabled"] and " · unusable: " in listed["broken"]["label"], listed["broken"]
    assert page.input_value("#model-picker") == SMOL  # the server's default for a new chat
    assert page.is_hidden("#model-name")  # the top bar's one name would not be the open chat's

    # The copy, chosen for this chat: it loads on demand (the default is unloaded to make
    # room) and its name is on the answer, live and as stored.
    set_settings(page, max_tokens=8, temperature=0)
    record_loading(page)
    page.select_option("#model-picker", COPY)
    send(page, "Say hi.")
    wait_answers(page, 1, TIMEOUT)
    assert answers(page)[0]["status"] in ("complete", "length"), answers(page)
    assert page.inner_text(".msg-assistant .msg-model") == COPY
    first = current_conversation(page)
    assert stored_models(server, first) == [COPY]
    wait_status(page, COPY, "loaded")
    wait_status(page, SMOL, "unloaded")  # --models-memory fits one: the picker shows the swap
    polled, badges = page.evaluate("[window.__polled, window.__badges]")
    # Whenever a read of the list caught the copy loading, the answer said so.
    if "loading" in polled:
        assert any(b.startswith(f"loading model {COPY}…") for b in badges), (polled, badges)
    assert "loaded" in polled, polled

    # A new chat starts with the model last used; another model for this one.
    page.click("#new-chat")
    assert page.input_value("#model-picker") == COPY
    page.select_option("#model-picker", SMOL)
    send(page, "Say bye.")
    wait_answers(page, 1, TIMEOUT)
    assert page.inner_text(".msg-assistant .msg-model") == SMOL
    second = current_conversation(page)
    assert second != first and stored_models(server, second) == [SMOL]
    wait_status(page, SMOL, "loaded")

    # Reopened, each conversation shows its own model, and its next answer uses it.
    page.click(f"#conversation-list [data-id='{first}'] [data-action=open]")
    page.wait_for_function("id => location.hash === '#c=' + id", arg=first)
    page.wait_for_selector(".msg-assistant")
    assert page.input_value("#model-picker") == COPY
    assert page.inner_text(".msg-assistant .msg-model") == COPY
    send(page, "Say hi again.")
    wait_answers(page, 2, TIMEOUT)
    assert stored_models(server, first) == [COPY, COPY]
    page.goto(f"{server.url}/#c={second}")
    page.reload()
    page.wait_for_selector(".msg-assistant")
    page.wait_for_function("() => document.querySelectorAll('#model-picker option').length === 4")
    assert page.input_value("#model-picker") == SMOL


def test_model_errors_are_the_servers_message_in_the_transcript(server, new_page):
    """A model the list offered but the server refuses: gone since the list was read
    (404 model_not_found), or too large for --models-memory (503 with the numbers). The
    list is the server's, with a model added or Gemma offered as if it had a template."""
    page = new_page().page

    def doctored(route) -> None:
        body = route.fetch().json()
        for m in body["data"]["models"]:
            if m["name"] == GEMMA:
                m["has_chat_template"] = True
        body["data"]["models"].append({**body["data"]["models"][0], "name": "ghost", "default": False})
        route.fulfill(json=body)

    page.route("**/api/models", doctored)
    open_chat(page, server.url)
    page.wait_for_function("() => document.querySelectorAll('#model-picker option').length === 5")
    page.select_option("#model-picker", "ghost")
    send(page, "Hello?")
    wait_answers(page, 1, TIMEOUT)
    [failed] = answers(page)
    assert failed["status"] == "failed"
    error = page.inner_text(".msg-assistant .msg-error")
    assert error.startswith("no model named 'ghost'; this server serves: ") and error.endswith("(model_not_found)")

    page.click("#new-chat")
    page.select_option("#model-picker", GEMMA)
    send(page, "Hello?")
    wait_answers(page, 1, TIMEOUT)
    error = page.inner_text(".msg-assistant .msg-error")
    assert re.search(rf"the model '{GEMMA}' needs \d+ MB .* --models-memory is 250 MB", error), error
    assert error.endswith("(model_too_large)"), error


def test_answer_waiting_for_its_model_says_loading(server, new_page):
    """While SmolLM2 writes a long answer on one page, another page's chat for the copy
    cannot load it (--models-memory fits one, and a busy model is never unloaded): it
    waits, and the server's `loading` frames (about once a second) show on its answer
    until the first page's answer is stopped and the copy loads and answers."""
    a = new_page().page
    open_chat(a, server.url)
    a.wait_for_function("() => document.querySelectorAll('#model-picker option').length === 4")
    a.select_option("#model-picker", SMOL)
    set_settings(a, max_tokens=800, temperature=0, repeat_penalty=1)
    send(a, "Write the numbers from 1 to 500, separated by commas.")
    a.wait_for_function("""() => { const li = document.querySelector('.msg-assistant');
        return li && li.dataset.status === 'streaming' && li.dataset.raw.length > 20; }""", timeout=TIMEOUT)

    b = new_page().page
    open_chat(b, server.url)
    b.wait_for_function("() => document.querySelectorAll('#model-picker option').length === 4")
    b.select_option("#model-picker", COPY)
    set_settings(b, max_tokens=8, temperature=0)
    send(b, "Say hi.")
    b.wait_for_function("""name => { const li = document.querySelector('.msg-assistant');
        return li && /^loading model .+… \\d+ s$/.test(li.querySelector('.badge').textContent)
            && li.querySelector('.msg-model').textContent === name; }""", arg=COPY, timeout=TIMEOUT)
    assert b.inner_text(".msg-assistant .badge").startswith(f"loading model {COPY}… ")
    assert a.evaluate("() => document.querySelector('.msg-assistant').dataset.status") == "streaming"

    a.click("#stop")  # the first model goes idle: the copy replaces it, and answers
    wait_answers(b, 1, TIMEOUT)
    assert answers(b)[0]["status"] in ("complete", "length"), answers(b)
    assert b.inner_text(".msg-assistant .msg-model") == COPY
    assert b.is_hidden(".msg-assistant .badge") or not b.inner_text(".msg-assistant .badge").startswith("loading")
    wait_status(b, COPY, "loaded")
    assert stored_models(server, current_conversation(b)) == [COPY]


def test_one_model_server_shows_no_picker(echo_server, new_page):
    page = new_page().page
    open_chat(page, echo_server.url)
    send(page, "one model")
    wait_answers(page, 1)
    assert page.is_hidden("#model-box")
    assert page.inner_text("#model-name") == "echo"
    assert page.inner_text(".msg-assistant .msg-model") == "echo"


def test_an_upstream_entry_is_labelled_with_its_host_and_its_state(server, new_page):
    """The label rules of the picker (web/models.js), run in the page: an upstream beside the
    local models shows its host instead of a size, and "not answering" while its status is
    error (it may come back, so it stays selectable)."""
    page = new_page().page
    open_chat(page, server.url)
    labels = page.evaluate("""() => import('/static/models.js').then(m => [
        m.optionLabel({name: 'up', status: 'loaded', upstream: 'http://10.0.0.5:8080/v1'}),
        m.optionLabel({name: 'up', status: 'error', upstream: 'http://10.0.0.5:8080/v1', error: 'no answer'}),
        m.optionLabel({name: 'g', status: 'unloaded', size_bytes: 253113024, has_chat_template: false}),
        m.whyNot({name: 'up', status: 'error', upstream: 'http://10.0.0.5:8080/v1'})])""")
    assert labels == ["up · remote 10.0.0.5:8080 · loaded", "up · remote 10.0.0.5:8080 · not answering",
                      "g · 253 MB · no chat template (completions only)", None]
