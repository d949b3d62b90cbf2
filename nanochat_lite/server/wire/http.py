"""HTTP helpers shared by the routes: bounded body reading, JSON and SSE responses,
and client-disconnect watching. Error bodies are in errors.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from .errors import RequestError
from .limits import MAX_BODY_BYTES

_encoder = msgspec.json.Encoder()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(data), status_code=status, media_type="application/json", headers=headers)


async def read_body(request: Request) -> bytes:
    """The request body, refusing (413) more than MAX_BODY_BYTES without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > MAX_BODY_BYTES:
                raise RequestError(f"the body has {int(declared):,} bytes; the limit is {MAX_BODY_BYTES:,}",
                                   code="body_too_large", status=413)
        except ValueError:
            raise RequestError("invalid Content-Length header", code="invalid_request") from None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise RequestError(f"the body is larger than the limit of {MAX_BODY_BYTES:,} bytes",
                                   code="body_too_large", status=413)
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError("the client closed the connection", code="client_closed", status=400) from None
    return b"".join(chunks)


def sse(data: Any) -> bytes:
    return b"data: " + _encoder.encode(data) + b"\n\n"


def sse_frame(frame: dict[str, Any]) -> bytes:
    """One answer frame as an SSE event: `id: <seq>` (what EventSource sends back as
    Last-Event-ID) before its data; a progress frame as a comment line, which keeps
    proxies from closing the connection and that EventSource ignores."""
    if frame.get("type") == "progress":
        return b": progress\n\n"
    seq = frame.get("seq")
    data = sse(frame)
    return b"id: %d\n" % seq + data if isinstance(seq, int) else data


async def _wait_disconnect(request: Request) -> None:
    # After the body is read, the next ASGI message can only be http.disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: "asyncio.Future[Any] | Any") -> Any:
    """Await `work`; if the client disconnects first, cancel it and raise ClientDisconnect."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        try:
            await task
        except BaseException:
            pass
        raise ClientDisconnect()
    return task.result()


def event_stream(request: Request, body: AsyncIterator[bytes], on_error: Callable[[RequestError], bytes]) -> Response:
    """An SSE response of `body`'s chunks; a RequestError from `body` becomes its last chunk.

    No queue of our own between `body` and the socket: Starlette's StreamingResponse
    listens for the client's disconnect beside the stream (uvicorn speaks ASGI 2.3) and
    cancels it, which closes `body` and so cancels or releases its generation."""

    async def run() -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                yield chunk
        except RequestError as e:
            yield on_error(e)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(run(), media_type="text/event-stream", headers=headers)
