"""OpenAI-compatible routes: `POST /v1/chat/completions` (JSON or SSE ending in
`data: [DONE]`) and `GET /v1/models`. Stateless, like OpenAI's: the client sends the
whole conversation each time. Legacy `POST /v1/completions` is in
openai_completions.py; request extras (response_format, logprobs, logit_bias, n)
are checked in openai_params.py.

`n` choices are `n` generations of the same prompt, each in its own engine slot
(queued like any request); a stream interleaves their chunks, told apart by `index`.
A conversation that ends with an assistant message is continued (prefill): the
answer holds only the new text. Tools are translated in openai_tools.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ....engines.scheduler import Ticket
from ....generation import Delta, Prepared, SamplingParams
from ...chat import grounding, loading, turns
from ...chat.choices import collect_dones, merged
from ...chat.runtime import Runtime
from ...guards.security import identity
from ...wire import limits
from ...wire.errors import OVERFLOW, RequestError, openai_body, openai_error
from ...wire.frames import openai_finish_reason as finish_reason
from ...wire.frames import openai_usage
from ...wire.http import event_stream, json_response, read_body, sse, until_disconnect
from ...wire.schemas import OAIChatRequest, OAIMessage, decode
from . import params as op
from . import tools as openai_tools
from .tools import ToolPlan

ROLES = ("system", "user", "assistant", "developer", "tool")
def _content(i: int, m: OAIMessage) -> str | None:
    if m.content is None:
        return None
    if isinstance(m.content, str):
        return m.content
    texts = []
    for part in m.content:
        if part.type != "text" or part.text is None:
            raise RequestError(f"messages[{i}]: only text content parts are supported, got {part.type!r}",
                               param=f"messages[{i}].content")
        texts.append(part.text)
    return "".join(texts)


def to_messages(req: OAIChatRequest, tools: ToolPlan | None = None, *, max_chars: int) -> list[dict[str, str]]:
    out = []
    calls: dict[str, str] = {}  # tool call id -> tool name, for the tool turns that answer them
    for i, m in enumerate(req.messages):
        if m.role not in ROLES:
            raise RequestError(f"messages[{i}].role must be one of system, developer, user, assistant, tool; "
                               f"got {m.role!r}", param=f"messages[{i}].role")
        role = "system" if m.role == "developer" else m.role
        text = _content(i, m)
        if role == "tool":
            out.append({"role": "user", "content": openai_tools.tool_result_text(i, m, text, calls)})
            continue
        if m.tool_calls and role == "assistant":
            text = openai_tools.assistant_text(i, m, text)
            calls.update({c.id: c.function.name for c in m.tool_calls if c.id})
        elif m.tool_calls:
            raise RequestError(f"messages[{i}]: only assistant messages carry tool_calls",
                               param=f"messages[{i}].tool_calls")
        if role != "assistant" and not text:
            # OpenAI answers 400 to a user/system turn without content.
            what = "is required" if text is None else "must not be empty"
            raise RequestError(f"messages[{i}].content {what} for a {m.role} message",
                               param=f"messages[{i}].content")
        if text is None:
            raise RequestError(f"messages[{i}].content is required for an assistant message without "
                               "tool_calls", param=f"messages[{i}].content")
        out.append({"role": role, "content": text})
    limits.check_conversation(out, max_chars=max_chars)
    # Only a leading system message is kept as such; later ones become user context.
    for turn in out[1:]:
        if turn["role"] == "system":
            turn["role"] = "user"
    if tools is not None:
        if out[-1]["role"] == "assistant":
            raise RequestError("a trailing assistant message (prefill) cannot be combined with tools",
                               code="unsupported_parameter", param="messages")
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + tools.system}
        else:
            out.insert(0, {"role": "system", "content": tools.system})
    return out


async def _parse(rt: Runtime, req: OAIChatRequest
                 ) -> tuple[OAIChatRequest, SamplingParams, int, int, ToolPlan | None]:
    """The request, its sampling parameters, the number of choices and of top logprobs,
    and what its tools change (None without tools)."""
    _, prompts = rt.require_ready()
    count = op.choice_count(req.n)
    limits.check_range("max_completion_tokens", req.max_completion_tokens,
                       limits.MAX_TOKENS_MIN, limits.MAX_TOKENS_MAX)
    params = limits.sampling(rt.defaults, req, max_tokens=req.max_completion_tokens)
    probs = op.n_probs(req.logprobs, req.top_logprobs)
    bias = op.logit_bias(req.logit_bias, prompts.n_vocab)
    tools = openai_tools.plan(req)
    schema = tools.schema if tools is not None else op.response_schema(req.response_format)
    if tools is not None:
        for where, call in tools.calls:
            await op.check_schema_with_engine(call, where)
    if schema is not None:
        await op.check_schema_with_engine(schema, "tools" if tools is not None else "response_format")
    params = params.with_overrides(json_schema=schema, n_probs=probs or None, logit_bias=bias or None)
    return req, params, count, req.top_logprobs or 0, tools


async def chat_completions(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        body = decode(await read_body(request), OAIChatRequest)
    except RequestError as e:
        return openai_error(e)
    # A streamed request whose model loads for a second or more starts its stream then,
    # with comments while it waits (chat/loading.py); otherwise errors are HTTP statuses.
    return await loading.respond(request, lambda waiting: _open(request, rt, body, waiting),
                                 lambda o: _answer(request, *o), stream=bool(body.stream), on_error=openai_error,
                                 sse_error=lambda e: sse(openai_body(e)),
                                 dispose=lambda o: loading.drop_generations(o[0], o[3], o[4]))


async def _open(request: Request, rt: Runtime, body: OAIChatRequest, waiting: loading.Waiting | None
                ) -> tuple[Runtime, OAIChatRequest, SamplingParams, list[Ticket], list[SamplingParams], int,
                           ToolPlan | None, dict[str, Any]]:
    """The request's model (loaded now if needed), its prompt, its choices queued."""
    # `model` picks one of the models served; with one model served, any name means it
    # (OpenAI's clients must send one).
    async with rt.using(body.model, any_name=True, waiting=waiting) as rt:
        req, params, count, top, tools = await _parse(rt, body)
        messages = to_messages(req, tools, max_chars=rt.text_chars())
        # The prompt is built and queued before any byte of the answer is sent: a prompt
        # that cannot fit, or a full queue, is an HTTP error, not an error inside a 200 stream.
        _, prompts = rt.require_ready()
        prepared, extra = await _prepare(rt, request, req.documents, prompts, messages, params)
        # Its tokens are reserved of the key's daily quota (429 quota_exceeded) before it is queued.
        tickets, choice_params = await turns.admit(rt, identity(request), [prepared] * count,
                                                   op.seeded(params, count))
    return rt, req, params, tickets, choice_params, top, tools, extra


