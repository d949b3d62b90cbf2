"""The project's own REST API: `POST /api/chat` (JSON or SSE), health and stats.

Response shape: `{"success": true, "data": {...}}`; errors:
`{"success": false, "error": {"code", "message"}}` with a 4xx status.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..engine import Delta, Done
from .http import api_error, event_stream, json_response, read_body, sse, until_disconnect
from .limits import RequestError
from .runtime import Runtime, Turn
from .schemas import ChatRequest, decode


def usage(done: Done) -> dict:
    return {"promptTokens": done.prompt_tokens, "completionTokens": done.completion_tokens,
            "totalTokens": done.total_tokens}


def timings(done: Done) -> dict:
    return {"ttft_ms": round(done.ttft_ms, 2), "total_ms": round(done.total_ms, 2),
            "tokens_per_second": round(done.decode_tokens_per_s, 2)}


async def turn_frames(rt: Runtime, turn: Turn) -> AsyncIterator[dict]:
    """One chat turn as the frames SSE and the WebSocket share: start, token…, done.

    "done" comes once the stream has ended, so the answer is stored when it arrives.
    """
    yield {"type": "start", "conversation_id": turn.conversation_id, "model": rt.model_name}
    final = None
    async for ev in rt.stream(turn.ticket, turn.params, turn.conversation_id):
        if isinstance(ev, Delta):
            yield {"type": "token", "text": ev.text}
        else:
            final = ev
    if final is not None:
        yield {"type": "done", "conversation_id": turn.conversation_id, "model": rt.model_name,
               "message": final.text, "finish_reason": final.finish_reason, "usage": usage(final),
               "timings": timings(final)}


async def chat(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    started = time.perf_counter()
    try:
        req = decode(await read_body(request), ChatRequest)
        turn = await rt.begin_turn(req)
    except RequestError as e:
        return api_error(e)

    if req.stream:
        async def body() -> AsyncIterator[bytes]:
            async for frame in turn_frames(rt, turn):
                if frame["type"] == "done":
                    frame["processingTime"] = round((time.perf_counter() - started) * 1000, 2)
                yield sse(frame)

        def on_error(e: RequestError) -> bytes:
            return sse({"type": "error", "code": e.code, "message": e.message})

        return event_stream(request, body(), on_error)

    try:
        done = await until_disconnect(request, rt.complete(turn.ticket, turn.params, turn.conversation_id))
    except RequestError as e:
        return api_error(e)
    except ClientDisconnect:
        return Response(status_code=499)
    return json_response({"success": True, "data": {
        "message": done.text,
        "tokens": done.completion_tokens,
        "processingTime": round((time.perf_counter() - started) * 1000, 2),
        "model": rt.model_name,
        "conversation_id": turn.conversation_id,
        "finish_reason": done.finish_reason,
        "usage": usage(done),
        "timings": timings(done),
    }})


async def health(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    if rt.state == "ready":
        return json_response({"status": "ok", "model": rt.model_name,
                              "uptime": round(time.time() - rt.stats.started, 3),
                              "startup_ms": rt.stats.startup_ms, "generating": rt.generating, "queued": rt.queued,
                              "slots": rt.scheduler.slots if rt.scheduler else None})
    if rt.state == "error":
        return json_response({"status": "error", "error": rt.error}, 503)
    return json_response({"status": "loading"}, 503)


async def stats(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    body = rt.stats.snapshot(queued=rt.queued, generating=rt.generating, model=rt.model_name)
    body["engine"] = rt.engine_info()
    return json_response(body)
