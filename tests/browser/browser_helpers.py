"""What the browser tests do to the chat page, as a person would: open it, type in
the settings panel, send with Enter; and an in-process server for scripted engines."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fakes import SLOW, FakeEngine, attach_fake

from nanochat_lite.generation import Delta, Done, SamplingParams

# One inference thread: Chromium needs the other core of a 2-core machine. With two
# (model + browser + test on 2 cores) llama.cpp's threads wait on each other and a
# 30-token answer took 17 s instead of 1.5 s here.
SERVER_ARGS = ("--threads", "1")

# -- page helpers ---------------------------------------------------------------
def open_chat(page: object, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#conn[data-state=connected]", timeout=20_000)


def set_settings(page: object, **values: object) -> None:
    """Fill the settings panel (open it, type, close it), as a person would."""
    page.click("#settings-toggle")
    for name, value in values.items():
        page.fill(f"#set-{name}", "" if value is None else str(value))
    page.click("#settings-close")


def send(page: object, text: str) -> None:
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")


def wait_answers(page: object, count: int, timeout: float = 60_000) -> None:
    """Wait until `count` answers have finished (any status but streaming)."""
    page.wait_for_function(
        """n => [...document.querySelectorAll('.msg-assistant')]
                 .filter(li => li.dataset.status !== 'streaming').length >= n""",
        arg=count, timeout=timeout)


def answers(page: object) -> list[dict]:
    return page.evaluate("""() => [...document.querySelectorAll('.msg-assistant')].map(li => ({
        status: li.dataset.status, raw: li.dataset.raw, text: li.querySelector('.msg-body').textContent,
        fields: Object.fromEntries([...li.querySelectorAll('[data-field]')]
                                   .map(e => [e.dataset.field, Number(e.textContent)]))}))""")


def current_conversation(page: object) -> str:
    cid = page.evaluate("() => decodeURIComponent((location.hash.match(/^#c=(.+)$/) || [])[1] || '')")
    assert cid, f"no conversation in the URL: {page.url}"
    return cid


# -- an in-process server around a scripted engine ------------------------------
class InProcessServer:
    """The real app (create_app) with an in-memory store and the given engine, served by
    uvicorn on a loopback port in a background thread. The socket is bound here, on
    port 0: no gap in which another process could take a port picked in advance."""

    def __init__(self, engine: object, *, security: object | None = None) -> None:
        import socket

        import uvicorn

        from nanochat_lite.history import ConversationStore
        from nanochat_lite.server import Runtime, create_app

        self.runtime = Runtime(store=ConversationStore(":memory:"), model_name=engine.name)
        attach_fake(self.runtime, engine)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(self.runtime, security=security)  # a SecurityConfig, or None: the defaults
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="browser-test-server", daemon=True)

    def __enter__(self) -> "InProcessServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
        self.runtime.close()


class EchoEngine(FakeEngine):
    """Answers with the user's message, then (for a one-line message) the same text
    inside list, quote and table markup, in 5-character deltas. A message containing
    fakes.SLOW streams one delta every SLOW_DELAY_S and honours a stop."""

    SLOW_DELAY_S = 0.02

    def run(self, prep, params: SamplingParams, *, emit: Callable[[Delta | Done], None],
            cancel: threading.Event | None = None, slot: int = -1) -> Done:
        payload = prep.messages[-1]["content"]
        text = payload
        if "\n" not in payload:
            text += f"\n\n- {payload}\n\n> {payload}\n\n| col |\n|---|\n| {payload} |\n"
        slow = SLOW in payload
        if slow:
            text = payload + "".join(f" w{i}" for i in range(params.max_tokens))
        pieces = [text[i:i + 5] for i in range(0, len(text), 5)]
        sent: list[str] = []
        finish = "stop"
        for piece in pieces:
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            if slow:
                time.sleep(self.SLOW_DELAY_S)
            sent.append(piece)
            emit(Delta(piece))
        done = Done(text="".join(sent), finish_reason=finish, prompt_tokens=len(payload.split()) + 1,
                    completion_tokens=len(sent), dropped_messages=0, ttft_ms=1.0, total_ms=2.0,
                    decode_tokens_per_s=1000.0, seed=0)
        emit(done)
        return done
