"""A chat turn, the same whichever door it came through (`/api/chat`, `/ws`).

validate → a `client_id` of this owner seen before? then the turn is that message's
(no second generation) → find the owner's conversation (another owner's id is 404, as
a missing one) → build the prompt once (history fitted to the context: a message that
cannot fit is refused here) → reserve its tokens of the owner's daily quota (429 when
nothing is left; a short reservation lowers max_tokens) → take a place in the queue
(refused with 503 when it is full) → store the user's message and the assistant's
row, `streaming`, owned by the request's owner (acknowledged from here on) →
answers.py takes the generation over:
numbers its events, saves the text as it grows, stores the end (complete, stopped,
interrupted or failed), settles the reservation and lets its owner follow or resume
it. `/v1/*` use `build` + `admit` + `stream` without a conversation. The doors only
translate frames into their wire format (frames.py).

Between the engine and a client's socket a token crosses two hand-offs: the
scheduler's worker thread → the ticket's queue on the event loop (Ticket._put), then
the answer's task → its buffer, read by each follower (answers.py), which writes it to
the SSE response or the WebSocket itself. (`/v1/*` have no answer task: one hand-off.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from ...engines.scheduler import QueueFull, Ticket
from ...engines.template import TemplateError
from ...generation import ContextOverflow, Delta, Done, EngineError, Prepared, SamplingParams
from ...history import AlreadyExists, StoreError
from ...history.store import check_client_id
from ..guards.quotas import Reservation, tokens_used
from ..guards.security import Identity
from ..wire import limits
from ..wire.errors import RETRY_BUSY_S, RETRY_SHUTDOWN_S, RequestError
from ..wire.schemas import ChatRequest
from . import grounding
from .answers import Answer, storage_unavailable
from .runtime import Runtime

log = logging.getLogger("nanochat_lite")


@dataclass
class Turn:
    conversation_id: str
    params: SamplingParams
    ticket: Ticket
    started: float  # time.perf_counter() when the request arrived
    answer_id: str = ""
    message_id: int = 0  # the assistant's row, stored 'streaming'
    client_id: str | None = None
    reservation: Reservation | None = None
    extra: dict[str, Any] | None = None  # the final frame's citations, for an answer grounded in documents


class Duplicate(Exception):
    """The chat's client_id names a message already stored: its answer is `answer_id`."""

    def __init__(self, answer_id: str | None, client_id: str) -> None:
        super().__init__(answer_id)
        self.answer_id = answer_id
        self.client_id = client_id


@dataclass
class Opened:
    """What a door streams for a chat: a live answer to follow from the start, or the
    frames of an earlier one rebuilt from the store (a client_id sent again)."""

    answer: Answer | None
    replayed: list[dict[str, Any]]


def shutting_down() -> RequestError:
    return RequestError("the server is shutting down; retry in a moment", code="server_shutdown", status=503,
                        retry_after=RETRY_SHUTDOWN_S)


# -- building and queueing a prompt -------------------------------------------------

def _prompt_error(e: Exception, param: str, overflow_code: str | None) -> RequestError:
    if isinstance(e, ContextOverflow):
        return RequestError(str(e), code=overflow_code or e.code, param=param,
                            extra={"n_prompt_tokens": e.n_prompt_tokens, "n_ctx": e.n_ctx})
    # An upstream that cannot serve (remote_engine.EngineUnavailable) carries status 503.
    return RequestError(str(e), code=getattr(e, "code", "invalid_request"), param=param,
                        status=getattr(e, "status", 400))


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
                           retry_after=RETRY_BUSY_S) from None
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


# -- the owner's tokens -------------------------------------------------------------

def prompt_size(prep: Prepared) -> int:
    """The prompt's tokens; for an upstream engine (which tokenizes itself, so `tokens`
    is empty) an estimate of ~3 characters a token, to reserve before it answers."""
    if prep.tokens:
        return len(prep.tokens)
    messages = getattr(prep, "messages", None) or []
    text = getattr(prep, "prompt", None) or ""
    return (sum(len(str(m.get("content", ""))) for m in messages) + len(text)) // 3 + 4 * len(messages) + 1


