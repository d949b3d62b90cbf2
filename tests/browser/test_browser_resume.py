"""The page resumes an answer whose connection dropped, and keeps an outbox of unsent
messages (issue #15 item 4), against the real model server.

1. Cut the page's connection mid-answer, at random positions, for real: the page talks
   to the server through a TCP proxy (tcpproxy.py) that resets every connection on
   command. After each reconnect the answer the page shows equals the stored answer
   exactly, no text shown twice or left out at any moment. NANOCHAT_LITE_RESUME_CUTS
   sets the number of cuts (the acceptance run: 20); the normal suite makes 4.
2. The server restarts while the page holds unsent messages, and the tab is reloaded
   meanwhile: after the restart every message is sent, and stored, exactly once.
"""

from __future__ import annotations

import difflib
import json
import os
import random

import httpx
import pytest

from browser_helpers import SERVER_ARGS, answers, current_conversation, open_chat, send, set_settings
from serverproc import ServerProc
from tcpproxy import CutProxy

CUTS = int(os.environ.get("NANOCHAT_LITE_RESUME_CUTS", "4"))
SEED = int(os.environ.get("NANOCHAT_LITE_RESUME_SEED", "15"))
MAX_TOKENS = 200
STREAMED_DIFFERS = "the streamed answer differs from the final message"

# Every text the answer shows while streaming, kept by the page for the test: each one
# must be a prefix of the stored answer (a repeat or a hole would break that).
RECORD_STATES = """() => {
    window.__states = [];
    window.__cutMid = false;
    new MutationObserver((records) => {
        for (const r of records) {
            const li = r.target;
            if (!li.classList || !li.classList.contains('msg-assistant')) continue;
            if (li.dataset.status === 'reconnecting') window.__cutMid = true;
            if (r.attributeName === 'data-raw' && li.dataset.status === 'streaming')
                window.__states.push(li.dataset.raw);
        }
    }).observe(document.getElementById('transcript'),
               {subtree: true, attributes: true, attributeFilter: ['data-raw', 'data-status']});
}"""


