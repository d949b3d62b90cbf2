"""OpenAI-compatible routes: `POST /v1/chat/completions` (JSON or SSE ending in
`data: [DONE]`) and `GET /v1/models`. Stateless, like OpenAI's: the client sends the
whole conversation each time."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..engine import Delta, Done
from . import limits
from .http import event_stream, json_response, openai_error, read_body, sse, until_disconnect
from .limits import RequestError
from .runtime import Runtime
from .schemas import OAIChatRequest, OAIMessage, decode

ROLES = ("system", "user", "assistant", "developer")


def _content(i: int, m: OAIMessage) -> str:
    if m.content is None:
        return ""
    if isinstance(m.content, str):
        return m.content
    texts = []
    for part in m.content:
        if part.type != "text" or part.text is None:
            raise RequestError(f"messages[{i}]: only text content parts are supported, got {part.type!r}",
                               param=f"messages[{i}].content")
        texts.append(part.text)
    return "".join(texts)


def to_messages(req: OAIChatRequest) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(req.messages):
        if m.role not in ROLES:
            raise RequestError(f"messages[{i}].role must be one of system, user, assistant; got {m.role!r}",
                               param=f"messages[{i}].role")
        role = "system" if m.role == "developer" else m.role
        out.append({"role": role, "content": _content(i, m)})
    limits.check_conversation(out)
    if out[-1]["role"] == "assistant":
        raise RequestError("the last message must come from the user (or system), not the assistant",
                           param="messages")
    # Only a leading system message is kept as such; later ones become user context.
    for m in out[1:]:
        if m["role"] == "system":
            m["role"] = "user"
    return out


def _usage(done: Done) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.total_tokens}


def _finish(done: Done) -> str:
    return "length" if done.finish_reason == "length" else "stop"


async def chat_completions(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        req = decode(await read_body(request), OAIChatRequest)
        rt.require_ready()
        if req.n not in (None, 1):
            raise RequestError("only n=1 is supported", param="n")
        messages = to_messages(req)
        limits.check_range("max_completion_tokens", req.max_completion_tokens,
                           limits.MAX_TOKENS_MIN, limits.MAX_TOKENS_MAX)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        params = limits.sampling(
            rt.defaults, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
            repeat_penalty=req.repeat_penalty, frequency_penalty=req.frequency_penalty,
            presence_penalty=req.presence_penalty, seed=req.seed, max_tokens=max_tokens, stop=req.stop,
        )
        # The prompt is built and queued before any byte is sent: a prompt that cannot
        # fit, or a full queue, is an HTTP error, not an error inside a 200 stream.
        ticket = await rt.start(messages, params)
    except RequestError as e:
        return openai_error(e)

    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    model = rt.model_name

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: dict, finish: str | None, usage: dict | None = None) -> bytes:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage is not None:
                body["usage"] = usage
            return sse(body)

        async def body() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": ""}, None)
            async for ev in rt.stream(ticket, params):
                if isinstance(ev, Delta):
                    yield chunk({"content": ev.text}, None)
                else:
                    yield chunk({}, _finish(ev), _usage(ev))
                    if include_usage:
                        yield sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                                   "model": model, "choices": [], "usage": _usage(ev)})
            yield b"data: [DONE]\n\n"

        def on_error(e: RequestError) -> bytes:
            return sse({"error": {"message": e.message, "type": "invalid_request_error", "code": e.code}})

        return event_stream(request, body(), on_error)

    try:
        done = await until_disconnect(request, rt.complete(ticket, params))
    except RequestError as e:
        return openai_error(e)
    except ClientDisconnect:
        return Response(status_code=499)
    return json_response({
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                     "finish_reason": _finish(done), "logprobs": None}],
        "usage": _usage(done),
        "timings": {"ttft_ms": round(done.ttft_ms, 2), "total_ms": round(done.total_ms, 2),
                    "tokens_per_second": round(done.decode_tokens_per_s, 2)},
    })


async def list_models(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    return json_response({"object": "list", "data": [
        {"id": rt.model_name, "object": "model", "created": int(rt.stats.started), "owned_by": "nanochat-lite"},
    ]})
