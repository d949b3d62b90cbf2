"""A chat turn, the same whichever door it came through (`/api/chat`, `/ws`).

validate → find the conversation → build the prompt once (history fitted to the
context: a message that cannot fit is refused here) → take a place in the queue
(refused with 503 when it is full) → store the user's message (acknowledged from
here on) → stream the engine's events → store the answer (complete, stopped,
interrupted or failed). `/v1/*` use `build` + `submit` + `stream` without a
conversation. The doors only translate events into their wire format (frames.py).

Between the engine and a client's socket a token crosses at most two hand-offs:
the scheduler's worker thread → the ticket's queue on the event loop (Ticket._put),
and, for SSE, the pump task → the response's queue (http.event_stream). Everything
else is async generators in one task.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..engine import ContextOverflow, Delta, Done, EngineError, Prepared, SamplingParams
from ..scheduler import QueueFull, Ticket
from ..template import TemplateError
from . import frames, limits
from .errors import RequestError
from .runtime import Runtime
from .schemas import ChatRequest

log = logging.getLogger("nanochat_lite")

# Seconds a client is told to wait (Retry-After) when the queue is full.
RETRY_AFTER_S = 2


@dataclass
class Turn:
    conversation_id: str
    params: SamplingParams
    ticket: Ticket
    started: float  # time.perf_counter() when the request arrived


# -- building and queueing a prompt -------------------------------------------------

def _prompt_error(e: Exception, param: str, overflow_code: str | None) -> RequestError:
    if isinstance(e, ContextOverflow):
        return RequestError(str(e), code=overflow_code or e.code, param=param,
                            extra={"n_prompt_tokens": e.n_prompt_tokens, "n_ctx": e.n_ctx})
    return RequestError(str(e), code=getattr(e, "code", "invalid_request"), param=param)


def build_now(make: Callable[..., Prepared], *args: Any, param: str = "messages",
              overflow_code: str | None = None) -> Prepared:
    """Build a prompt (blocking). Its failures become 400s: `overflow_code` names a
    context overflow (OpenAI calls it context_length_exceeded)."""
    try:
        return make(*args)
    except (EngineError, TemplateError) as e:
        raise _prompt_error(e, param, overflow_code) from None


async def build(make: Callable[..., Prepared], *args: Any, param: str = "messages",
                overflow_code: str | None = None) -> Prepared:
    """build_now, off the loop."""
    return await asyncio.to_thread(build_now, make, *args, param=param, overflow_code=overflow_code)


def submit(rt: Runtime, prepared: Prepared, params: SamplingParams, stop: threading.Event | None = None) -> Ticket:
    """Queue a prompt. 503 `server_busy` (with Retry-After) when the queue is full."""
    scheduler, _ = rt.require_ready()
    try:
        ticket: Ticket = scheduler.submit(prepared, params, stop)
        return ticket
    except QueueFull as e:
        rt.stats.rejected += 1
        raise RequestError(f"the server is busy: {e}", code="server_busy", status=503,
                           retry_after=RETRY_AFTER_S) from None
    except EngineError as e:
        raise RequestError(str(e), code="unavailable", status=503) from None


def submit_all(rt: Runtime, prepared: list[Prepared], params: list[SamplingParams]) -> list[Ticket]:
    """Queue one ticket per choice; all or none (a full queue cancels those already queued)."""
    tickets: list[Ticket] = []
    try:
        for prep, p in zip(prepared, params):
            tickets.append(submit(rt, prep, p))
    except BaseException:
        for t in tickets:
            t.cancel()
        raise
    return tickets


# -- a chat turn --------------------------------------------------------------------

async def begin_turn(rt: Runtime, req: ChatRequest, stop: threading.Event | None = None) -> Turn:
    """Validate, build the prompt, queue it and store the user's message. Raises
    RequestError; when it does, nothing was stored."""
    started = time.perf_counter()
    _, prompts = rt.require_ready()
    limits.check_message(req.message)
    limits.check_system(req.system)
    limits.check_id(req.conversation_id)
    params = limits.sampling(rt.defaults, req)
    # One trip off the loop for the store read and the prompt.
    conv, system, prepared = await asyncio.to_thread(_plan_turn, rt, req, prompts.prepare, params)
    ticket = submit(rt, prepared, params, stop)
    try:
        cid = await asyncio.to_thread(_store_user, rt, req, conv, system, params)
    except BaseException:
        ticket.cancel()
        raise
    return Turn(cid, params, ticket, started)


def _plan_turn(rt: Runtime, req: ChatRequest, prepare: Callable[..., Prepared], params: SamplingParams
               ) -> tuple[Any, str | None, Prepared]:
    """The conversation (None for a new one), its system prompt and the prompt to send."""
    store = rt.store
    if req.conversation_id is not None:
        conv = store.get(req.conversation_id)
        if conv is None:
            raise RequestError(f"no conversation with id {req.conversation_id!r}",
                               code="conversation_not_found", status=404, param="conversation_id")
        system = (req.system or None) if req.system is not None else conv.system
        history = [m for m in store.messages(conv.id) if m.status != "failed" and m.content]
    else:
        conv, system, history = None, req.system or None, []
    messages = [{"role": m.role, "content": m.content} for m in history if m.role in ("user", "assistant")]
    messages.append({"role": "user", "content": req.message})
    messages = _window(messages)
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return conv, system, build_now(prepare, messages, params)


def _store_user(rt: Runtime, req: ChatRequest, conv: Any, system: str | None, params: SamplingParams) -> str:
    store = rt.store
    if conv is None:
        conv = store.create(system=system)
    elif system != conv.system:
        store.set_system(conv.id, system)
    store.add_message(conv.id, "user", req.message, params=params_dict(params))
    return str(conv.id)


async def turn_frames(rt: Runtime, turn: Turn) -> AsyncIterator[dict[str, Any]]:
    """One chat turn as the frames SSE and the WebSocket share: start, token…, done.

    "done" comes once the stream has ended, so the answer is stored when it arrives.
    """
    yield frames.start_frame(turn.conversation_id, rt.model_name)
    final = None
    async for ev in stream(rt, turn.ticket, turn.params, turn.conversation_id):
        if isinstance(ev, Delta):
            yield frames.token_frame(ev.text)
        else:
            final = ev
    if final is not None:
        yield frames.done_frame(final, conversation_id=turn.conversation_id, model=rt.model_name,
                                processing_ms=(time.perf_counter() - turn.started) * 1000)


# -- streaming a queued generation --------------------------------------------------

async def stream(rt: Runtime, ticket: Ticket, params: SamplingParams,
                 conversation_id: str | None = None) -> AsyncIterator[Delta | Done]:
    """Yield a queued generation's events; stores the answer when given a conversation.

    Setting the ticket's stop event ends the generation within one token with a
    Done whose finish_reason is "cancelled". Closing this iterator early (client
    gone) cancels it too, and the partial answer is stored as interrupted.
    """
    t0 = rt.stats.begin()
    done: Done | None = None
    text: list[str] = []
    try:
        async for event in ticket.events():
            if isinstance(event, Done):
                done = event
            else:
                text.append(event.text)
            yield event
    except EngineError as e:
        rt.stats.end(t0, ok=False)
        await _store_answer(rt, conversation_id, "".join(text), "failed", None, params)
        # An engine error may say its status (a queue timeout is the server's 503).
        raise RequestError(str(e), code=e.code, status=getattr(e, "status", 400)) from None
    except Exception as e:
        # A bug, not the client's fault: fail this request loudly, keep serving.
        log.error("generation failed: %r", e, exc_info=e)
        rt.stats.end(t0, ok=False)
        await _store_answer(rt, conversation_id, "".join(text), "failed", None, params)
        raise RequestError("internal error during generation; see the server log",
                           code="internal_error", status=500) from None
    except BaseException:
        # Cancelled (client went away) or the consumer stopped iterating: stop the
        # worker now, before the (awaited) store write below.
        ticket.cancel()
        if done is None:
            rt.stats.end(t0, ok=True, cancelled=True)
            # The client went away mid-answer (a stop button gives a Done instead).
            await asyncio.shield(_store_answer(rt, conversation_id, "".join(text), "interrupted", None, params))
        raise
    finally:
        ticket.cancel()  # no-op when finished; stops the worker when we leave early
    if done is not None:
        rt.stats.end(t0, ok=True, prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                     ttft_ms=done.ttft_ms, tokens_per_s=done.decode_tokens_per_s,
                     cancelled=done.finish_reason == "cancelled", cached_tokens=done.cached_tokens)
        status = "stopped" if done.finish_reason == "cancelled" else "complete"
        await _store_answer(rt, conversation_id, done.text, status, done, params)


async def complete(rt: Runtime, ticket: Ticket, params: SamplingParams, conversation_id: str | None = None) -> Done:
    """Run a queued generation to the end and return its Done (the text is in it)."""
    done: Done | None = None
    async for ev in stream(rt, ticket, params, conversation_id):
        if isinstance(ev, Done):
            done = ev
    if done is None:
        raise RequestError("the generation ended without a result", code="engine_error", status=500)
    return done


async def _store_answer(rt: Runtime, conversation_id: str | None, text: str, status: str, done: Done | None,
                        params: SamplingParams) -> None:
    if conversation_id is None:
        return
    kwargs: dict[str, Any] = {"status": status, "model": rt.model_name, "params": params_dict(params)}
    if done is not None:
        kwargs.update(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                      ttft_ms=round(done.ttft_ms, 2), duration_ms=round(done.total_ms, 2))
    await asyncio.to_thread(rt.store.add_message, conversation_id, "assistant", text, **kwargs)


def params_dict(p: SamplingParams) -> dict[str, Any]:
    return {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "min_p": p.min_p,
            "repeat_penalty": p.repeat_penalty, "seed": p.seed, "max_tokens": p.max_tokens, "stop": list(p.stop)}


def _window(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The newest messages within the conversation limits (the prompt builder then fits tokens)."""
    out: list[dict[str, str]] = []
    chars = 0
    for m in reversed(messages):
        if len(out) >= limits.MAX_MESSAGES or chars + len(m["content"]) > limits.MAX_CONVERSATION_CHARS:
            break
        out.append(m)
        chars += len(m["content"])
    out.reverse()
    return out or messages[-1:]
