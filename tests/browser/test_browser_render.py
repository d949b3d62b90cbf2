"""The page's own behaviour against the real app with a scripted engine (fast, no
model): Markdown rendering and copy buttons, the composer's keys, the message queue,
"Ask again", and the reconnect schedule."""

from __future__ import annotations

import httpx

from browser_helpers import answers, current_conversation, open_chat, send, set_settings, wait_answers
from fakes import SLOW


def test_markdown_renders_structure_with_safe_links(echo_server, new_page):
    w = new_page(permissions=["clipboard-read", "clipboard-write"])
    page = w.page
    open_chat(page, echo_server.url)
    text = ("# Title\n\nSome **bold**, *italic*, ~~gone~~ and `x < y` code.\n\n"
            "- one\n- two\n  - nested\n\n1. first\n2. second\n\n"
            "| Name | Qty |\n|:-----|----:|\n| apple | 3 |\n| pear | 10 |\n\n"
            "```python\nprint('<b>hi</b>')\n```\n\n"
            "See [the docs](https://example.com/a_(b)?q=1 \"Docs\"), <mailto:me@example.com> "
            "and https://example.org/x. Not a link: [f](ftp://example.com/) or [r](/relative).")
    send(page, text)
    wait_answers(page, 1)
    body = page.locator(".msg-assistant .msg-body")
    assert body.locator("h3").inner_text() == "Title"
    assert body.locator("strong").first.inner_text() == "bold"
    assert body.locator("em").first.inner_text() == "italic"
    assert body.locator("del").first.inner_text() == "gone"
    assert body.locator("code.md-inline-code").first.inner_text() == "x < y"
    assert body.locator("ul > li").count() == 3 and body.locator("ul ul > li").inner_text() == "nested"
    assert body.locator("ol > li").all_inner_texts() == ["first", "second"]
    assert body.locator("table th").all_inner_texts() == ["Name", "Qty"]
    assert body.locator("table td").all_inner_texts() == ["apple", "3", "pear", "10"]
    assert body.locator("table td.align-right").count() == 2
    assert body.locator("pre code").inner_text() == "print('<b>hi</b>')"
    links = page.eval_on_selector_all(".msg-assistant .msg-body a",
                                      "as => as.map(a => [a.textContent, a.getAttribute('href'), a.rel, a.target])")
    assert links == [
        ["the docs", "https://example.com/a_(b)?q=1", "noopener noreferrer", "_blank"],
        ["mailto:me@example.com", "mailto:me@example.com", "noopener noreferrer", "_blank"],
        ["https://example.org/x", "https://example.org/x", "noopener noreferrer", "_blank"],
    ]
    assert "[f](ftp://example.com/)" in body.inner_text() and "[r](/relative)" in body.inner_text()
    # The code block's copy button copies the code, the message's copies the Markdown.
    page.click(".msg-assistant .md-code-copy")
    assert page.evaluate("navigator.clipboard.readText()") == "print('<b>hi</b>')"
    page.click(".msg-assistant .msg-head [data-action=copy]")
    assert page.evaluate("navigator.clipboard.readText()").startswith("# Title\n")