async def reserve(rt: Runtime, who: Identity, prepared: Sequence[Prepared], params: Sequence[SamplingParams]
                  ) -> tuple[Reservation, list[Prepared], list[SamplingParams]]:
    """Reserve the tokens of these choices (one Prepared and SamplingParams each; choices
    of one prompt share its Prepared object, and its tokens count once) of `who`'s daily
    quota. When less is left than they could use, each choice's max_tokens is lowered to
    its share, so generation stops when the reservation is spent (finish_reason
    "length"). Raises RequestError 429 `quota_exceeded` (nothing stored or queued)."""
    prompts = {id(p): prompt_size(p) for p in prepared}
    wanted = [min(p.max_new, q.max_tokens) for p, q in zip(prepared, params)]
    try:
        r = await rt.ledger.reserve(who, prompt_tokens=sum(prompts.values()), max_tokens=wanted)
    except RequestError as e:
        if e.code == "quota_exceeded":  # /metrics counts it with the middlewares' refusals
            rt.stats.refused[(e.status, e.code)] += 1
        raise
    if r.caps == wanted:
        return r, list(prepared), list(params)
    return (r, [dataclasses.replace(p, max_new=cap) for p, cap in zip(prepared, r.caps)],
            [q.with_overrides(max_tokens=cap) for q, cap in zip(params, r.caps)])


async def admit(rt: Runtime, who: Identity, prepared: Sequence[Prepared], params: Sequence[SamplingParams]
                ) -> tuple[list[Ticket], list[SamplingParams]]:
    """The `/v1` doors' admission: reserve the choices' tokens, then queue them all (or
    none); each ticket's stream (`stream`) charges the reservation as it ends. The
    params returned are those queued (max_tokens lowered by a short reservation)."""
    keys: list[Hashable] = [id(p) for p in prepared]  # the prompt each choice shares
    r, prepared, params = await reserve(rt, who, prepared, params)
    try:
        tickets = submit_all(rt, list(prepared), list(params))
    except BaseException:
        rt.ledger.release(r)
        raise
    for ticket, key in zip(tickets, keys):
        rt.ledger.watch(ticket, r, key)
    return tickets, list(params)


# -- a chat turn --------------------------------------------------------------------

