"""`POST /v1/completions`: OpenAI's legacy text completions.

The prompt is raw text (or token ids), continued as it is: no chat template. As
llama-server's `/completion` does, control-token text in a prompt string becomes
control tokens (`<|im_start|>` is one token), and BOS is added when the model wants
it: a client of this endpoint writes the whole prompt, template included, so there
is nobody else's text to protect (`/v1/chat/completions` keeps message text apart).

`prompt` may be a string, a list of strings, a list of token ids, or a list of lists
of token ids; each prompt gives `n` choices, numbered prompt by prompt
(`index = prompt * n + k`). `echo` puts the prompt's text before the answer.
Refused (400): `suffix` (fill-in-the-middle), `best_of` other than `n`, and `echo`
with `logprobs` (the engine does not compute the prompt's logprobs).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ....engines.scheduler import Ticket
from ....generation import Delta, Done, Prepared, SamplingParams
from ...chat import loading, turns
from ...chat.choices import collect_dones, merged
from ...chat.runtime import Prompter, Runtime
from ...guards.security import identity
from ...wire import limits
from ...wire.errors import OVERFLOW, RequestError, openai_body, openai_error
from ...wire.frames import openai_finish_reason as finish_reason
from ...wire.frames import openai_usage
from ...wire.http import event_stream, json_response, read_body, sse, until_disconnect
from ...wire.schemas import OAICompletionRequest, decode
from . import params as op


def _is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def prompts_of(prompt: Any, *, max_chars: int) -> list[str | list[int]]:
    """The request's prompts: strings (of at most `max_chars` characters), or lists of token ids.

    "hi" -> ["hi"];  [1, 2] -> [[1, 2]];  ["a", "b"] -> ["a", "b"];  [[1], [2, 3]] -> [[1], [2, 3]]
    """
    if isinstance(prompt, str):
        out: list[str | list[int]] = [prompt]
    elif isinstance(prompt, list) and prompt and all(_is_id(x) for x in prompt):
        out = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(x, str) for x in prompt):
        out = list(prompt)
    elif (isinstance(prompt, list) and prompt
          and all(isinstance(x, list) and all(_is_id(t) for t in x) for x in prompt)):
        out = list(prompt)
    else:
        raise RequestError("`prompt` must be a string, a list of strings, a list of token ids or a list of "
                           "lists of token ids (none of them empty)", param="prompt")
    for i, p in enumerate(out):
        if not p:
            raise RequestError(f"prompt {i} is empty", param="prompt")
        if isinstance(p, str):
            limits.check_chars(p, max_chars=max_chars, what=f"prompt {i}", param="prompt")
        if isinstance(p, list) and len(p) > limits.MAX_PROMPT_TOKENS:
            raise RequestError(f"prompt {i} has {len(p):,} token ids; the limit is {limits.MAX_PROMPT_TOKENS:,}",
                               param="prompt")
    return out


def _check(req: OAICompletionRequest, n_prompts: int, n: int) -> None:
    """What this door does not do, refused by name (400)."""
    if n_prompts * n > limits.MAX_N:
        raise RequestError(f"{n_prompts} prompts x n={n} make {n_prompts * n} choices; the limit is "
                           f"{limits.MAX_N}", param="n")
    if req.suffix:
        raise RequestError("`suffix` (fill-in-the-middle) is not supported", code="unsupported_parameter",
                           param="suffix")
    if req.best_of not in (None, 1, n):
        raise RequestError("`best_of` is not supported (only best_of = n)", code="unsupported_parameter",
                           param="best_of")
    limits.check_range("logprobs", req.logprobs, limits.TOP_LOGPROBS_MIN, limits.TOP_LOGPROBS_MAX)
    if req.echo and req.logprobs is not None:
        raise RequestError("`echo` with `logprobs` is not supported: the prompt's logprobs are not computed",
                           code="unsupported_parameter", param="logprobs")


async def _prepare(builder: Prompter, prompts: list[str | list[int]], params: SamplingParams, echo: bool
                   ) -> tuple[list[Prepared], list[str]]:
    """Each prompt's token ids (text or ids), and the text `echo` repeats."""
    prepared: list[Prepared] = []
    echoes: list[str] = []
    for p in prompts:
        if isinstance(p, str):
            prepared.append(await turns.build(builder.prepare_text, p, params, param="prompt",
                                              overflow_code=OVERFLOW))
            echoes.append(p)
        else:
            prepared.append(await turns.build(builder.prepare_tokens, p, params, param="prompt",
                                              overflow_code=OVERFLOW))
            echoes.append(await asyncio.to_thread(builder.detokenize, p) if echo else "")
    return prepared, echoes