def test_reconnect_backoff_schedule(echo_server, new_page):
    page = new_page().page
    open_chat(page, echo_server.url)
    delays = page.evaluate("""async () => {
        const { backoffDelay } = await import('/static/ws.js');
        const mid = [...Array(8).keys()].map(k => backoffDelay(k, () => 0.5));
        const capped = [...Array(40).keys()].map(k => backoffDelay(k));
        return { mid, capped, low: backoffDelay(0, () => 0), high: backoffDelay(4, () => 0.999999),
                 top: backoffDelay(20, () => 0.999999), spread: [0, 0.25, 0.75].map(r => backoffDelay(4, () => r)) };
    }""")
    assert delays["mid"] == [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    assert delays["low"] == 800 and delays["high"] == 19200 and delays["top"] == 30000
    assert delays["spread"] == [12800, 14400, 17600]  # 16 s with ±20 % jitter
    assert max(delays["capped"]) <= 30000


def test_composer_keys_queue_and_ask_again(echo_server, new_page):
    page = new_page().page
    open_chat(page, echo_server.url)
    set_settings(page, max_tokens=60)
    # Shift+Enter is a new line; Enter sends.
    page.click("#composer-input")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.locator(".msg").count() == 0
    page.keyboard.press("Enter")
    wait_answers(page, 1)
    assert page.inner_text(".msg-user .msg-body") == "line one\nline two"
    assert page.input_value("#composer-input") == ""

    # A message sent while an answer streams waits its turn, then goes out.
    send(page, f"{SLOW} slow one")
    page.wait_for_selector(".msg-assistant[data-status=streaming]")
    send(page, "quick two")
    assert page.get_attribute(".msg-user >> nth=2", "data-status") == "waiting"
    assert page.is_visible("#stop")
    wait_answers(page, 3, timeout=15_000)
    got = answers(page)
    assert [a["status"] for a in got] == ["complete", "complete", "complete"]
    assert got[1]["raw"].startswith(f"{SLOW} slow one w0 w1") and got[2]["raw"].startswith("quick two")

    # "Ask again" sends the last question again; both answers stay.
    assert page.locator("[data-action=ask-again]:visible").count() == 1
    page.click("[data-action=ask-again]:visible")
    wait_answers(page, 4)
    cid = current_conversation(page)
    stored = httpx.get(f"{echo_server.url}/api/conversations/{cid}").json()["data"]["messages"]
    assert [m["content"] for m in stored if m["role"] == "user"] == [
        "line one\nline two", f"{SLOW} slow one", "quick two", "quick two"]
    assert len([m for m in stored if m["role"] == "assistant"]) == 4

    # Escape in the message box stops a streaming answer.
    send(page, f"{SLOW} stop me")
    page.wait_for_function("() => [...document.querySelectorAll('.msg-assistant')].pop()"
                           ".dataset.raw.includes('w3')")
    page.press("#composer-input", "Escape")
    page.wait_for_selector(".msg-assistant >> nth=4 >> xpath=self::*[@data-status='stopped']")
    assert page.is_hidden("#stop")


def test_safe_url_and_nasty_markdown(echo_server, new_page):
    page = new_page().page
    open_chat(page, echo_server.url)
    got = page.evaluate("""async () => {
        const { safeUrl, renderMarkdown } = await import('/static/markdown.js');
        const urls = ['https://example.com/a?b=1#c', 'HTTP://EXAMPLE.COM', 'mailto:a@b.c', 'javascript:alert(1)',
                      'JavaScript:alert(1)', ' javascript:alert(1)', 'java\\tscript:alert(1)', 'java\\nscript:x',
                      'https://exa mple.com', 'https://example.com/\\u0000', 'data:text/html,x', 'vbscript:x',
                      '//example.com', '/relative', 'ftp://example.com', 'https:alert(1)', 'https://'];
        const nasty = {stars: '*a '.repeat(20000), unders: '_a '.repeat(20000), brackets: '['.repeat(40000),
                       links: '[a]('.repeat(10000), ticks: '`a``'.repeat(10000), tildes: '~~a '.repeat(15000),
                       quotes: '>'.repeat(5000) + ' deep', lists: Array.from({length: 300}, (_, k) =>
                           ' '.repeat(k % 13) + '- item').join('\\n'),
                       emoji: '👩‍👩‍👧 **bold 🎉** `c😀de`', nul: 'a\\u0000b **c\\u0000**'};
        const times = {};
        const texts = {};
        for (const [name, text] of Object.entries(nasty)) {
            const t0 = performance.now();
            const div = document.createElement('div');
            div.append(renderMarkdown(text));
            times[name] = performance.now() - t0;
            texts[name] = div.textContent.slice(0, 40);
        }
        return { urls: urls.map(u => safeUrl(u)), times, texts };
    }""")
    assert got["urls"] == ["https://example.com/a?b=1#c", "http://example.com/", "mailto:a@b.c"] + [None] * 13 + [None]
    slow = {name: ms for name, ms in got["times"].items() if ms > 500}
    assert not slow, f"rendering took too long (ms): {slow}"
    assert got["texts"]["emoji"] == "👩‍👩‍👧 bold 🎉 c😀de"
    assert got["texts"]["nul"] == "a\x00b c\x00"


def test_sidebar_pages_with_load_more(echo_server, new_page):
    def total() -> int:
        return httpx.get(f"{echo_server.url}/api/conversations?limit=1").json()["data"]["total"]

    for k in range(max(0, 56 - total())):
        r = httpx.post(f"{echo_server.url}/api/chat", json={"message": f"conversation {k}"})
        assert r.status_code == 200, r.text
    n = total()
    page = new_page().page
    open_chat(page, echo_server.url)
    page.wait_for_function("() => document.querySelectorAll('#conversation-list .conv-item').length === 50")
    page.click("#load-more")
    page.wait_for_function("n => document.querySelectorAll('#conversation-list .conv-item').length === n", arg=n)
    assert page.is_hidden("#load-more")
    ids = page.eval_on_selector_all("#conversation-list .conv-item", "els => els.map(e => e.dataset.id)")
    assert len(set(ids)) == n  # no page fetched twice


def luminance(css_color: str) -> float:
    r, g, b = (int(v) / 255 for v in css_color[css_color.index("(") + 1:css_color.index(")")].split(",")[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_phone_width_and_colour_schemes(echo_server, new_page):
    for scheme, dark in (("light", False), ("dark", True)):
        page = new_page(viewport={"width": 360, "height": 740}, color_scheme=scheme, is_mobile=True,
                        has_touch=True).page
        open_chat(page, echo_server.url)
        send(page, "A long line: " + "word " * 80 + "https://example.com/" + "x" * 200)
        wait_answers(page, 1)
        layout = page.evaluate("""() => ({
            overflow: document.documentElement.scrollWidth - window.innerWidth,
            header: document.querySelector('.topbar').getBoundingClientRect().height,
            bg: getComputedStyle(document.body).backgroundColor,
            fg: getComputedStyle(document.body).color,
            sidebarShown: document.getElementById('sidebar').getBoundingClientRect().right > 0
                          && getComputedStyle(document.getElementById('sidebar')).visibility !== 'hidden',
        })""")
        assert layout["overflow"] <= 0, f"the page scrolls sideways at 360 px ({scheme}): {layout}"
        assert layout["header"] < 60, layout  # one row
        assert (luminance(layout["bg"]) < 0.2) == dark and (luminance(layout["fg"]) > 0.6) == dark, layout
        assert not layout["sidebarShown"]
        # The drawer opens from the menu button and closes with Escape.
        page.click("#sidebar-toggle")
        page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left >= 0")
        assert page.locator("#conversation-list .conv-item").count() >= 1
        page.keyboard.press("Escape")
        page.wait_for_function("() => getComputedStyle(document.getElementById('sidebar')).visibility === 'hidden'")
