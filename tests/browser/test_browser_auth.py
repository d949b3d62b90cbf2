"""The page on a server started with an API key (nanochat_lite/web/auth.js): it asks for
the key when the server first answers 401, asks again for a wrong one, then keeps it in
the browser and sends it on fetches, on the WebSocket (as a subprotocol) and for
exports; a reload does not ask again."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from browser_helpers import EchoEngine, InProcessServer, answers, send, wait_answers

from nanochat_lite.server.guards.security import SecurityConfig

KEY = "page-key-5b1f0e2c9d8a7b6c4e3f"


@pytest.fixture(scope="module")
def keyed_server(browser):
    with InProcessServer(EchoEngine(name="echo"), security=SecurityConfig(keys={"tester": KEY})) as s:
        yield s


def enter_key(page: object, key: str) -> None:
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", key)
    page.press("#key-input", "Enter")


def test_page_asks_for_the_key_and_keeps_it(keyed_server, new_page):
    page = new_page().page
    page.goto(keyed_server.url)
    enter_key(page, "not-the-key")
    page.wait_for_selector("#key-error:has-text('not accepted')")  # asked again, said why
    assert page.is_visible("#key-dialog")
    enter_key(page, KEY)
    page.wait_for_selector("#conn[data-state=connected]", timeout=20_000)  # the WebSocket got in
    assert not page.is_visible("#key-dialog")
    assert page.evaluate("() => localStorage.getItem('nanochat-lite.api-key')") == KEY

    send(page, "hello through the key")
    wait_answers(page, 1)
    answer = answers(page)[0]
    assert answer["status"] not in ("failed", "interrupted") and answer["raw"], answer
    page.wait_for_selector(".conv-item")  # the sidebar listed it (an authorized fetch)

    with page.expect_download() as download:
        page.click("#export-md")
    assert download.value.suggested_filename.endswith(".md")
    assert "hello through the key" in Path(download.value.path()).read_text(encoding="utf-8")

    page.reload()
    page.wait_for_selector("#conn[data-state=connected]", timeout=20_000)
    page.wait_for_selector(".conv-item")
    assert not page.is_visible("#key-dialog")

    stats = httpx.get(keyed_server.url + "/api/stats", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert stats["keys"]["tester"]["websockets"] >= 2 and stats["keys"]["tester"]["requests"] >= 4


def test_page_on_a_server_without_keys_never_asks(echo_server, new_page):
    page = new_page().page
    page.goto(echo_server.url)
    page.wait_for_selector("#conn[data-state=connected]", timeout=20_000)
    send(page, "no key needed")
    wait_answers(page, 1)
    assert not page.is_visible("#key-dialog")
