"""The project's own REST API: `POST /api/chat` (JSON or SSE), `GET
/api/answers/{answer_id}/events` (resume an SSE answer), health and stats.

Response shape: `{"success": true, "data": {...}}`; errors:
`{"success": false, "error": {"code", "message"}}` with a 4xx status (503 while
loading, busy, shutting down or when the store is unavailable).

SSE answers: each event has an `id:` line (its seq); `start` names the answer's
`events_url`. A client that lost the stream GETs that URL with `Last-Event-ID`
(EventSource does it by itself) or `?after=N` and gets every event after it, once.
The protocol is in docs/protocol.md.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..chat import loading, turns
from ..chat.answers import Answer, check_answer_id
from ..chat.runtime import Runtime
from ..guards.quotas import key_table
from ..guards.security import KeyUsage, identity
from ..wire import frames
from ..wire.errors import RequestError, api_error, error_frame
from ..wire.http import event_stream, json_response, read_body, sse, sse_frame, until_disconnect
from ..wire.schemas import ChatRequest, decode

MAX_AFTER = 1 << 31  # the largest seq a resume may name


async def chat(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        req = decode(await read_body(request), ChatRequest)
        if req.stream:  # a model that loads for a second or more: the stream starts, with comments
            return await loading.respond(
                request, lambda waiting: turns.open_chat(rt, req, who=identity(request), waiting=waiting),
                lambda o: answer_stream(request, o.answer, o.replayed, after=-1), stream=True, on_error=api_error,
                sse_error=lambda e: sse(error_frame(e)), dispose=lambda o: loading.leave_answer(rt, o.answer))
        opened = await turns.open_chat(rt, req, who=identity(request), resumable=False)
    except RequestError as e:
        return api_error(e)

    if opened.answer is None:  # a client_id sent again: the stored answer
        done = opened.replayed[-1]
        return json_response({"success": True, "data": {
            "message": done["message"], "tokens": done["usage"]["completionTokens"], "model": done["model"],
            "conversation_id": done["conversation_id"], "finish_reason": done["finish_reason"],
            "usage": done["usage"], "answer_id": done["answer_id"], "status": done["status"], "replayed": True,
            **{k: done[k] for k in ("citations", "documents_mode") if k in done}}})
    a = opened.answer
    try:
        await until_disconnect(request, _to_the_end(rt, a))
    except ClientDisconnect:
        return Response(status_code=499)
    if a.error is not None or a.done is None:
        return api_error(a.error or RequestError("the generation ended without a result", code="engine_error",
                                                 status=500))
    processing_ms = (time.perf_counter() - a.started) * 1000
    data = frames.chat_data(a.done, conversation_id=a.conversation_id, model=a.model, processing_ms=processing_ms)
    data.update(answer_id=a.id, status=a.status, **a.extra)
    return json_response({"success": True, "data": data})


async def _to_the_end(rt: Runtime, a: Answer) -> None:
    async for _ in rt.answers.follow(a):
        pass


def answer_stream(request: Request, a: Answer | None, replayed: list[dict[str, Any]], *, after: int) -> Response:
    """An SSE response: the replayed frames, then the answer's frames after `after`."""
    rt: Runtime = request.app.state.runtime

    async def body() -> AsyncIterator[bytes]:
        for frame in replayed:
            yield sse_frame(frame)
        if a is not None:
            async for frame in rt.answers.follow(a, after):
                yield sse_frame(frame)

    return event_stream(request, body(), lambda e: sse(error_frame(e)))


async def answer_events(request: Request) -> Response:
    """`GET /api/answers/{answer_id}/events`: resume an answer's SSE stream after the
    seq in `Last-Event-ID` (or `?after=N`; neither: from the start). 204 when the
    answer has ended and the client has its last event (EventSource then stops)."""
    rt: Runtime = request.app.state.runtime
    answer_id = request.path_params["answer_id"]
    try:
        if rt.answers.closing:
            raise turns.shutting_down()
        check_answer_id(answer_id)
        after = parse_after(request.headers.get("last-event-id"), request.query_params.get("after"))
        owner = identity(request).owner
        a = rt.answers.find(answer_id, owner)
        replayed: list[dict[str, Any]] = []
        if a is None:  # not in memory (or another owner's): the store, which knows only the owner's
            replayed = await rt.answers.replay(answer_id, after, owner=owner)
        else:
            rt.answers.check_after(a, after)  # 400 past its last event
            if a.finished and after == a.last_seq:
                return Response(status_code=204)
    except RequestError as e:
        return api_error(e)
    return answer_stream(request, a, replayed, after=after)


def parse_after(last_event_id: str | None, after: str | None) -> int:
    """The last seq the client has: Last-Event-ID over ?after; -1 (nothing) when absent.
    parse_after("7", None) -> 7; parse_after(None, "3") -> 3; parse_after(None, None) -> -1."""
    raw, name = (last_event_id, "Last-Event-ID") if last_event_id not in (None, "") else (after, "after")
    if raw is None or raw == "":
        return -1
    try:
        value = int(raw.strip())
    except ValueError:
        raise RequestError(f"{name} must be a whole number (the seq of the last event received), got {raw[:40]!r}",
                           code="invalid_request", param="after") from None
    if not -1 <= value <= MAX_AFTER:
        raise RequestError(f"{name} must be between -1 and {MAX_AFTER}, got {value}", code="invalid_request",
                           param="after")
    return value


async def health(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    if rt.state == "ready":
        body = {"status": "ok", "model": rt.model_name, "uptime": round(time.time() - rt.stats.started, 3),
                "startup_ms": rt.stats.startup_ms, "generating": rt.generating, "queued": rt.queued,
                "slots": rt.scheduler.slots if rt.scheduler else None,
                # False: a base model, raw prompts only (chat routes answer 400 no_chat_template);
                # None: not known here (an upstream engine renders with its own).
                "has_chat_template": getattr(rt.prompts, "has_chat_template", None)}
        loading = rt.registry.loading() if rt.registry is not None else []
        if loading:  # models loading on demand (serve --model A --model B): their requests wait
            body["loading"] = loading
        upstream = rt.engine_info().get("upstream")  # with --engine openai:URL
        if upstream is not None:
            body["upstream"] = upstream
            if upstream["state"] in ("unreachable", "error"):
                return json_response({**body, "status": "engine_unavailable", "error": upstream["error"]}, 503)
        return json_response(body)
    if rt.state == "error":
        return json_response({"status": "error", "error": rt.error}, 503)
    return json_response({"status": "loading"}, 503)


async def stats(request: Request) -> Response:
    """`/api/stats`: the server's figures; `you` (who is asking: owner, admin); and with
    API keys, `keys`: requests, WebSockets and tokens per key name — every key for an
    admin, the asking key's own row for the others."""
    rt: Runtime = request.app.state.runtime
    body = rt.stats.snapshot(queued=rt.queued, generating=rt.generating, model=rt.model_name)
    body["engine"] = rt.engine_info()
    who = identity(request)
    body["you"] = {"owner": who.owner, "admin": who.admin}
    usage: KeyUsage | None = getattr(request.app.state, "key_usage", None)
    if usage is not None:
        only = None if who.admin else who.owner
        try:
            rows = await rt.ledger.usage(only)
        except RequestError as e:
            return api_error(e)
        body["keys"] = key_table(rows, usage.snapshot(), request.app.state.security.daily_token_quotas, only=only)
    return json_response(body)