async def _prepare(rt: Runtime, request: Request, documents: object, prompts: Any, messages: list[dict[str, str]],
                   params: SamplingParams) -> tuple[Prepared, dict[str, Any]]:
    """The prompt; with our `documents` extension, grounded in the owner's documents
    (the last user message is the query), and the fields the answer then carries."""
    chosen = grounding.selection(documents)
    if chosen is None:
        return await turns.build(prompts.prepare, messages, params, overflow_code=OVERFLOW), {}
    found = await grounding.find(rt.documents, rt.embedder, rt.embed_lock, identity(request).owner, chosen,
                                 grounding.last_user_text(messages))
    fitter = grounding.Fitter(prompts, found)
    prepared = await turns.build(fitter.prepare, messages, params, overflow_code=OVERFLOW)
    return prepared, fitter.metadata()


async def _answer(request: Request, rt: Runtime, req: OAIChatRequest, params: SamplingParams, tickets: list[Ticket],
                  choice_params: list[SamplingParams], top: int, tools: ToolPlan | None,
                  extra: dict[str, Any] | None = None) -> Response:
    """The queued choices' answer: an SSE stream of chunks or one JSON body; with tools, the
    answer's JSON becomes `tool_calls` (or `content`), sent whole at its end.

    A little over 80 lines: the stream and the JSON body share the id, the time, the model
    and the logprobs shape; apart they would pass those five values back and forth."""
    count = len(tickets)
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    model = rt.model_name
    want_probs = params.n_probs > 0

    def probs_of(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
        return {"content": op.chat_logprobs(entries or [], top), "refusal": None} if want_probs else None

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None, last: bool = False) -> bytes:
            body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created,
                                    "model": model, "choices": choices}
            if usage is not None:
                body["usage"] = usage
            if last and extra:  # a grounded answer's citations ride on the last chunk
                body.update(extra)
            return sse(body)

        async def body() -> AsyncIterator[bytes]:
            for i in range(count):
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])
            completion = prompt = finished = 0
            async for i, ev in merged(rt, tickets, choice_params):
                if isinstance(ev, Delta):
                    # With tools the answer is JSON to translate: it is sent whole, at its end.
                    if (ev.text or ev.logprobs) and tools is None:
                        yield chunk([{"index": i, "delta": {"content": ev.text}, "logprobs": probs_of(ev.logprobs),
                                      "finish_reason": None}])
                    continue
                completion += ev.completion_tokens
                prompt = ev.prompt_tokens
                finished += 1
                finish = finish_reason(ev)
                if tools is not None:
                    content, calls = openai_tools.parse_answer(ev.text)
                    if calls:
                        finish = "tool_calls"
                        delta: dict[str, Any] = {"tool_calls": [{"index": k, **c} for k, c in enumerate(calls)]}
                    else:
                        delta = {"content": content}
                    yield chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
                # Usage is sent once, so that a client adding up chunk usage counts it
                # once: with include_usage on the final `choices: []` chunk (OpenAI's
                # place), else on the last finish_reason chunk (llama-server's).
                last = finished == count and not include_usage
                yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}],
                            openai_usage(prompt, completion) if last else None, last)
            if include_usage:
                yield chunk([], openai_usage(prompt, completion), True)
            yield b"data: [DONE]\n\n"

        return event_stream(request, body(), lambda e: sse(openai_body(e)))

    try:
        dones = await until_disconnect(request, collect_dones(rt, tickets, choice_params))
    except RequestError as e:
        return openai_error(e)
    except ClientDisconnect:
        return Response(status_code=499)
    first = dones[0]
    choices = []
    for i, d in enumerate(dones):
        message: dict[str, Any] = {"role": "assistant", "content": d.text}
        finish = finish_reason(d)
        if tools is not None:
            message["content"], calls = openai_tools.parse_answer(d.text)
            if calls:
                message["tool_calls"], finish = calls, "tool_calls"
        choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": probs_of(d.logprobs)})
    return json_response({
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "choices": choices,
        # The prompt is counted once (as OpenAI does for n > 1); completions add up.
        "usage": openai_usage(first.prompt_tokens, sum(d.completion_tokens for d in dones)),
        "timings": {"ttft_ms": round(first.ttft_ms, 2), "total_ms": round(max(d.total_ms for d in dones), 2),
                    "tokens_per_second": round(first.decode_tokens_per_s, 2)},
        **(extra or {}),
    })


async def list_models(request: Request) -> Response:
    """`GET /v1/models`: every model served, the default first, with our fields beside
    OpenAI's (status, size, context, memory: see GET /api/models)."""
    rt: Runtime = request.app.state.runtime
    created = int(rt.stats.started)
    if rt.registry is None:
        return json_response({"object": "list", "data": [
            {"id": rt.model_name, "object": "model", "created": created, "owned_by": "nanochat-lite",
             "has_chat_template": getattr(rt.prompts, "has_chat_template", None)},  # False: /v1/completions only
        ]})
    return json_response({"object": "list", "data": [
        {"id": row["name"], "object": "model", "created": created, "owned_by": "nanochat-lite", **row}
        for row in rt.registry.describe()]})
