"""The page checks the server's limits (GET /api/limits), not numbers of its own: its
fields take their bounds from the server, and a server with other limits gets a page
with other bounds."""

from __future__ import annotations

import json

import httpx

from browser_helpers import open_chat, send


def fields(page: object) -> dict:
    return page.evaluate("""() => ({
        composer: document.querySelector('#composer-input').maxLength,
        search: document.querySelector('#search-input').maxLength,
        system: document.querySelector('#set-system').maxLength,
        top_k: [document.querySelector('#set-top_k').min, document.querySelector('#set-top_k').max],
        max_tokens: [document.querySelector('#set-max_tokens').min, document.querySelector('#set-max_tokens').max],
        hint: document.querySelector('[data-range=top_k]').textContent,
    })""")


def wait_limits(page: object) -> None:
    page.wait_for_function("() => document.querySelector('#search-input').maxLength > 0")


def test_fields_take_the_servers_limits(echo_server, new_page):
    lim = httpx.get(f"{echo_server.url}/api/limits", timeout=5).json()["data"]
    page = new_page().page
    open_chat(page, echo_server.url)
    wait_limits(page)
    f = fields(page)
    assert f["search"] == lim["search_chars"] == 500  # the box once stopped at 200
    assert f["composer"] == lim["message_chars"]
    assert f["system"] == lim["system_chars"]
    assert f["top_k"] == [str(lim["sampling"]["top_k"]["min"]), str(lim["sampling"]["top_k"]["max"])]
    assert f["hint"] == f"{lim['sampling']['top_k']['min']}–{lim['sampling']['top_k']['max']}, 0 = off"
    # A 500-character search is typed in whole and answered, not cut at 200.
    page.fill("#search-input", "q" * 500)
    assert len(page.input_value("#search-input")) == 500
    page.wait_for_selector("#sidebar-status >> text=No matches.")


def test_other_limits_other_page(echo_server, new_page):
    """A server whose limits differ (served here by intercepting /api/limits): the page
    follows them, so none of its numbers is hand-copied."""
    real = httpx.get(f"{echo_server.url}/api/limits", timeout=5).json()["data"]
    other = {**real, "message_chars": 40, "search_chars": 17, "system_chars": 33,
             "sampling": {**real["sampling"], "top_k": {"min": 0, "max": 7, "integer": True}}}
    w = new_page()
    page = w.page
    page.route("**/api/limits", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps({"success": True, "data": other})))
    open_chat(page, echo_server.url)
    wait_limits(page)
    f = fields(page)
    assert (f["composer"], f["search"], f["system"], f["top_k"]) == (40, 17, 33, ["0", "7"])
    assert f["hint"] == "0–7, 0 = off"
    # The settings panel refuses what the server would.
    page.click("#settings-toggle")
    page.fill("#set-top_k", "8")
    assert "top_k must be between 0 and 7" in page.inner_text("#settings-error")
    page.fill("#set-top_k", "7")
    assert page.inner_text("#settings-error") == ""
    page.click("#settings-close")
    # A message over the limit is refused by the page itself (typed in past maxlength
    # by a script, as a paste into an old browser could), with the server's number.
    page.evaluate("() => { const i = document.querySelector('#composer-input'); i.maxLength = 100000;"
                  " i.value = 'x'.repeat(41); }")
    page.press("#composer-input", "Enter")
    assert "limited to 40 characters" in page.inner_text("#composer-note")
    assert page.locator(".msg-user").count() == 0
    send(page, "y" * 40)
    page.wait_for_selector(".msg-assistant[data-status=complete]")
