"""Hostile text in the user's messages and in the model's answers must stay text.

The app runs in-process with an engine that answers with the user's own message
(streamed in small pieces) and then the same payload inside list, quote and table
markup, so every payload is shown three ways: as user text, as a streamed answer and,
after a reload, as stored history.

A payload "executes" if it opens a dialog (alert), sets the `window.__xss` canary, or
leaves an element or attribute that could run script. The page runs twice: once with
the CSP bypassed, so an injection would really run and trip the canary; once with the
CSP on, where any attempt shows up as a CSP violation report.
"""

from __future__ import annotations

import httpx
import pytest

from browser_helpers import current_conversation, open_chat, send, wait_answers

PAYLOADS = [
    '<img src=x onerror="window.__xss=1;alert(1)">',
    "<script>window.__xss=2;alert(2)</script>",
    "[click me](javascript:window.__xss=3)",
    '<svg onload="window.__xss=4"><circle r=9></svg>',
    "```html\n<script>window.__xss=5</script>\n<img src=x onerror=window.__xss=5>\n```",
    '<a href="javascript:window.__xss=6">a link</a>',
    "[x](JAVASCRIPT:window.__xss=7)",
    "[x](java\tscript:window.__xss=8)",
    "![x](javascript:window.__xss=9)",
    '<iframe srcdoc="<script>parent.__xss=10</script>"></iframe>',
    '[x](https://example.com/" onmouseover="window.__xss=11" x=")',
    '[x](https://example.com/"onclick="window.__xss=11b)',
    "[x](data:text/html,<script>window.__xss=12</script>)",
    "<data:text/html;base64,PHNjcmlwdD53aW5kb3cuX194c3M9MTI8L3NjcmlwdD4=>",
    '<details open ontoggle="window.__xss=13">x</details>',
    "`<img src=x onerror=window.__xss=14>` and **<img src=x onerror=window.__xss=15>**",
    "[<img src=x onerror=window.__xss=16>](https://example.com/)",
    '<https://example.com/"onmouseover="window.__xss=17>',
    "[x](  javascript:window.__xss=18) [y](&#106;avascript:window.__xss=18) [z](vbscript:msgbox(18))",
    '<math><mi xlink:href="javascript:window.__xss=19">m</mi></math><style>body{display:none}</style>',
    "| a | b |\n|---|---|\n| <img src=x onerror=window.__xss=20> | [t](javascript:window.__xss=20) |",
    "> <object data=\"javascript:window.__xss=21\"></object>\n> <embed src=javascript:window.__xss=21>",
]

FORBIDDEN = "script, iframe, svg, img, object, embed, style, math, details, form, input, video, audio, link, meta, base"


CANARY = """() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation',
        e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + (e.sample || '')));
}"""

INSPECT = """forbidden => {
    const t = document.getElementById('transcript');
    const withOn = [...document.querySelectorAll('*')]
        .filter(e => e.getAttributeNames().some(n => n.toLowerCase().startsWith('on')))
        .map(e => e.outerHTML.slice(0, 120));
    const badLinks = [...t.querySelectorAll('a')]
        .filter(a => !['http:', 'https:', 'mailto:'].includes(new URL(a.href, location.href).protocol)
                     || a.rel !== 'noopener noreferrer' || a.target !== '_blank'
                     || !/^(https?:|mailto:)/.test(a.getAttribute('href') || ''))
        .map(a => a.outerHTML.slice(0, 120));
    return {
        xss: window.__xss === undefined ? null : String(window.__xss),
        csp: window.__csp,
        forbidden: [...t.querySelectorAll(forbidden)].map(e => e.outerHTML.slice(0, 120)),
        withOn, badLinks,
        users: [...t.querySelectorAll('.msg-user .msg-body')].map(e => e.textContent),
        answers: [...t.querySelectorAll('.msg-assistant')].map(e => [e.dataset.status, e.dataset.raw,
                                                                  e.querySelector('.msg-body').textContent]),
        links: t.querySelectorAll('a').length,
    };
}"""


def check(w, expect_answers: int) -> dict:
    seen = w.page.evaluate(INSPECT, FORBIDDEN)
    assert w.dialogs == [], f"a payload opened a dialog: {w.dialogs}"
    assert seen["xss"] is None, f"a payload ran: window.__xss = {seen['xss']}"
    assert seen["forbidden"] == [], seen["forbidden"]
    assert seen["withOn"] == [], seen["withOn"]
    assert seen["badLinks"] == [], seen["badLinks"]
    assert seen["csp"] == [], f"CSP violations (something tried to run): {seen['csp']}"
    csp_console = [m for m in w.console if "Content Security Policy" in m or "Refused to" in m]
    assert csp_console == [], csp_console
    # Every payload is still there, as the characters it was.
    assert seen["users"] == PAYLOADS
    assert len(seen["answers"]) == expect_answers
    for payload, (status, raw, _shown) in zip(PAYLOADS, seen["answers"]):
        assert status == "complete" and raw.startswith(payload)
    assert "<script>window.__xss=2;alert(2)</script>" in seen["answers"][1][2]
    assert "<img src=x onerror=window.__xss=5>" in seen["answers"][4][2]  # the fence's body, as code
    assert seen["links"] >= 4  # the https links (payloads 11b, 16, 17) are real, safe links
    return seen


@pytest.mark.parametrize("bypass_csp", [True, False], ids=["csp-bypassed", "csp-on"])
def test_payloads_stay_text(echo_server, new_page, bypass_csp):
    w = new_page(bypass_csp=bypass_csp)
    page = w.page
    page.add_init_script(f"({CANARY})()")  # before the page's own scripts run
    open_chat(page, echo_server.url)
    for k, payload in enumerate(PAYLOADS, start=1):
        send(page, payload)
        wait_answers(page, k, timeout=10_000)
        ran = page.evaluate("window.__xss === undefined ? null : String(window.__xss)")
        assert ran is None and not w.dialogs, f"payload {k} {payload!r} ran: {ran} {w.dialogs}"
    # Hover and click everything a payload might have hooked into.
    for a in page.query_selector_all("#transcript a"):
        a.hover()
    page.click("#transcript .msg-assistant .msg-body >> nth=0")
    check(w, len(PAYLOADS))

    # The same text again, now coming from the store after a reload.
    cid = current_conversation(page)
    stored = httpx.get(f"{echo_server.url}/api/conversations/{cid}").json()["data"]["messages"]
    assert [m["content"] for m in stored if m["role"] == "user"] == PAYLOADS
    page.reload()
    page.wait_for_function("n => document.querySelectorAll('.msg-assistant').length === n", arg=len(PAYLOADS))
    for a in page.query_selector_all("#transcript a"):
        a.hover()
    check(w, len(PAYLOADS))
