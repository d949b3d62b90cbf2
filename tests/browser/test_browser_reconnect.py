"""The page survives the server dying: the answer being written waits to be resumed,
a message typed during the outage waits, and once a new server listens on the same
port (same database) the page reconnects by itself; the new server does not know the
old answer, so the page shows what the store kept of it (marked interrupted), and the
waiting message is answered."""

from __future__ import annotations

import httpx

from browser_helpers import (SERVER_ARGS, answers, current_conversation, open_chat, send, set_settings,
                             wait_answers)
from serverproc import ServerProc

LONG = "Write the numbers from 1 to 500, separated by commas."
QUEUED = "What is the capital of France?"


def test_outage_queues_and_reconnects(tmp_path, chat_model_path, new_page):
    first = ServerProc(tmp_path, *SERVER_ARGS).start()
    second = None
    try:
        page = new_page().page
        open_chat(page, first.url)
        set_settings(page, temperature=0, repeat_penalty=1, max_tokens=1500)
        send(page, LONG)
        page.wait_for_function("() => (document.querySelector('.msg-assistant')?.dataset.raw || '').length > 20",
                               timeout=60_000)
        cid = current_conversation(page)
        first.kill()

        page.wait_for_selector("#conn[data-state=disconnected]", timeout=5_000)
        page.wait_for_selector(".msg-assistant[data-status=reconnecting]", timeout=5_000)
        assert "resumes" in page.inner_text(".msg-assistant .badge")
        cut = answers(page)[0]["raw"]
        assert len(cut) > 20

        # Typed during the outage: shown at once, marked as waiting for the connection.
        set_settings(page, max_tokens=24)
        send(page, QUEUED)
        page.wait_for_selector(".msg-user[data-status=offline]")
        assert page.locator(".msg-assistant").count() == 1

        second = ServerProc(tmp_path, *SERVER_ARGS, port=first.port, db=first.db).start()
        # Nobody clicks "Retry now": the page's own backoff brings it back (<= ~17 s here).
        page.wait_for_selector("#conn[data-state=connected]", timeout=40_000)
        wait_answers(page, 2, timeout=90_000)
        [cut_answer, answer] = answers(page)
        # The store saves a streaming answer at least every second: what the page shows
        # now is what was saved, a part of what it had shown before the kill.
        assert cut_answer["status"] == "interrupted" and cut.startswith(cut_answer["raw"]), (cut_answer, cut)
        assert answer["status"] in ("complete", "length") and answer["raw"].strip()
        assert page.get_attribute(".msg-user >> nth=1", "data-status") == "sent"

        # The queued message went to the same conversation, once.
        data = httpx.get(f"{second.url}/api/conversations/{cid}", timeout=10).json()["data"]
        users = [m["content"] for m in data["messages"] if m["role"] == "user"]
        assert users == [LONG, QUEUED]
        assert data["messages"][-1]["role"] == "assistant" and data["messages"][-1]["content"] == answer["raw"]
        assert current_conversation(page) == cid
    finally:
        first.stop()
        if second:
            second.stop()
