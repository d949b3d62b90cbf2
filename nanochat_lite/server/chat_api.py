"""The project's own REST API: `POST /api/chat` (JSON or SSE), health and stats.

Response shape: `{"success": true, "data": {...}}`; errors:
`{"success": false, "error": {"code", "message"}}` with a 4xx status.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from . import frames, turns
from .errors import RequestError, api_error, error_frame
from .http import event_stream, json_response, read_body, sse, until_disconnect
from .runtime import Runtime
from .schemas import ChatRequest, decode


async def chat(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        req = decode(await read_body(request), ChatRequest)
        turn = await turns.begin_turn(rt, req)
    except RequestError as e:
        return api_error(e)

    if req.stream:
        async def body() -> AsyncIterator[bytes]:
            async for frame in turns.turn_frames(rt, turn):
                yield sse(frame)

        return event_stream(request, body(), lambda e: sse(error_frame(e)))

    try:
        done = await until_disconnect(request, turns.complete(rt, turn.ticket, turn.params, turn.conversation_id))
    except RequestError as e:
        return api_error(e)
    except ClientDisconnect:
        return Response(status_code=499)
    processing_ms = (time.perf_counter() - turn.started) * 1000
    return json_response({"success": True, "data": frames.chat_data(
        done, conversation_id=turn.conversation_id, model=rt.model_name, processing_ms=processing_ms)})


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
