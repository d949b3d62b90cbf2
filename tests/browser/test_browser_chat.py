"""The chat page against one real `nanochat-lite serve` with the real model:
streaming, stop, the dashboard's numbers, and the conversation sidebar."""

from __future__ import annotations

import time

import httpx
import pytest

from browser_helpers import (SERVER_ARGS, answers, current_conversation, open_chat, send, set_settings,
                             wait_answers)
from serverproc import ServerProc

LONG = "Write the numbers from 1 to 500, separated by commas."


@pytest.fixture(scope="module")
def server(tmp_path_factory, chat_model_path):
    with ServerProc(tmp_path_factory.mktemp("browser-server"), *SERVER_ARGS) as s:
        yield s


def conversation(server: ServerProc, cid: str) -> dict:
    r = httpx.get(f"{server.url}/api/conversations/{cid}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_answer_streams_token_by_token_with_counts(server, new_page):
    w = new_page()
    page = w.page
    open_chat(page, server.url)
    set_settings(page, max_tokens=32, temperature=0)
    # Record every distinct text the answer shows while it is still streaming.
    page.evaluate("""() => {
        window.__states = [];
        new MutationObserver(() => {
            const li = [...document.querySelectorAll('.msg-assistant')].pop();
            if (!li || li.dataset.status !== 'streaming') return;
            const text = li.querySelector('.msg-body').textContent;
            if (text && text !== window.__states[window.__states.length - 1]) window.__states.push(text);
        }).observe(document.getElementById('transcript'), {subtree: true, childList: true, characterData: true,
                                                              attributes: true});
    }""")
    send(page, "Tell me three facts about the Moon.")
    # The question shows at once, as plain text, before any answer.
    page.wait_for_selector(".msg-user >> text=Tell me three facts about the Moon.")
    wait_answers(page, 1)
    states = page.evaluate("window.__states")
    [answer] = answers(page)
    assert answer["status"] in ("complete", "length"), answer
    assert len(states) >= 3, f"the answer did not grow in steps: {states}"
    assert len(states[0]) < len(states[-1]) <= len(answer["text"]) + 1
    # The numbers under the answer are the server's own, as stored with the answer.
    stored = conversation(server, current_conversation(page))["messages"][-1]
    assert stored["role"] == "assistant" and stored["content"] == answer["raw"]
    f = answer["fields"]
    assert f["completion_tokens"] == stored["completion_tokens"] > 3
    assert f["prompt_tokens"] == stored["prompt_tokens"] > 5
    assert f["ttft_ms"] > 0 and f["tokens_per_second"] > 0
    assert "prompt tokens" in page.inner_text(".msg-assistant .msg-meta")


def test_stop_really_stops_the_generation(server, new_page):
    w = new_page()
    page = w.page
    open_chat(page, server.url)
    set_settings(page, temperature=0, repeat_penalty=1, max_tokens=1500)
    send(page, LONG)
    page.wait_for_function("""() => {
        const li = document.querySelector('.msg-assistant');
        return li && li.dataset.status === 'streaming' && li.dataset.raw.length > 40;
    }""", timeout=30_000)
    before = server.stats()
    assert before["requests"]["generating"] == 1
    page.click("#stop")
    # Waiting is not the check (the cores are shared): the answer was cancelled, and it
    # generated far fewer than its 1,500 max_tokens.
    server.wait_idle(within=120)
    deadline = time.monotonic() + 120
    while (after := server.stats())["requests"]["cancelled"] == before["requests"]["cancelled"]:
        assert time.monotonic() < deadline, after["requests"]
        time.sleep(0.02)
    assert after["requests"]["cancelled"] == before["requests"]["cancelled"] + 1
    assert after["tokens"]["completion"] - before["tokens"]["completion"] < 1500 // 2, after["tokens"]
    page.wait_for_selector(".msg-assistant[data-status=stopped]", timeout=5_000)
    text = answers(page)[0]["raw"]
    time.sleep(0.5)
    assert answers(page)[0]["raw"] == text, "the answer kept growing after stop"
    assert page.is_hidden("#stop")
    # Stored as stopped, generated with the settings typed in the panel.
    stored = conversation(server, current_conversation(page))["messages"][-1]
    assert stored["status"] == "stopped" and stored["content"] == text
    assert stored["params"]["temperature"] == 0 and stored["params"]["max_tokens"] == 1500
    # The settings are remembered across a reload.
    page.reload()
    assert page.input_value("#set-temperature") == "0"
    assert page.input_value("#set-max_tokens") == "1500"


def shown_stats(page) -> dict:
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('[data-stat]')]
                                       .map(e => [e.dataset.stat, e.textContent]))""")


def number(text: str) -> float:
    return float(text.replace(",", "").split()[0])


def test_dashboard_shows_the_servers_numbers(server, new_page):
    w = new_page()
    page = w.page
    open_chat(page, server.url)
    set_settings(page, max_tokens=8)
    for k, question in enumerate(["Say hi.", "Say bye."], start=1):
        send(page, question)
        wait_answers(page, k)
    server.wait_idle(within=60)  # a wait before reading the numbers, not a speed bound
    page.click("#tab-dashboard")
    assert page.is_visible("#panel-dashboard") and page.is_hidden("#panel-chat")
    stats = server.stats()
    keys = ["requests.total", "tokens.completion", "tokens.prompt", "latency_ms.count", "requests.cancelled"]
    want = {k: float(stats[k.split(".")[0]][k.split(".")[1]]) for k in keys}
    assert want["requests.total"] >= 2 and want["tokens.completion"] > 0
    # The page polls every 1.5 s; within a few polls it must show exactly these numbers.
    deadline = time.monotonic() + 6
    while True:
        shown = shown_stats(page)
        got = {k: number(shown[k]) for k in keys if shown.get(k, "–") != "–"}
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == want, f"dashboard shows {got}, /api/stats says {want}"
    assert shown["model"] == stats["model"]
    assert abs(number(shown["memory.rss_bytes"]) - stats["memory"]["rss_bytes"] / 2**20) < 64
    assert number(shown["decode_tokens_per_s.mean"]) == pytest.approx(stats["decode_tokens_per_s"]["mean"], abs=0.06)
    # Charts are drawn: every canvas has painted pixels.
    painted = page.evaluate("""() => [...document.querySelectorAll('#dash-charts canvas')].map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })""")
    assert len(painted) == 5 and all(n > 100 for n in painted), painted


def sidebar_titles(page) -> list[str]:
    return page.eval_on_selector_all("#conversation-list .conv-name", "els => els.map(e => e.textContent)")


def item(page, title: str):
    return page.locator("#conversation-list .conv-item", has=page.locator(".conv-name", has_text=title))


def test_sidebar_switch_rename_delete(server, new_page):
    w = new_page(accept_dialogs=True)
    page = w.page
    open_chat(page, server.url)
    set_settings(page, max_tokens=12)
    send(page, "Name one fruit, please.")
    wait_answers(page, 1)
    first = current_conversation(page)
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0 and page.url.endswith("/")
    send(page, "Name one colour, please.")
    wait_answers(page, 1)
    second = current_conversation(page)
    assert first != second
    page.wait_for_function("() => document.querySelectorAll('#conversation-list .conv-item').length >= 2")

    # A reload comes back to the open conversation.
    page.reload()
    page.wait_for_selector(".msg-user")
    assert current_conversation(page) == second
    assert page.inner_text(".msg-user .msg-body") == "Name one colour, please."

    # Switching shows the other conversation's stored messages, and continues it.
    item(page, "Name one fruit").locator(".conv-open").click()
    page.wait_for_function("() => document.querySelector('.msg-user .msg-body')?.textContent"
                           " === 'Name one fruit, please.'")
    assert current_conversation(page) == first
    stored = conversation(server, first)["messages"]
    shown = page.evaluate("() => [...document.querySelectorAll('.msg')].map(li => [li.dataset.role, li.dataset.raw])")
    assert shown == [[m["role"], m["content"]] for m in stored]
    send(page, "And another one?")
    wait_answers(page, 2)
    assert len(conversation(server, first)["messages"]) == 4

    # Rename inline, reaching the button with the keyboard from the row.
    item(page, "Name one fruit").locator(".conv-open").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.action") == "rename"
    page.keyboard.press("Enter")
    page.fill("#conversation-list .rename-input", "Fruit talk")
    page.press("#conversation-list .rename-input", "Enter")
    page.wait_for_function("() => document.getElementById('conv-title').textContent === 'Fruit talk'")
    assert conversation(server, first)["conversation"]["title"] == "Fruit talk"

    # The export links download this conversation.
    for selector, fmt in (("#export-md", "markdown"), ("#export-json", "json")):
        href = page.get_attribute(selector, "href")
        assert href == f"/api/conversations/{first}/export?format={fmt}"
        r = httpx.get(server.url + href, timeout=10)
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
        assert "Fruit talk" in r.text and "And another one?" in r.text
    row_export = item(page, "Fruit talk").locator("a[download]").get_attribute("href")
    assert row_export == f"/api/conversations/{first}/export?format=markdown"

    # Search finds it, with the match marked.
    page.fill("#search-input", "fruit")
    page.wait_for_selector("#conversation-list .search-hit mark")
    assert first in page.eval_on_selector_all("#conversation-list .search-hit", "els => els.map(e => e.dataset.id)")
    page.fill("#search-input", "")
    page.wait_for_selector("#conversation-list .conv-item:not(.search-hit)")

    # Delete after a confirm dialog, which we accept.
    assert w.dialogs == []
    item(page, "Name one colour").hover()  # a row's actions show on hover or focus
    item(page, "Name one colour").locator("[data-action=delete]").click()
    page.wait_for_function("() => ![...document.querySelectorAll('.conv-name')]"
                           ".some(e => e.textContent.startsWith('Name one colour'))")
    assert w.dialogs == ['confirm: Delete the conversation "Name one colour, please."? This cannot be undone.']
    assert httpx.get(f"{server.url}/api/conversations/{second}").status_code == 404
    page.reload()
    page.wait_for_selector("#conversation-list .conv-item")
    titles = sidebar_titles(page)
    assert "Fruit talk" in titles and not any(t.startswith("Name one colour") for t in titles)
    assert current_conversation(page) == first  # the open one was not the deleted one