async def completions(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        req = decode(await read_body(request), OAICompletionRequest)
    except RequestError as e:
        return openai_error(e)
    # A streamed request whose model loads for a second or more starts its stream then,
    # with comments while it waits (chat/loading.py); otherwise errors are HTTP statuses.
    return await loading.respond(request, lambda waiting: _open(request, rt, req, waiting),
                                 lambda o: _answer(request, *o), stream=bool(req.stream), on_error=openai_error,
                                 sse_error=lambda e: sse(openai_body(e)),
                                 dispose=lambda o: loading.drop_generations(o[0], o[2], o[3]))


async def _open(request: Request, rt: Runtime, req: OAICompletionRequest, waiting: loading.Waiting | None
                ) -> tuple[Runtime, OAICompletionRequest, list[Ticket], list[SamplingParams], list[str], int, int]:
    """The request's model (loaded now if needed), its prompts, their choices queued."""
    async with rt.using(req.model, any_name=True, waiting=waiting) as rt:  # the model named
        _, builder = rt.require_ready()
        prompts = prompts_of(req.prompt, max_chars=rt.text_chars())
        n = op.choice_count(req.n)
        _check(req, len(prompts), n)
        top = req.logprobs or 0
        params = limits.sampling(rt.defaults, req).with_overrides(
            n_probs=max(1, top) if req.logprobs is not None else None,
            logit_bias=op.logit_bias(req.logit_bias, builder.n_vocab) or None)
        prepared, echoes = await _prepare(builder, prompts, params, bool(req.echo))
        tickets, choice_params = await turns.admit(rt, identity(request),
                                                   [prep for prep in prepared for _ in range(n)],
                                                   op.seeded(params, n) * len(prompts))
    head = [echoes[i // n] if req.echo else "" for i in range(len(tickets))]
    return rt, req, tickets, choice_params, head, n, top


async def _answer(request: Request, rt: Runtime, req: OAICompletionRequest, tickets: list[Ticket],
                  choice_params: list[SamplingParams], head: list[str], n: int, top: int) -> Response:
    """The queued choices' answer: an SSE stream or one JSON body (`head`: each choice's echo)."""
    cid = "cmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    model = rt.model_name
    count = len(tickets)
    want_probs = req.logprobs is not None
    offsets = [len(h) for h in head]  # text_offset of each choice's next token

    def probs_of(i: int, entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
        if not want_probs:
            return None
        out = op.legacy_logprobs(entries or [], top, offsets[i])
        offsets[i] += sum(len(t) for t in out["tokens"])
        return out

    def usage_of(dones: dict[int, Done]) -> dict[str, Any]:
        # Each prompt counted once (its n choices share it); completions add up.
        prompt = sum(d.prompt_tokens for i, d in dones.items() if i % n == 0)
        return openai_usage(prompt, sum(d.completion_tokens for d in dones.values()))

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            body: dict[str, Any] = {"id": cid, "object": "text_completion", "created": created, "model": model,
                                    "choices": choices}
            if usage is not None:
                body["usage"] = usage
            return sse(body)

        async def body() -> AsyncIterator[bytes]:
            for i in range(count):
                if head[i]:
                    yield chunk([{"text": head[i], "index": i, "logprobs": None, "finish_reason": None}])
            dones: dict[int, Done] = {}
            async for i, ev in merged(rt, tickets, choice_params):
                if isinstance(ev, Delta):
                    if ev.text or ev.logprobs:
                        yield chunk([{"text": ev.text, "index": i, "logprobs": probs_of(i, ev.logprobs),
                                      "finish_reason": None}])
                else:
                    dones[i] = ev
                    # Usage once: on the final `choices: []` chunk with include_usage,
                    # else on the last finish_reason chunk (as in chat completions).
                    last = len(dones) == count and not include_usage
                    yield chunk([{"text": "", "index": i, "logprobs": None, "finish_reason": finish_reason(ev)}],
                                usage_of(dones) if last else None)
            if include_usage:
                yield chunk([], usage_of(dones))
            yield b"data: [DONE]\n\n"

        return event_stream(request, body(), lambda e: sse(openai_body(e)))

    try:
        dones = dict(enumerate(await until_disconnect(request, collect_dones(rt, tickets, choice_params))))
    except RequestError as e:
        return openai_error(e)
    except ClientDisconnect:
        return Response(status_code=499)
    return json_response({
        "id": cid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"text": head[i] + dones[i].text, "index": i, "logprobs": probs_of(i, dones[i].logprobs),
                     "finish_reason": finish_reason(dones[i])} for i in range(count)],
        "usage": usage_of(dones),
    })
