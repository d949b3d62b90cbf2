"""HTTP helpers shared by the routes: bounded body reading, JSON and SSE responses,
error bodies in the two styles we speak (the project's `{success, error}` and
OpenAI's `{error: {message, type, param, code}}`), and client-disconnect watching."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from .limits import MAX_BODY_BYTES, RequestError

_encoder = msgspec.json.Encoder()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(data), status_code=status, media_type="application/json", headers=headers)


def _retry_headers(e: RequestError) -> dict[str, str] | None:
    return {"Retry-After": str(e.retry_after)} if e.retry_after is not None else None


def api_error(e: RequestError) -> Response:
    return json_response({"success": False, "error": {"code": e.code, "message": e.message}}, e.status,
                         headers=_retry_headers(e))


def openai_error(e: RequestError) -> Response:
    kind = "invalid_request_error" if e.status < 500 else "server_error"
    status = e.status
    if e.status == 404:
        kind = "not_found_error"
    elif e.code == "server_busy":
        # OpenAI clients retry a 429 (with backoff, honouring Retry-After); a 503 too,
        # but 429 is what they document for "too many requests".
        kind, status = "rate_limit_error", 429
    return json_response({"error": {"message": e.message, "type": kind, "param": e.param, "code": e.code}},
                         status, headers=_retry_headers(e))


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
    """An SSE response whose source is closed (so its generation is cancelled) as soon as
    the client disconnects."""

    async def run() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for chunk in body:
                    await queue.put(chunk)
            except RequestError as e:
                await queue.put(on_error(e))
            finally:
                await queue.put(None)

        producer = asyncio.ensure_future(pump())
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    return  # client gone
                chunk = getter.result()
                if chunk is None:
                    return
                yield chunk
        finally:
            watcher.cancel()
            if not producer.done():
                producer.cancel()
                try:
                    await producer
                except BaseException:
                    pass

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(run(), media_type="text/event-stream", headers=headers)
