"""The page's side of the resume protocol, frame by frame, against a scripted WebSocket
(Playwright's route_web_socket stands in for /ws; pages and REST come from the echo
server). Each test sends exactly the frames a case needs: a repeat after a resume, a
gap, a snapshot, a done rebuilt from the store, an unknown answer, the outbox.
The real server and real dropped connections are in test_browser_resume.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx

from browser_helpers import answers, open_chat, send

STREAMED_DIFFERS = "the streamed answer differs from the final message"


class ScriptedServer:
    """Every connection the page opens to /ws, in order; what the page sent on each."""

    def __init__(self, page: object, on_open: Callable[["ScriptedServer", object], None] | None = None) -> None:
        self.page = page
        self.sockets: list[object] = []
        self.received: list[list[dict]] = []
        self.on_open = on_open
        page.route_web_socket("**/ws", self._accept)

    def _accept(self, ws: object) -> None:
        k = len(self.sockets)
        self.sockets.append(ws)
        self.received.append([])
        ws.on_message(lambda m: self.received[k].append(json.loads(m)))
        if self.on_open:
            self.on_open(self, ws)

    @property
    def ws(self) -> object:
        return self.sockets[-1]

    def frames(self, kind: str) -> list[dict]:
        return [f for got in self.received for f in got if f.get("type") == kind]

    def push(self, *frames: dict) -> None:
        for f in frames:
            self.ws.send(json.dumps(f))

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the page sent {self.received}")
            self.page.wait_for_timeout(25)  # lets Playwright deliver the page's frames

    def drop(self) -> None:
        """Close the current socket; the page reconnects after its backoff wait (~1 s)."""
        n = len(self.sockets)
        self.ws.close(code=1011, reason="cut")
        self.wait(lambda: len(self.sockets) > n and self.page.evaluate(
            "() => document.querySelector('#conn').dataset.state === 'connected'"), "the reconnect")


def start(answer_id: str, cid: str, client_id: str) -> dict:
    return {"type": "start", "seq": 0, "answer_id": answer_id, "conversation_id": cid, "model": "echo",
            "client_id": client_id}


def tok(seq: int, text: str) -> dict:
    return {"type": "token", "seq": seq, "text": text}


def done(seq: int, answer_id: str, cid: str, message: str, **extra: object) -> dict:
    return {"type": "done", "seq": seq, "answer_id": answer_id, "conversation_id": cid, "message": message,
            "model": "echo", "finish_reason": "stop", "usage": {"promptTokens": 3, "completionTokens": 5,
                                                                "totalTokens": 8},
            "timings": {"ttft_ms": 1, "total_ms": 2, "tokens_per_second": 100}, "processingTime": 2, **extra}


def shown(page: object) -> str:
    return page.evaluate("() => [...document.querySelectorAll('.msg-assistant')].pop()?.dataset.raw ?? null")


def status(page: object) -> str:
    return page.evaluate("() => [...document.querySelectorAll('.msg-assistant')].pop()?.dataset.status ?? null")


def real_conversation(echo_server: object) -> str:
    r = httpx.post(f"{echo_server.url}/api/chat", json={"message": "stored question"}, timeout=10)
    return r.json()["data"]["conversation_id"]


def chat_and_start(srv: ScriptedServer, page: object, text: str, answer_id: str, cid: str) -> dict:
    send(page, text)
    srv.wait(lambda: srv.frames("chat"), "the chat frame")
    chat = srv.frames("chat")[-1]
    srv.push(start(answer_id, cid, chat["client_id"]))
    return chat


def test_repeats_ignored_gap_asked_again(echo_server, new_page):
    w = new_page()
    page = w.page
    srv = ScriptedServer(page)
    open_chat(page, echo_server.url)
    chat = chat_and_start(srv, page, "hello?", "A1", "c-1")
    assert 1 <= len(chat["client_id"]) <= 64 and chat["client_id"].isprintable()
    srv.push({"type": "progress", "phase": "prompt"})
    page.wait_for_selector(".msg-assistant .badge >> text=reading your message…")
    srv.push(tok(1, "Hel"), tok(2, "lo"))
    page.wait_for_function("() => document.querySelector('.msg-assistant').dataset.raw === 'Hello'")
    assert page.inner_text(".msg-assistant .badge") == ""

    srv.drop()
    resume = srv.frames("resume")
    assert resume == [{"type": "resume", "answer_id": "A1", "after": 2}]
    assert len(srv.frames("chat")) == 1  # a started answer is resumed, not asked again
    # A repeat (seq 2) is ignored; a gap (seq 5 after 3) makes the page ask again from 3.
    srv.push(tok(2, "lo"), tok(3, " wor"), tok(5, "!"))
    srv.wait(lambda: len(srv.frames("resume")) == 2, "a second resume")
    assert srv.frames("resume")[1] == {"type": "resume", "answer_id": "A1", "after": 3}
    srv.push(tok(4, "ld"), tok(5, "!"), tok(4, "ld"), done(6, "A1", "c-1", "Hello world!"))
    page.wait_for_selector(".msg-assistant[data-status=complete]")
    assert shown(page) == "Hello world!"
    assert not [m for m in w.console if STREAMED_DIFFERS in m], w.console


def test_snapshot_replaces_the_text(echo_server, new_page):
    w = new_page()
    page = w.page
    srv = ScriptedServer(page)
    open_chat(page, echo_server.url)
    chat_and_start(srv, page, "snap?", "A2", "c-2")
    srv.push(tok(1, "abc"), tok(2, "def"))
    page.wait_for_function("() => document.querySelector('.msg-assistant').dataset.raw === 'abcdef'")
    srv.drop()
    assert srv.frames("resume")[-1]["after"] == 2
    # The events after 2 are gone from the server's buffer: the text up to seq 40 instead.
    srv.push({"type": "snapshot", "answer_id": "A2", "seq": 40, "text": "abcdef…and more"},
             tok(40, "NOT AGAIN"), tok(41, "!"))
    page.wait_for_function("() => document.querySelector('.msg-assistant').dataset.raw === 'abcdef…and more!'")
    srv.push(done(42, "A2", "c-2", "abcdef…and more!"))
    page.wait_for_selector(".msg-assistant[data-status=complete]")
    assert not [m for m in w.console if STREAMED_DIFFERS in m], w.console


def test_replayed_done_and_reconnecting_badge(echo_server, new_page):
    page = new_page().page
    srv = ScriptedServer(page)
    open_chat(page, echo_server.url)
    chat_and_start(srv, page, "finished while away?", "A3", "c-3")
    srv.push(tok(1, "partial"))
    page.wait_for_function("() => document.querySelector('.msg-assistant').dataset.raw === 'partial'")
    n = len(srv.sockets)
    srv.ws.close(code=1011, reason="cut")
    page.wait_for_selector(".msg-assistant[data-status=reconnecting]")
    assert "resumes" in page.inner_text(".msg-assistant .badge")
    srv.wait(lambda: len(srv.sockets) > n and srv.frames("resume"), "the resume")
    srv.push({**done(7, "A3", "c-3", "partial, and the rest written while you were away"), "replayed": True})
    page.wait_for_selector(".msg-assistant[data-status=complete]")
    assert shown(page) == "partial, and the rest written while you were away"


def test_unknown_answer_reloads_the_conversation(echo_server, new_page):
    cid = real_conversation(echo_server)
    page = new_page().page
    srv = ScriptedServer(page)
    page.goto(f"{echo_server.url}/#c={cid}")
    page.wait_for_selector("#conn[data-state=connected]")
    page.wait_for_selector(".msg-assistant[data-status=complete]")
    chat_and_start(srv, page, "gone?", "A4", cid)
    srv.push(tok(1, "soon lost"))
    page.wait_for_function("() => [...document.querySelectorAll('.msg-assistant')].pop().dataset.raw === 'soon lost'")
    srv.drop()
    srv.push({"type": "error", "code": "answer_not_found", "message": "no such answer, or it expired"})
    # The page shows the conversation as stored (the scripted answer never was).
    page.wait_for_function("() => document.querySelectorAll('.msg-user').length === 1")
    assert [a["raw"].split("\n")[0] for a in answers(page)] == ["stored question"]
    assert page.is_visible("#composer-input")
    # Nothing left pending: the next message goes out at once.
    send(page, "next")
    srv.wait(lambda: len(srv.frames("chat")) == 2, "the next chat frame")


def test_outbox_sends_each_message_once_after_a_reload(echo_server, new_page):
    w = new_page()
    page = w.page
    refuse = {"on": True}

    def on_open(srv: ScriptedServer, ws: object) -> None:
        if refuse["on"]:
            ws.close(code=1011, reason="server down")

    srv = ScriptedServer(page, on_open)
    page.goto(echo_server.url)
    page.wait_for_selector("#conn[data-state=disconnected]")
    texts = ["first", "second 🙂", "third"]
    for t in texts:
        send(page, t)
    page.wait_for_selector(".msg-user[data-status=offline] >> nth=2")
    box = page.evaluate("() => JSON.parse(localStorage.getItem('nanochat-lite.outbox'))")
    assert [e["text"] for e in box] == texts
    ids = [e["client_id"] for e in box]
    assert len(set(ids)) == 3 and len({e["thread_key"] for e in box}) == 1  # one new chat

    # Reload: the page comes back with the three messages queued, and sends them once
    # the server accepts the connection, one at a time, each with its client id.
    page.reload()
    page.wait_for_selector(".msg-user >> nth=2")
    assert page.eval_on_selector_all(".msg-user", "els => els.map(e => e.dataset.raw)") == texts
    refuse["on"] = False
    cid = real_conversation(echo_server)  # any stored conversation will do for the page
    for k, t in enumerate(texts):
        srv.wait(lambda: len(srv.frames("chat")) == k + 1, f"chat frame {k}")
        chat = srv.frames("chat")[k]
        assert (chat["message"], chat["client_id"]) == (t, ids[k])
        assert chat.get("conversation_id") == (cid if k else None)  # the first one makes the chat
        srv.push(start(f"B{k}", cid, chat["client_id"]), tok(1, f"answer {k}"),
                 done(2, f"B{k}", cid, f"answer {k}"))
    page.wait_for_function("() => document.querySelectorAll('.msg-assistant[data-status=complete]').length === 3")
    page.wait_for_timeout(300)
    assert len(srv.frames("chat")) == 3
    assert page.evaluate("() => localStorage.getItem('nanochat-lite.outbox')") is None
    assert [a["raw"] for a in answers(page)] == ["answer 0", "answer 1", "answer 2"]


def test_sent_but_not_started_is_sent_again_with_the_same_id(echo_server, new_page):
    page = new_page().page
    srv = ScriptedServer(page)
    open_chat(page, echo_server.url)
    send(page, "did you get it?")
    srv.wait(lambda: srv.frames("chat"), "the chat frame")
    srv.drop()  # before any start: the page cannot know whether the server got it
    srv.wait(lambda: len(srv.frames("chat")) == 2, "the chat frame, again")
    first, again = srv.frames("chat")
    assert first["client_id"] == again["client_id"]  # the server de-duplicates on it
    assert page.evaluate("() => JSON.parse(localStorage.getItem('nanochat-lite.outbox')).length") == 1
    srv.push(start("A5", "c-5", again["client_id"]))
    page.wait_for_function("() => localStorage.getItem('nanochat-lite.outbox') === null")


def test_reload_mid_answer_follows_it_live(echo_server, new_page):
    """A page opened on a conversation whose last answer is still being written (this tab
    was reloaded mid-answer) follows that answer from its start, in place."""
    cid = real_conversation(echo_server)
    store = echo_server.runtime.store
    store.add_message(cid, "user", "still writing?", client_id="u-F1", answer_id="F1")
    store.add_message(cid, "assistant", "part", status="streaming", answer_id="F1")
    page = new_page().page
    srv = ScriptedServer(page)
    page.goto(f"{echo_server.url}/#c={cid}")
    srv.wait(lambda: srv.frames("resume"), "the resume")
    assert srv.frames("resume") == [{"type": "resume", "answer_id": "F1", "after": -1}]
    assert status(page) == "streaming" and shown(page) == "part"
    srv.push(start("F1", cid, "u-F1"), tok(1, "part"), tok(2, " and the rest"))
    page.wait_for_function("() => [...document.querySelectorAll('.msg-assistant')].pop().dataset.raw"
                           " === 'part and the rest'")
    srv.push(done(3, "F1", cid, "part and the rest"))
    page.wait_for_selector(".msg-assistant[data-status=complete] >> nth=1")
    assert page.locator(".msg-assistant").count() == 2 and page.locator(".msg-user").count() == 2
    # The page is free again: a new message goes out as a chat.
    send(page, "next")
    srv.wait(lambda: srv.frames("chat"), "the chat frame")
