"""Take the chat page's screenshots for docs/screenshots/ after a real exchange.

    .venv/bin/python scripts/screenshots.py                # starts its own server
    .venv/bin/python scripts/screenshots.py --url http://127.0.0.1:8080

Without --url it starts `nanochat-lite serve` (the default model, one thread, a
throw-away database) on a free loopback port and stops it afterwards. It needs
Debian's Chromium at /usr/bin/chromium and the `playwright` package.

Writes chat-desktop.png (1280x800), chat-phone.png (375x812), dashboard-desktop.png
(1280x800), all in the light scheme, chat-desktop-dark.png, and tokens-desktop.png
(1280x800, the Tokens tab on a multi-script sample). `--only tokens` takes just that
one (no answers are generated, so it takes seconds).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}
TOKENS_SAMPLE = (
    "Tokenizers split text into pieces: common words are one token, rare ones several.\n"
    "def greet(name: str) -> str:\n"
    "    return f\"Hello, {name}!\"  # code keeps its indentation\n"
    "Emoji: 🚀🎉👍🏽 and CJK: 你好，世界！こんにちは 안녕하세요\n"
    "Digits: 3.14159, 2025-06-01, 1,234,567 and 0xDEADBEEF"
)
QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for learning Python, as a numbered list, then a one-line code example.",
]


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "nanochat_lite", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--db", str(tmp / "screenshots.sqlite3"), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not become healthy within 120 s")


def ask(page: Page, text: str, answered: int) -> None:
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")
    page.wait_for_function("""n => [...document.querySelectorAll('.msg-assistant')]
                               .filter(li => li.dataset.status !== 'streaming').length >= n""",
                           arg=answered, timeout=180_000)


def shoot_tokens(browser: Browser, url: str, out: Path) -> None:
    context = browser.new_context(viewport=DESKTOP, color_scheme="light")
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#conn[data-state=connected]")
    page.click("#tab-tokens")
    page.fill("#tok-input", TOKENS_SAMPLE)
    page.check("#tok-ids")
    page.wait_for_function("""() => Number(document.getElementById('tok-count').dataset.value) > 0
                               && !document.getElementById('tok-output').hasAttribute('aria-busy')""")
    page.locator("#tok-input").blur()
    time.sleep(0.3)
    page.screenshot(path=str(out / "tokens-desktop.png"))
    context.close()


def shoot(url: str, out: Path, only: str = "all") -> None:
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        if only in ("all", "tokens"):
            shoot_tokens(browser, url, out)
        if only == "tokens":
            browser.close()
            return
        context = browser.new_context(viewport=DESKTOP, color_scheme="light")
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#conn[data-state=connected]")
        page.click("#settings-toggle")
        page.fill("#set-temperature", "0")
        page.fill("#set-max_tokens", "160")
        page.click("#settings-close")
        ask(page, QUESTIONS[0], 1)
        page.click("#new-chat")
        for k, question in enumerate(QUESTIONS[1:], start=1):
            ask(page, question, k)
        page.locator("#composer-input").blur()
        time.sleep(0.5)
        page.screenshot(path=str(out / "chat-desktop.png"))

        page.click("#tab-dashboard")
        time.sleep(5)  # a few polls, so the charts have a line
        page.screenshot(path=str(out / "dashboard-desktop.png"))
        page.click("#tab-chat")

        phone = browser.new_context(viewport=PHONE, color_scheme="light", has_touch=True, is_mobile=True)
        mobile = phone.new_page()
        mobile.goto(page.url)  # the URL names the conversation (#c=...)
        mobile.wait_for_selector(".msg-assistant")
        mobile.wait_for_selector("#conn[data-state=connected]")
        time.sleep(0.5)
        mobile.screenshot(path=str(out / "chat-phone.png"))

        dark = browser.new_context(viewport=DESKTOP, color_scheme="dark")
        night = dark.new_page()
        night.goto(page.url)
        night.wait_for_selector(".msg-assistant")
        night.wait_for_selector("#conn[data-state=connected]")
        time.sleep(0.5)
        night.screenshot(path=str(out / "chat-desktop-dark.png"))
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="output folder")
    parser.add_argument("--only", choices=["all", "chat", "tokens"], default="all",
                        help="which screenshots: chat = the chat, dashboard and phone ones")
    args = parser.parse_args()
    if args.url:
        shoot(args.url.rstrip("/") + "/", args.out, args.only)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp))
        try:
            shoot(url + "/", args.out, args.only)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"screenshots written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