async def open_chat(rt: Runtime, req: ChatRequest, *, who: Identity,
                    stop: threading.Event | None = None, resumable: bool = True,
                    waiting: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> Opened:
    """A chat turn of `who`, started (begin_turn, then answers.py takes it over) or, for
    a client_id `who` has already stored, the earlier answer. Raises RequestError.
    `waiting` hears `loading` frames while the model loads (Runtime.using)."""
    if rt.answers.closing:
        raise shutting_down()
    model = req.model
    if model is None and req.conversation_id is not None and rt.registry is not None and len(rt.registry) > 1:
        model = await asyncio.to_thread(_conversation_model, rt, req.conversation_id, who.owner)
    async with rt.using(model, waiting=waiting) as bound:  # loads the model if needed; 404 model_not_found
        return await _open_chat(bound, req, who, stop, resumable)


async def _open_chat(rt: Runtime, req: ChatRequest, who: Identity, stop: threading.Event | None,
                     resumable: bool) -> Opened:
    try:
        turn = await begin_turn(rt, req, stop, who=who)
    except Duplicate as d:
        if d.answer_id is not None:
            a = rt.answers.find(d.answer_id, who.owner)
            if a is not None:
                return Opened(a, [])
            replayed = await rt.answers.replay(d.answer_id, owner=who.owner, start_model=rt.model_name)
            replayed[0]["client_id"] = d.client_id
            return Opened(None, replayed)
        raise RequestError(f"a message with client_id {d.client_id!r} is stored without an answer",
                           code="answer_not_found", status=404, param="client_id") from None
    a = rt.answers.start(answer_id=turn.answer_id, conversation_id=turn.conversation_id,
                         message_id=turn.message_id, model=rt.model_name, client_id=turn.client_id, owner=who.owner,
                         ticket=turn.ticket, params=turn.params, started=turn.started, resumable=resumable,
                         reservation=turn.reservation, extra=turn.extra)
    return Opened(a, [])


async def begin_turn(rt: Runtime, req: ChatRequest, stop: threading.Event | None = None, *,
                     who: Identity) -> Turn:
    """Validate, build the prompt, reserve its tokens, queue it and store the user's
    message and the assistant's row (`streaming`), owned by `who`. Raises RequestError
    (when it does, nothing was stored) or Duplicate (the client_id is stored already;
    nothing was queued)."""
    started = time.perf_counter()
    _, prompts = rt.require_ready()
    max_chars = rt.text_chars()
    limits.check_message(req.message, max_chars=max_chars)
    limits.check_system(req.system, max_chars=max_chars)
    limits.check_id(req.conversation_id)
    client_id = getattr(req, "client_id", None)
    try:
        check_client_id(client_id)
    except ValueError as e:
        raise RequestError(str(e), code="invalid_request", param="client_id") from None
    params = limits.sampling(rt.defaults, req)
    owner = who.owner
    chosen = grounding.selection(req.documents)
    sources = None if chosen is None else await grounding.find(rt.documents, rt.embedder, rt.embed_lock, owner,
                                                               chosen, req.message)
    # One trip off the loop for the store read and the prompt.
    try:
        conv, system, prepared, grounded = await asyncio.to_thread(_plan_turn, rt, req, prompts.prepare, params,
                                                                   client_id, owner, sources)
    except StoreError as e:
        raise storage_unavailable(e) from None
    reservation, [prepared], [params] = await reserve(rt, who, [prepared], [params])
    try:
        ticket = submit(rt, prepared, params, stop)
    except BaseException:
        rt.ledger.release(reservation)
        raise
    answer_id = secrets.token_hex(12)
    try:
        cid, message_id = await asyncio.to_thread(_store_user, rt, req, conv, system, params, client_id, answer_id,
                                                  owner, grounded)
    except BaseException as e:
        ticket.cancel()
        rt.ledger.release(reservation)
        if isinstance(e, AlreadyExists):  # the same client_id, sent twice at once: the other one stored it
            found = await asyncio.to_thread(rt.store.message_by_client_id, client_id or "", owner=owner)
            raise Duplicate(found.answer_id if found else None, client_id or "") from None
        if isinstance(e, StoreError):
            raise storage_unavailable(e) from None
        raise
    return Turn(cid, params, ticket, started, answer_id, message_id, client_id, reservation,
                grounded.metadata() if grounded is not None else None)


def _plan_turn(rt: Runtime, req: ChatRequest, prepare: Callable[..., Prepared], params: SamplingParams,
               client_id: str | None, owner: str, found: grounding.Found | None = None
               ) -> tuple[Any, str | None, Prepared, grounding.Grounded | None]:
    """`owner`'s conversation (None for a new one), its system prompt, the prompt to send
    and, with `found` documents, the sources it holds (grounding.fit)."""
    store = rt.store
    if client_id is not None:
        seen = store.message_by_client_id(client_id, owner=owner)
        if seen is not None:
            raise Duplicate(seen.answer_id, client_id)
    if req.conversation_id is not None:
        conv = store.get(req.conversation_id, owner=owner)
        if conv is None:  # missing, or another owner's: the same answer
            raise RequestError(f"no conversation with id {req.conversation_id!r}",
                               code="conversation_not_found", status=404, param="conversation_id")
        system = (req.system or None) if req.system is not None else conv.system
        # Not failed answers, nor one still streaming (another tab's, unfinished).
        history = [m for m in store.messages(conv.id, owner=owner)
                   if m.status not in ("failed", "streaming") and m.content]
    else:
        conv, system, history = None, req.system or None, []
    messages = [{"role": m.role, "content": m.content} for m in history if m.role in ("user", "assistant")]
    messages.append({"role": "user", "content": req.message})
    messages = _window(messages, limits.history_chars(rt.prompts.n_ctx if rt.prompts is not None else 0))
    if system:
        messages.insert(0, {"role": "system", "content": system})
    if found is None:
        return conv, system, build_now(prepare, messages, params), None
    fitter = grounding.Fitter(rt.prompts, found)  # as /v1 grounds its prompts
    return conv, system, build_now(fitter.prepare, messages, params), fitter.grounded


def _conversation_model(rt: Runtime, conversation_id: str, owner: str) -> str | None:
    """The model of the conversation's last answer, when this server still serves it
    (None: the default; a missing conversation is refused later, by _plan_turn)."""
    try:
        conv = rt.store.get(conversation_id, owner=owner)
        messages = rt.store.messages(conv.id, owner=owner) if conv is not None else []
    except StoreError as e:
        raise storage_unavailable(e) from None
    for m in reversed(messages):
        if m.role == "assistant" and m.model:
            return m.model if rt.registry is not None and m.model in rt.registry.names else None
    return None


def _store_user(rt: Runtime, req: ChatRequest, conv: Any, system: str | None, params: SamplingParams,
                client_id: str | None, answer_id: str, owner: str,
                grounded: grounding.Grounded | None = None) -> tuple[str, int]:
    """Store the user's message and the assistant's (empty, `streaming`) row; their ids."""
    store = rt.store
    if conv is None:
        conv = store.create(system=system, owner=owner)
    elif system != conv.system:
        store.set_system(conv.id, system, owner=owner)
    pd = params_dict(params)
    store.add_message(conv.id, "user", req.message, params=pd, client_id=client_id, answer_id=answer_id, owner=owner)
    answer = store.add_message(conv.id, "assistant", "", status="streaming", model=rt.model_name, params=pd,
                               answer_id=answer_id, owner=owner,
                               citations=grounded.citations() if grounded is not None else None,
                               documents_mode=grounded.mode if grounded is not None else None)
    return str(conv.id), answer.id


# -- streaming a queued generation --------------------------------------------------

async def stream(rt: Runtime, ticket: Ticket, params: SamplingParams) -> AsyncIterator[Delta | Done]:
    """Yield a queued generation's events (the `/v1` doors: nothing is stored).

    Setting the ticket's stop event ends the generation within one token with a
    Done whose finish_reason is "cancelled". Closing this iterator early (client
    gone) cancels it too.
    """
    t0 = rt.stats.begin()
    done: Done | None = None
    streamed = 0  # text deltas so far: what a generation that ends without a Done has used
    try:
        async for event in ticket.events():
            if isinstance(event, Done):
                done = event
            else:
                streamed += 1
            yield event
    except EngineError as e:
        rt.stats.end(t0, ok=False)
        # An engine error may say its status (a queue timeout is the server's 503).
        raise RequestError(str(e), code=e.code, status=getattr(e, "status", 400)) from None
    except Exception as e:
        # A bug, not the client's fault: fail this request loudly, keep serving.
        log.error("generation failed: %r", e, exc_info=e)
        rt.stats.end(t0, ok=False)
        raise RequestError("internal error during generation; see the server log",
                           code="internal_error", status=500) from None
    except BaseException:
        # Cancelled (client went away) or the consumer stopped iterating: stop the worker now.
        ticket.cancel()
        if done is None:
            rt.stats.end(t0, ok=True, cancelled=True)
        raise
    finally:
        ticket.cancel()  # no-op when finished; stops the worker when we leave early
        rt.ledger.charge_ticket(ticket, *tokens_used(ticket, done, streamed))
    if done is not None:
        rt.stats.end(t0, ok=True, prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                     ttft_ms=done.ttft_ms, tokens_per_s=done.decode_tokens_per_s,
                     cancelled=done.finish_reason == "cancelled", cached_tokens=done.cached_tokens)


def params_dict(p: SamplingParams) -> dict[str, Any]:
    return {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "min_p": p.min_p,
            "repeat_penalty": p.repeat_penalty, "seed": p.seed, "max_tokens": p.max_tokens, "stop": list(p.stop)}


def _window(messages: list[dict[str, str]], max_chars: int) -> list[dict[str, str]]:
    """The newest messages, at most MAX_MESSAGES and `max_chars` characters (the newest
    one always: the prompt builder then fits tokens, or says it cannot)."""
    out: list[dict[str, str]] = []
    chars = 0
    for m in reversed(messages):
        if len(out) >= limits.MAX_MESSAGES or chars + len(m["content"]) > max_chars:
            break
        out.append(m)
        chars += len(m["content"])
    out.reverse()
    return out or messages[-1:]
