"""Browser fixtures: Debian's Chromium driven by the `playwright` package, pages that
record what went wrong in them, and an in-process server around a scripted engine.

The browser is /usr/bin/chromium (`playwright install` cannot download here). Both are
required: without either the browser tests fail (tests/optout.py:
NANOCHAT_TEST_SKIP=browser skips them on purpose).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from optout import missing, skip_if_opted_out

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    skip_if_opted_out("browser")
    if not CHROMIUM.exists():
        missing("browser", f"{CHROMIUM} is missing", "apt-get install -y chromium (scripts/test.sh does)")
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None:  # missing() outside `except`: its message then stands alone
        missing("browser", "the `playwright` package is missing", "pip install -e '.[test]' (scripts/test.sh does)")
    with sync_playwright() as p:
        problem = ""
        try:
            b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        except PlaywrightError as e:
            problem = f"Chromium ({CHROMIUM}) did not start: {e}"
        if problem:
            missing("browser", problem, "check that `chromium --headless --no-sandbox about:blank` runs")
        yield b
        b.close()


@dataclass
class Watched:
    """A page plus what it reported: console messages, uncaught errors, dialogs."""

    page: object
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


def watch(page: object, *, accept_dialogs: bool = False) -> Watched:
    w = Watched(page)
    page.on("console", lambda m: w.console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: w.errors.append(str(e)))

    def on_dialog(d: object) -> None:
        w.dialogs.append(f"{d.type}: {d.message}")
        d.accept() if accept_dialogs else d.dismiss()

    page.on("dialog", on_dialog)
    return w


@pytest.fixture
def new_page(browser):
    """new_page(accept_dialogs=False, **context_options) -> Watched. Dialogs are recorded
    and dismissed (or accepted); an uncaught error in the page fails the test."""
    made: list[tuple[object, Watched]] = []

    def make(*, accept_dialogs: bool = False, **options: object) -> Watched:
        options.setdefault("viewport", DESKTOP)
        options.setdefault("color_scheme", "light")
        context = browser.new_context(**options)
        context.set_default_timeout(15_000)
        w = watch(context.new_page(), accept_dialogs=accept_dialogs)
        made.append((context, w))
        return w

    yield make
    errors = [e for _, w in made for e in w.errors]
    csp = [m for _, w in made for m in w.console if "Content Security Policy" in m]
    for context, _ in made:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
    assert not csp, f"the page broke its own Content-Security-Policy: {csp}"


@pytest.fixture(scope="session")
def echo_server(browser) -> Iterator[object]:
    """The real app in-process, its engine answering with the user's own message."""
    from browser_helpers import EchoEngine, InProcessServer

    with InProcessServer(EchoEngine(name="echo")) as s:
        yield s
