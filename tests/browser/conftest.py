"""Browser fixtures: Debian's Chromium driven by the `playwright` package, pages that
record what went wrong in them, and an in-process server around a scripted engine.

The browser is /usr/bin/chromium (`playwright install` cannot download here). Without
it the browser tests are skipped, unless CI is set: there a missing browser fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
DESKTOP = {"width": 1280, "height": 800}


def _require_browser() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so the browser tests must run)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    _require_browser()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("the `playwright` package is missing: pip install playwright")
        pytest.skip("the `playwright` package is missing: pip install playwright")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
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