def stored(url: str, cid: str) -> dict:
    r = httpx.get(f"{url}/api/conversations/{cid}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def diff_counts(shown: str, truth: str) -> tuple[int, int]:
    """(characters shown that are not in the answer, characters of the answer not shown)."""
    extra = missing = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, shown, truth, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            extra += i2 - i1
        if op in ("replace", "insert"):
            missing += j2 - j1
    return extra, missing


@pytest.fixture(scope="module")
def served(tmp_path_factory, chat_model_path):
    with ServerProc(tmp_path_factory.mktemp("resume-server"), *SERVER_ARGS) as server:
        with CutProxy(server.port) as proxy:
            yield server, proxy


def test_cut_mid_answer_resumes_exactly(served, new_page):
    server, proxy = served
    rng = random.Random(SEED)
    w = new_page()
    page = w.page
    open_chat(page, proxy.url)
    set_settings(page, temperature=0, repeat_penalty=1, max_tokens=MAX_TOKENS)
    page.evaluate(RECORD_STATES)
    results = []
    for k in range(CUTS):
        page.click("#new-chat")
        page.evaluate("() => { window.__states = []; window.__cutMid = false; }")
        first = rng.randrange(1, 50)
        send(page, f"Write the numbers from {first} to {first + 500}, separated by commas.")
        if k % 2 == 0:
            # Cut when the page shows a random amount of the answer ...
            at = rng.randrange(1, 180)
            page.wait_for_function(
                "n => { const li = [...document.querySelectorAll('.msg-assistant')].pop();"
                " return li && (li.dataset.raw || '').length >= n || (li && li.dataset.status !== 'streaming'); }",
                arg=at, timeout=60_000)
            how = f"after {at} characters shown"
            proxy.cut()
        else:
            # ... or after a random number of bytes from the server: often mid-frame.
            page.wait_for_selector(".msg-assistant[data-status=streaming]")
            at = rng.randrange(1, 2500)
            proxy.cut_websocket_after(at)
            how = f"after {at} more bytes to the page"
            page.wait_for_function("() => document.querySelector('#conn').dataset.state !== 'connected'"
                                   " || [...document.querySelectorAll('.msg-assistant')].pop()"
                                   ".dataset.status !== 'streaming'", timeout=60_000)
        page.wait_for_selector("#conn[data-state=connected]", timeout=30_000)
        page.wait_for_function("() => { const li = [...document.querySelectorAll('.msg-assistant')].pop();"
                               " return li && !['streaming', 'reconnecting'].includes(li.dataset.status); }",
                               timeout=90_000)
        [answer] = answers(page)
        cid = current_conversation(page)
        truth = stored(server.url, cid)["messages"][-1]
        states = page.evaluate("window.__states")
        warnings = [m for m in w.console if STREAMED_DIFFERS in m]
        extra, missing = diff_counts(answer["raw"], truth["content"])
        for m in warnings:  # the streamed text the page replaced with the final message
            detail = json.loads(m[m.index("{"):])
            e, mi = diff_counts(detail["streamed"], detail["final"])
            extra, missing = extra + e, missing + mi
        # What the page showed while streaming, at every step: a prefix of the answer.
        bad_states = [s for s in states if not truth["content"].startswith(s)]
        w.console[:] = [m for m in w.console if STREAMED_DIFFERS not in m]
        proxy.disarm()
        results.append({"trial": k, "cut": how, "cut_happened": page.evaluate("window.__cutMid"),
                        "status": answer["status"], "stored_status": truth["status"], "chars": len(truth["content"]),
                        "exact": answer["raw"] == truth["content"] and extra == missing == 0 and not bad_states,
                        "extra": extra, "missing": missing, "states": len(states), "bad_states": len(bad_states)})
    exact = sum(r["exact"] for r in results)
    print(f"\nresume: {exact}/{CUTS} exact, {sum(r['extra'] for r in results)} duplicated, "
          f"{sum(r['missing'] for r in results)} missing characters, "
          f"{sum(r['cut_happened'] for r in results)}/{CUTS} cut mid-answer")
    for r in results:
        print("  ", r)
    assert exact == CUTS, results
    assert all(r["status"] == "complete" or r["status"] == "length" for r in results), results
    # The cut really happened mid-answer (the page showed "reconnecting") in most trials;
    # an answer may end before its cut point.
    assert sum(r["cut_happened"] for r in results) >= CUTS * 3 // 4, results


QUEUED = ["What is 2 + 2?", "Name a colour.", "Say hello in French."]


def user_messages(url: str, cid: str) -> list[str]:
    return [m["content"] for m in stored(url, cid)["messages"] if m["role"] == "user"]


def outbox(page: object) -> list[dict]:
    return page.evaluate("() => JSON.parse(localStorage.getItem('nanochat-lite.outbox') || '[]')")


def wait_finished(page: object, n: int, url: str, cid: str) -> None:
    """Wait for `n` finished answers on the page; on timeout, say what the page and the
    store hold."""
    try:
        page.wait_for_function("n => [...document.querySelectorAll('.msg-assistant')].filter("
                               "li => ['complete', 'length'].includes(li.dataset.status)).length >= n",
                               arg=n, timeout=120_000)
    except Exception as e:
        state = page.evaluate("""() => ({
            conn: document.querySelector('#conn').dataset.state,
            items: [...document.querySelectorAll('.msg')].map(li => [li.dataset.role, li.dataset.status,
                                                                      (li.dataset.raw || '').slice(0, 30)]),
            outbox: localStorage.getItem('nanochat-lite.outbox')})""")
        stored_msgs = [(m["role"], m["status"], m["content"][:30]) for m in stored(url, cid)["messages"]]
        raise AssertionError(f"{n} answers not finished: page {state}, store {stored_msgs}") from e


def test_outbox_survives_restart_and_reload(tmp_path, chat_model_path, new_page):
    first = ServerProc(tmp_path, *SERVER_ARGS).start()
    servers = [first]
    try:
        w = new_page()
        page = w.page
        context = page.context
        open_chat(page, first.url)
        set_settings(page, temperature=0, max_tokens=8)
        send(page, "Hi!")
        page.wait_for_selector(".msg-assistant[data-status=complete], .msg-assistant[data-status=length]")
        cid = current_conversation(page)

        first.stop()
        page.wait_for_selector("#conn[data-state=disconnected]", timeout=10_000)
        for text in QUEUED:
            send(page, text)
        page.wait_for_selector(f".msg-user[data-status=offline] >> nth={len(QUEUED) - 1}")
        assert [e["text"] for e in outbox(page)] == QUEUED
        assert all(e["conversation_id"] == cid for e in outbox(page))

        # The tab is reloaded while the server is down (an error page), then closed.
        with pytest.raises(Exception):
            page.reload(timeout=5_000)
        page.close()

        second = ServerProc(tmp_path, *SERVER_ARGS, port=first.port, db=first.db).start()
        servers.append(second)
        page = context.new_page()  # same browser profile: same localStorage
        page.on("pageerror", lambda e: w.errors.append(str(e)))
        open_chat(page, second.url)
        wait_finished(page, 1 + len(QUEUED), second.url, cid)
        assert user_messages(second.url, cid) == ["Hi!", *QUEUED]
        assert outbox(page) == []
        shown = [u for u in page.eval_on_selector_all(".msg-user", "els => els.map(e => e.dataset.raw)")]
        assert shown == ["Hi!", *QUEUED]

        # Again, with the reload racing the page's own sending: the tab is reloaded as
        # soon as the server is back, whatever it had sent by then. Client ids make
        # every message count once.
        second.stop()
        page.wait_for_selector("#conn[data-state=disconnected]", timeout=10_000)
        more = ["Count to three.", "Name a fruit."]
        for text in more:
            send(page, text)
        third = ServerProc(tmp_path, *SERVER_ARGS, port=first.port, db=first.db).start()
        servers.append(third)
        page.wait_for_function("() => JSON.parse(localStorage.getItem('nanochat-lite.outbox') || '[]').length < 2"
                               " || document.querySelector('#conn').dataset.state === 'connected'",
                               timeout=60_000)
        page.reload()
        wait_finished(page, 1 + len(QUEUED) + len(more), third.url, cid)
        assert user_messages(third.url, cid) == ["Hi!", *QUEUED, *more]
        assert outbox(page) == []
        assert [a["status"] for a in answers(page)] == ["complete" if a["status"] == "complete" else "length"
                                                        for a in answers(page)]
    finally:
        for s in servers:
            s.stop()
