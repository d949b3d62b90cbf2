"""What the routes share: load state, scheduler, store, stats, and one chat turn.

A chat turn is the same whichever door it came through (`/api/chat`, `/ws`):
validate, find the conversation, build the prompt once (history fitted to the
context: a message that cannot fit is refused here), take a place in the queue
(refused with 503 when it is full), store the user's message (acknowledged from here
on), stream the engine's events, store the answer (complete, stopped, interrupted or
failed). `/v1/chat/completions` does the same without a conversation. The routes
only translate events into their wire format.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..engine import ContextOverflow, Delta, Done, EngineError, Prepared, SamplingParams
from ..history import ConversationStore
from ..scheduler import QueueFull, Scheduler, Ticket
from . import limits
from .limits import RequestError
from .schemas import ChatRequest
from .stats import Stats

log = logging.getLogger("nanochat_lite")

# Seconds a client is told to wait (Retry-After) when the queue is full.
RETRY_AFTER_S = 2


@dataclass
class Turn:
    conversation_id: str
    params: SamplingParams
    ticket: Ticket


class Runtime:
    def __init__(self, *, store: ConversationStore, model_name: str, startup_ms: float | None = None,
                 defaults: SamplingParams | None = None, embedder_factory: Callable[[], Any] | None = None,
                 tokenizer_factory: Callable[[], Any] | None = None) -> None:
        self.store = store
        self.model_name = model_name
        self.state = "loading"  # -> "ready" | "error"
        self.error: str | None = None
        self.engine: Any = None
        self.scheduler: Scheduler | None = None
        self.stats = Stats(startup_ms)
        self.defaults = defaults or SamplingParams()
        self._embedder_factory = embedder_factory
        self._embedder: Any = None
        self._embedder_lock = threading.Lock()
        self.embed_lock = asyncio.Lock()  # one embedding batch at a time
        self._tokenizer_factory = tokenizer_factory
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------
    def set_engine(self, engine: Any, scheduler: Scheduler | None = None) -> None:
        self.engine = engine
        if self._tokenizer is not None:
            engine.tokenizer = self._tokenizer
        self.model_name = engine.name
        self.scheduler = scheduler or Scheduler(engine)
        self.state = "ready"

    def set_error(self, message: str) -> None:
        self.error = message
        self.state = "error"

    def close(self) -> None:
        if self.scheduler:
            self.scheduler.close()

    def require_ready(self) -> Scheduler:
        if self.state != "ready" or self.scheduler is None:
            if self.state == "error":
                raise RequestError(f"the model failed to load: {self.error}", code="model_error", status=503)
            raise RequestError("the model is still loading; retry in a moment", code="loading", status=503)
        return self.scheduler

    @property
    def generating(self) -> int:
        return self.scheduler.active if self.scheduler else 0

    @property
    def queued(self) -> int:
        return self.scheduler.queued if self.scheduler else 0

    def engine_info(self) -> dict:
        """Slots and cache figures for /api/stats and /api/health."""
        sch, eng = self.scheduler, self.engine
        if sch is None or eng is None:
            return {}
        return {"slots": sch.slots, "slots_in_use": sch.active, "queued": sch.queued, "max_queue": sch.max_queue,
                "ctx_size": eng.n_ctx, "kv_size": getattr(eng, "kv_size", None),
                "kv_cache_bytes": getattr(eng, "kv_cache_bytes", None), "shared_prefix_tokens": sch.prefix_tokens,
                "threads": getattr(eng, "threads", None)}

    # -- starting a generation ----------------------------------------------------
    def _prepare(self, messages: list[dict[str, str]], params: SamplingParams) -> Prepared:
        try:
            return self.engine.prepare(messages, params)
        except ContextOverflow as e:
            raise RequestError(str(e), code=e.code, param="messages") from None
        except EngineError as e:
            raise RequestError(str(e), code=e.code) from None

    def _submit(self, prepared: Prepared, params: SamplingParams, stop: threading.Event | None) -> Ticket:
        scheduler = self.require_ready()
        try:
            return scheduler.submit(prepared, params, stop)
        except QueueFull as e:
            self.stats.rejected += 1
            raise RequestError(f"the server is busy: {e}", code="server_busy", status=503,
                               retry_after=RETRY_AFTER_S) from None
        except EngineError as e:
            raise RequestError(str(e), code="unavailable", status=503) from None

    async def start(self, messages: list[dict[str, str]], params: SamplingParams,
                    stop: threading.Event | None = None) -> Ticket:
        """Build the prompt (off the loop) and queue it. Raises RequestError (400 when it
        cannot fit, 503 when the queue is full) before anything has been generated."""
        self.require_ready()
        prepared = await asyncio.to_thread(self._prepare, messages, params)
        return self._submit(prepared, params, stop)

    # -- a chat turn --------------------------------------------------------------
    async def begin_turn(self, req: ChatRequest, stop: threading.Event | None = None) -> Turn:
        """Validate, build the prompt, queue it and store the user's message. Raises
        RequestError; when it does, nothing was stored."""
        self.require_ready()
        limits.check_message(req.message)
        limits.check_system(req.system)
        limits.check_id(req.conversation_id)
        params = limits.sampling(self.defaults, **req.sampling_kwargs())
        conv, system, prepared = await asyncio.to_thread(self._plan_turn, req, params)
        ticket = self._submit(prepared, params, stop)
        try:
            cid = await asyncio.to_thread(self._store_user, req, conv, system, params)
        except BaseException:
            ticket.cancel()
            raise
        return Turn(cid, params, ticket)

    def _plan_turn(self, req: ChatRequest, params: SamplingParams) -> tuple[Any, str | None, Prepared]:
        """The conversation (None for a new one), its system prompt and the prompt to send."""
        store = self.store
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
        return conv, system, self._prepare(messages, params)

    def _store_user(self, req: ChatRequest, conv: Any, system: str | None, params: SamplingParams) -> str:
        store = self.store
        if conv is None:
            conv = store.create(system=system)
        elif system != conv.system:
            store.set_system(conv.id, system)
        store.add_message(conv.id, "user", req.message, params=_params_dict(params))
        return conv.id

    async def stream(self, ticket: Ticket, params: SamplingParams,
                     conversation_id: str | None = None) -> AsyncIterator[Delta | Done]:
        """Yield a queued generation's events; stores the answer when given a conversation.

        Setting the ticket's stop event ends the generation within one token with a
        Done whose finish_reason is "cancelled". Closing this iterator early (client
        gone) cancels it too, and the partial answer is stored as interrupted.
        """
        t0 = self.stats.begin()
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
            self.stats.end(t0, ok=False)
            await self._store_answer(conversation_id, "".join(text), "failed", None, params)
            raise RequestError(str(e), code=e.code) from None
        except Exception as e:
            # A bug, not the client's fault: fail this request loudly, keep serving.
            log.error("generation failed: %r", e, exc_info=e)
            self.stats.end(t0, ok=False)
            await self._store_answer(conversation_id, "".join(text), "failed", None, params)
            raise RequestError("internal error during generation; see the server log",
                               code="internal_error", status=500) from None
        except BaseException:
            # Cancelled (client went away) or the consumer stopped iterating: stop the
            # worker now, before the (awaited) store write below.
            ticket.cancel()
            if done is None:
                self.stats.end(t0, ok=True, cancelled=True)
                # The client went away mid-answer (a stop button gives a Done instead).
                await asyncio.shield(self._store_answer(conversation_id, "".join(text), "interrupted", None,
                                                        params))
            raise
        finally:
            ticket.cancel()  # no-op when finished; stops the worker when we leave early
        if done is not None:
            self.stats.end(t0, ok=True, prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                           ttft_ms=done.ttft_ms, tokens_per_s=done.decode_tokens_per_s,
                           cancelled=done.finish_reason == "cancelled", cached_tokens=done.cached_tokens)
            status = "stopped" if done.finish_reason == "cancelled" else "complete"
            await self._store_answer(conversation_id, done.text, status, done, params)

    async def complete(self, ticket: Ticket, params: SamplingParams, conversation_id: str | None = None) -> Done:
        """Run a queued generation to the end and return its Done (the text is in it)."""
        done: Done | None = None
        async for ev in self.stream(ticket, params, conversation_id):
            if isinstance(ev, Done):
                done = ev
        if done is None:
            raise RequestError("the generation ended without a result", code="engine_error", status=500)
        return done

    async def _store_answer(self, conversation_id: str | None, text: str, status: str, done: Done | None,
                            params: SamplingParams) -> None:
        if conversation_id is None:
            return
        kwargs: dict[str, Any] = {"status": status, "model": self.model_name, "params": _params_dict(params)}
        if done is not None:
            kwargs.update(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                          ttft_ms=round(done.ttft_ms, 2), duration_ms=round(done.total_ms, 2))
        await asyncio.to_thread(self.store.add_message, conversation_id, "assistant", text, **kwargs)

    # -- tokenizer ----------------------------------------------------------------
    def load_tokenizer(self) -> Any:
        """Load the BPE tokenizer once (blocking, ~0.4 s) and hand it to the engine."""
        with self._tokenizer_lock:
            if self._tokenizer is None:
                if self._tokenizer_factory is None:
                    raise RequestError("no tokenizer is available on this server", code="not_available",
                                       status=404)
                try:
                    self._tokenizer = self._tokenizer_factory()
                except (ValueError, OSError) as e:
                    raise RequestError(f"the built-in tokenizer cannot read this model: {e}",
                                       code="tokenizer_unsupported", status=422) from None
                if self.engine is not None:
                    self.engine.tokenizer = self._tokenizer
        return self._tokenizer

    async def tokenizer(self) -> Any:
        if self._tokenizer is not None:
            return self._tokenizer
        return await asyncio.to_thread(self.load_tokenizer)

    # -- embeddings ---------------------------------------------------------------
    def _load_embedder(self) -> Any:
        with self._embedder_lock:
            if self._embedder is None:
                if self._embedder_factory is None:
                    raise RequestError("embeddings are not enabled on this server", code="not_available",
                                       status=404)
                try:
                    self._embedder = self._embedder_factory()
                except RequestError:
                    raise
                except Exception as e:  # the model store could not fetch it, a bad file, ...
                    raise RequestError(f"the embeddings model is not available: {e}", code="model_error",
                                       status=503) from None
        return self._embedder

    async def embedder(self) -> Any:
        """The embeddings engine, loaded (once) on first use."""
        if self._embedder is not None:
            return self._embedder
        return await asyncio.to_thread(self._load_embedder)


def _params_dict(p: SamplingParams) -> dict:
    return {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "min_p": p.min_p,
            "repeat_penalty": p.repeat_penalty, "seed": p.seed, "max_tokens": p.max_tokens, "stop": list(p.stop)}


def _window(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The newest messages within the conversation limits (the engine then fits tokens)."""
    out: list[dict[str, str]] = []
    chars = 0
    for m in reversed(messages):
        if len(out) >= limits.MAX_MESSAGES or chars + len(m["content"]) > limits.MAX_CONVERSATION_CHARS:
            break
        out.append(m)
        chars += len(m["content"])
    out.reverse()
    return out or messages[-1:]
