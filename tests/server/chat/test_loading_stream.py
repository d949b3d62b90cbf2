"""chat/loading.respond on its own: when a streamed request's response starts (at the
first `loading` frame, not before), what its body is, and what happens to what the
work opened when the client leaves while the model loads (handed to `dispose`, the
load not cancelled). The work here is a coroutine the test drives by hand."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response, StreamingResponse

from nanochat_lite.server.chat import loading
from nanochat_lite.server.wire.errors import RequestError

HANG_GUARD_S = 60.0

Waiting = Callable[[dict[str, Any]], Awaitable[None]]


def frame(seconds: int) -> dict[str, Any]:
    return {"type": "loading", "model": "m", "size_bytes": 1, "elapsed_ms": seconds * 1000}


def in_thread(coro: Callable[[], Awaitable[None]]) -> None:
    """asyncio.run in a thread of its own (a TestClient of another test may have left an
    event loop in this one, which asyncio.run refuses)."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coro())  # type: ignore[arg-type]
        except BaseException as e:  # the test's assertion, seen by the test's thread
            failures.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(HANG_GUARD_S)
    assert not t.is_alive() and failures == [], failures


def respond(work: Callable[[Waiting | None], Awaitable[str]], disposed: list[str]) -> Awaitable[Response]:
    async def dispose(opened: str) -> None:
        disposed.append(opened)

    def then(opened: str) -> Response:
        async def body() -> Any:
            yield f"data: {opened}\n\n".encode()

        return StreamingResponse(body(), media_type="text/event-stream")

    return loading.respond(None, work, then, stream=True,  # type: ignore[arg-type]
                           on_error=lambda e: Response(e.code, status_code=e.status),
                           sse_error=lambda e: f"data: error {e.code}\n\n".encode(), dispose=dispose)


def test_comment_format() -> None:
    assert loading.comment(frame(2)) == b": loading model m, 2 s\n\n"
    assert loading.comment({"model": "m", "elapsed_ms": 1499}) == b": loading model m, 1 s\n\n"


def test_no_frame_no_early_stream_and_errors_keep_their_status() -> None:
    async def run() -> None:
        async def quick(waiting: Waiting | None) -> str:
            return "answer"

        async def refused(waiting: Waiting | None) -> str:
            raise RequestError("no model named 'x'", code="model_not_found", status=404)

        r = await respond(quick, [])
        assert isinstance(r, StreamingResponse)
        assert [c async for c in r.body_iterator] == [b"data: answer\n\n"]
        r = await respond(refused, [])
        assert r.status_code == 404 and r.body == b"model_not_found"

    in_thread(run)


def test_frames_become_comments_then_the_answer_or_the_error_event() -> None:
    async def run() -> None:
        for fail in (False, True):
            async def work(waiting: Waiting | None) -> str:
                assert waiting is not None
                await waiting(frame(1))
                await waiting(frame(2))
                if fail:
                    raise RequestError("suffix is not supported", code="unsupported_parameter")
                return "answer"

            r = await respond(work, [])
            assert r.status_code == 200
            chunks = [c async for c in r.body_iterator]  # type: ignore[attr-defined]
            last = b"data: error unsupported_parameter\n\n" if fail else b"data: answer\n\n"
            assert chunks == [b": loading model m, 1 s\n\n", b": loading model m, 2 s\n\n", last], chunks

    in_thread(run)


def test_a_client_gone_while_loading_leaves_the_load_running_and_disposes_what_it_opened() -> None:
    async def run() -> None:
        loaded = asyncio.Event()
        finished: list[str] = []
        disposed: list[str] = []

        async def work(waiting: Waiting | None) -> str:
            assert waiting is not None
            await waiting(frame(1))
            await loaded.wait()  # the model loads until the test says
            finished.append("opened")
            return "opened"

        r = await respond(work, disposed)
        body = r.body_iterator  # type: ignore[attr-defined]
        assert await body.__anext__() == b": loading model m, 1 s\n\n"
        await body.aclose()  # the client went away
        loaded.set()
        deadline = asyncio.get_running_loop().time() + HANG_GUARD_S
        while disposed != ["opened"]:
            assert asyncio.get_running_loop().time() < deadline, (finished, disposed)
            await asyncio.sleep(0.01)
        assert finished == ["opened"]  # the work ran to its end: the load was not cancelled

    in_thread(run)
