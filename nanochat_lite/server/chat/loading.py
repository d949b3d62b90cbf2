"""A streamed HTTP request whose model loads: answer now, with an SSE comment a second.

A request for a model that is not loaded waits for its load (Runtime.using), which
may take seconds. The WebSocket tells its client with `loading` frames; a streamed
`/api/chat` or `/v1/*` request gets the same news from the same source (`using`'s
`waiting` callback, called every LOADING_FRAME_S while the load runs) as SSE comment
lines, `: loading model NAME, N s`, which EventSource and OpenAI's clients skip and
which keep proxies from closing a silent connection.

`respond` runs a door's opening work (load, prompt, queue) in a task of its own:
  - when it ends before any `loading` frame (the model was loaded, or loaded within a
    second), the door answers exactly as it would without this: an error is its HTTP
    status, an answer its usual stream;
  - at the first `loading` frame the 200 event stream starts: a comment per frame, then
    the door's own stream; an error after that is the stream's error event (the status
    is sent by then).
A client that leaves while its model loads does not cancel the load (the next request
wants the model too); what the work opened is handed to `dispose` when it ends (the
generations it queued are cancelled, their reservations charged).

Non-streamed requests just wait (the door calls the work itself, without a `waiting`).

Not here: the loading (chat/models.py), the waiting callback's source (runtime.py).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ...engines.scheduler import Ticket
from ...generation import SamplingParams
from ..wire.errors import RequestError
from ..wire.http import event_stream
from .choices import merged
from .runtime import Runtime

T = TypeVar("T")
Waiting = Callable[[dict[str, Any]], Awaitable[None]]

# Tasks disposing of what an abandoned request opened: held until they end (the event
# loop keeps only weak references to tasks).
_disposing: set[asyncio.Future[Any]] = set()


def comment(frame: dict[str, Any]) -> bytes:
    """A `loading` frame as an SSE comment line.

    {"model": "gemma3-270m", "elapsed_ms": 2040} -> b": loading model gemma3-270m, 2 s\\n\\n"
    """
    seconds = round(int(frame.get("elapsed_ms") or 0) / 1000)
    return f": loading model {frame.get('model')}, {seconds} s\n\n".encode()


async def respond(request: Request, work: Callable[[Waiting | None], Awaitable[T]],
                  then: Callable[[T], Response | Awaitable[Response]], *, stream: bool,
                  on_error: Callable[[RequestError], Response], sse_error: Callable[[RequestError], bytes],
                  dispose: Callable[[T], Awaitable[None]]) -> Response:
    """The door's response: `then(work(...))`, or `on_error` of the RequestError `work`
    raised; for a streamed request whose model loads for a second or more, an event
    stream that starts at once (see the module's docstring)."""
    if not stream:
        try:
            opened = await work(None)
        except RequestError as e:
            return on_error(e)
        return await _resolve(then(opened))
    frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def waiting(frame: dict[str, Any]) -> None:
        frames.put_nowait(frame)

    task = asyncio.ensure_future(work(waiting))
    first = await _next_frame(task, frames)
    if first is None:  # no loading to speak of: as the door answers without this
        try:
            opened = task.result()
        except RequestError as e:
            return on_error(e)
        return await _resolve(then(opened))
    return event_stream(request, _loading_then(first, task, frames, then, sse_error, dispose), sse_error)


async def _next_frame(task: asyncio.Future[Any], frames: asyncio.Queue[dict[str, Any]]) -> dict[str, Any] | None:
    """The next `loading` frame, or None once the work has ended."""
    if not frames.empty():
        return frames.get_nowait()
    getter = asyncio.ensure_future(frames.get())
    try:
        await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    return getter.result() if getter.done() and not getter.cancelled() else None


async def _loading_then(first: dict[str, Any], task: asyncio.Future[T], frames: asyncio.Queue[dict[str, Any]],
                        then: Callable[[T], Response | Awaitable[Response]],
                        sse_error: Callable[[RequestError], bytes],
                        dispose: Callable[[T], Awaitable[None]]) -> AsyncIterator[bytes]:
    taken = False
    try:
        frame: dict[str, Any] | None = first
        while frame is not None:
            yield comment(frame)
            frame = await _next_frame(task, frames)
        taken = True
        try:
            opened = task.result()
        except RequestError as e:
            yield sse_error(e)
            return
        response = await _resolve(then(opened))
        if isinstance(response, StreamingResponse):
            async for chunk in response.body_iterator:
                yield chunk if isinstance(chunk, bytes) else str(chunk).encode()
        else:  # not expected of a streamed door: its body, as it is
            yield bytes(response.body)
    finally:
        if not taken:  # the client left while the model loaded: the load goes on
            task.add_done_callback(lambda t: _dispose_later(t, dispose))


def _dispose_later(task: asyncio.Future[T], dispose: Callable[[T], Awaitable[None]]) -> None:
    if task.cancelled() or task.exception() is not None:
        return  # nothing was opened
    job = asyncio.ensure_future(dispose(task.result()))
    _disposing.add(job)
    job.add_done_callback(_disposing.discard)


async def _resolve(response: Response | Awaitable[Response]) -> Response:
    return await response if inspect.isawaitable(response) else response


async def drop_generations(rt: Runtime, tickets: Sequence[Ticket], params: Sequence[SamplingParams]) -> None:
    """A `/v1` request's queued choices, nobody left to read them: cancel each (a queued
    one leaves the queue at once) and read them to their ends, which charges their
    reservations as a finished stream does."""
    for t in tickets:
        t.cancel()
    try:
        async for _ in merged(rt, tickets, params):
            pass
    except RequestError:  # a generation that failed: charged all the same (turns.stream)
        pass


async def leave_answer(rt: Runtime, answer: Any) -> None:
    """An `/api/chat` answer whose client left before its first frame: followed and left
    at once, so its resume window starts as for any client gone mid-answer (after it,
    nobody back: cancelled, stored interrupted)."""
    if answer is None:  # a client_id sent again: nothing new was started
        return
    follower = rt.answers.follow(answer)
    try:
        await follower.__anext__()
    except StopAsyncIteration:
        pass
    finally:
        aclose = getattr(follower, "aclose", None)
        if aclose is not None:
            await aclose()
