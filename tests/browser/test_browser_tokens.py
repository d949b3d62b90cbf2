"""The "Tokens" tab against one real `nanochat-lite serve`: the spans it draws carry
the same ids as `/api/tokenize`, special tokens are opt-in, hostile text stays text,
server errors become a message, and the view fits a 360 px screen."""

from __future__ import annotations

import httpx
import pytest

from browser_helpers import SERVER_ARGS, open_chat
from serverproc import ServerProc

SAMPLE = "Hello world! 12345 <|im_start|>"
IM_START_ID = 1
XSS = "<img src=x onerror=window.__xss=1>"

# What the page shows: ids from data-id and title, the text with the whitespace marks
# turned back into whitespace (ids and line breaks are not part of a token's text).
SHOWN = """() => {
    const spans = [...document.querySelectorAll('#tok-output .tok')];
    const unmark = s => s.replace(/·/g, ' ').replace(/↵/g, '\\n').replace(/→/g, '\\t');
    const text = span => unmark([...span.childNodes]
        .filter(n => !(n.classList && n.classList.contains('tok-id'))).map(n => n.textContent).join(''));
    return {
        ids: spans.map(s => Number(s.dataset.id)),
        titles: spans.map(s => s.title),
        texts: spans.map(text),
        colours: spans.map(s => [...s.classList].find(c => /^tok-c\\d$/.test(c))),
        count: document.getElementById('tok-count').dataset.value,
        countText: document.getElementById('tok-count').textContent,
        chars: document.getElementById('tok-chars').dataset.value,
        error: document.getElementById('tok-error').textContent,
    };
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, chat_model_path):
    with ServerProc(tmp_path_factory.mktemp("browser-tokens"), *SERVER_ARGS) as s:
        yield s


def tokenize(server: ServerProc, text: str, *, special: bool = False) -> list[dict]:
    r = httpx.post(server.url + "/api/tokenize", json={"text": text, "with_pieces": True, "special": special},
                   timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"])
    return body["tokens"]


def open_tokens(page: object, url: str) -> None:
    open_chat(page, url)
    page.click("#tab-tokens")
    page.wait_for_selector("#panel-tokens:not([hidden])")


def wait_shown(page: object, expected_ids: list[int]) -> dict:
    """Wait until the page draws exactly these ids (the debounce and the fetch settle)."""
    page.wait_for_function(
        """ids => [...document.querySelectorAll('#tok-output .tok')].map(s => Number(s.dataset.id)).join()
                 === ids.join() && document.getElementById('tok-count').dataset.value === String(ids.length)""",
        arg=expected_ids, timeout=10_000)
    return page.evaluate(SHOWN)


def console_errors(w: object) -> list[str]:
    return [m for m in w.console if m.startswith("error")]


def test_tokens_match_the_server_and_special_tokens_are_opt_in(server, new_page):
    w = new_page()
    page = w.page
    open_chat(page, server.url)
    # Keyboard: the tab list is reached by arrow keys from the Chat tab.
    page.focus("#tab-chat")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-tokens", "aria-selected") == "true"
    assert page.evaluate("document.activeElement.id") == "tab-tokens"
    page.wait_for_selector("#panel-tokens:not([hidden])")

    plain = tokenize(server, SAMPLE)
    page.locator("#tok-input").press_sequentially(SAMPLE)  # typed: every keystroke restarts the debounce
    shown = wait_shown(page, [t["id"] for t in plain])
    assert shown["ids"] == [t["id"] for t in plain]
    assert shown["titles"] == [f"id {t['id']}" for t in plain]
    assert shown["texts"] == [t["text"] for t in plain]
    assert "".join(shown["texts"]) == SAMPLE
    assert shown["countText"] == str(len(plain)) and shown["chars"] == str(len(SAMPLE))
    assert all(a != b for a, b in zip(shown["colours"], shown["colours"][1:])), shown["colours"]
    # Spaces are visible marks inside the spans, e.g. " world" is drawn "·world".
    assert page.locator("#tok-output .tok", has_text="·world").count() == 1
    # As plain text "<|im_start|>" is several ordinary tokens.
    assert IM_START_ID not in shown["ids"]
    start, covering, at = SAMPLE.index("<|im_start|>"), [], 0
    for text in shown["texts"]:
        at += len(text)
        if at > start:
            covering.append(text)
    assert len(covering) > 2, covering

    page.check("#tok-special")
    special = tokenize(server, SAMPLE, special=True)
    shown = wait_shown(page, [t["id"] for t in special])
    assert shown["ids"][-1] == IM_START_ID and shown["ids"].count(IM_START_ID) == 1
    assert shown["texts"][-1] == "<|im_start|>"
    assert len(shown["ids"]) < len(plain)

    # The ids toggle shows every id beside its token.
    assert page.locator("#tok-output .tok-id").first.is_hidden()
    page.check("#tok-ids")
    assert page.locator("#tok-output .tok-id").first.is_visible()
    assert page.locator("#tok-output .tok-id").all_text_contents() == [str(t["id"]) for t in special]

    # A newline is a mark plus a real line break, inside the token's span.
    page.fill("#tok-input", "a\nb")
    lines = tokenize(server, "a\nb", special=True)
    shown = wait_shown(page, [t["id"] for t in lines])
    assert "".join(shown["texts"]) == "a\nb"
    assert page.locator("#tok-output .tok br").count() == 1
    assert console_errors(w) == [], w.console


def test_hostile_text_stays_text(server, new_page):
    w = new_page()
    page = w.page
    open_tokens(page, server.url)
    page.fill("#tok-input", XSS)
    shown = wait_shown(page, [t["id"] for t in tokenize(server, XSS)])
    assert "".join(shown["texts"]) == XSS
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    assert page.evaluate("window.__xss") is None
    assert console_errors(w) == [], w.console


def test_server_error_is_a_message_and_360px_fits(server, new_page):
    w = new_page(viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    page = w.page
    open_tokens(page, server.url)
    long_line = "supercalifragilistic" * 30 + " 😀 中文 " + "x" * 200
    page.fill("#tok-input", long_line + "\n" + long_line)
    shown = wait_shown(page, [t["id"] for t in tokenize(server, long_line + "\n" + long_line)])
    # The emoji is split into byte tokens, shown as \xNN escapes; their titles name it.
    partial = [t for t in shown["titles"] if "part of" in t]
    assert len(partial) == 4 and all(t.endswith("part of “😀”") for t in partial), partial
    layout = page.evaluate("""() => ({
        page: document.documentElement.scrollWidth - window.innerWidth,
        output: (e => e.scrollWidth - e.clientWidth)(document.getElementById('tok-output')),
        input: document.getElementById('tok-input').getBoundingClientRect().right - window.innerWidth,
    })""")
    assert layout["page"] <= 0 and layout["output"] <= 0 and layout["input"] <= 0, layout

    # Over the server's 1 MiB body limit: 413, shown as the server's message.
    page.fill("#tok-input", "a" * (1 << 20))
    page.wait_for_function("() => document.getElementById('tok-error').textContent !== ''", timeout=10_000)
    shown = page.evaluate(SHOWN)
    assert "limit" in shown["error"] and shown["ids"] == [] and shown["countText"] == "–", shown
    assert [m for m in console_errors(w) if "status of 413" not in m] == [], w.console

    page.fill("#tok-input", "ok")  # and it recovers
    shown = wait_shown(page, [t["id"] for t in tokenize(server, "ok")])
    assert shown["error"] == ""
