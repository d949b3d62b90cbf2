"""The page with API keys that own their conversations (issue #20 item 6): it shows which
key it uses; a plain key lists its own conversations only, with no owner filter; an
admin key gets the filter, lists another key's conversations with that key's name, and
opens them read-only (the composer says whose it is and sends nothing)."""

from __future__ import annotations

import httpx
import pytest
from browser_helpers import EchoEngine, InProcessServer

from nanochat_lite.server.guards.security import SecurityConfig

ALICE, OPS = "alice-page-7c1e9b3d5f", "ops-page-2a8d4f6b0c"


@pytest.fixture(scope="module")
def owners_server(browser):
    security = SecurityConfig(keys={"alice": ALICE, "ops": OPS}, admins=frozenset({"ops"}))
    with InProcessServer(EchoEngine(name="echo"), security=security) as s:
        r = httpx.post(s.url + "/api/chat", json={"message": "alice's private note"},
                       headers={"Authorization": f"Bearer {ALICE}"}, timeout=30)
        assert r.status_code == 200, r.text
        s.alice_cid = r.json()["data"]["conversation_id"]  # type: ignore[attr-defined]
        yield s


def sign_in(page: object, url: str, key: str) -> None:
    page.goto(url)
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", key)
    page.press("#key-input", "Enter")
    page.wait_for_selector("#conn[data-state=connected]", timeout=20_000)


def test_a_plain_key_sees_its_name_and_its_own_conversations(owners_server, new_page):
    page = new_page().page
    sign_in(page, owners_server.url, ALICE)
    page.wait_for_selector("#who:not([hidden])")
    assert page.text_content("#who").strip() == "🔑 alice"
    page.wait_for_selector(".conv-item")
    assert page.locator(".conv-item").count() == 1 and "alice's private note" in page.text_content(".conv-item")
    assert page.is_hidden("#owner-box")
    assert page.locator(".conv-owner").count() == 0  # her own rows carry no owner's name


def test_an_admin_key_filters_by_owner_and_reads_read_only(owners_server, new_page):
    page = new_page().page
    sign_in(page, owners_server.url, OPS)
    page.wait_for_selector("#who:not([hidden])")
    assert page.text_content("#who").strip() == "🔑 ops · admin"
    page.wait_for_selector("#owner-box:not([hidden])")
    page.wait_for_selector("#sidebar-status:has-text('No conversations yet.')")  # its own: none
    page.wait_for_selector("#owner-filter option[value=alice]", state="attached")  # the key names, from /api/stats
    page.select_option("#owner-filter", "alice")
    page.wait_for_selector(".conv-item .conv-owner")
    assert page.text_content(".conv-item .conv-owner") == "alice"
    assert page.locator(".conv-item [data-action=delete]").count() == 0  # reading only
    page.click(".conv-item .conv-open")
    page.wait_for_selector("#transcript :text(\"alice's private note\")")
    assert page.is_disabled("#composer-input") and page.is_disabled("#send")
    assert page.get_attribute("#composer-input", "placeholder") == "alice's conversation: read only"
    assert f"owner=alice" in page.evaluate("() => location.hash")
    assert "owner=alice" in page.get_attribute("#export-md", "href")
    # Everyone's: the same row; a new chat makes the composer its own again.
    page.select_option("#owner-filter", "*")
    page.wait_for_selector(".conv-item .conv-owner")
    page.click("#new-chat")
    assert not page.is_disabled("#composer-input")
    # The server kept alice's conversation as it was.
    r = httpx.get(f"{owners_server.url}/api/conversations/{owners_server.alice_cid}",
                  headers={"Authorization": f"Bearer {ALICE}"}, timeout=10)
    assert len(r.json()["data"]["messages"]) == 2
