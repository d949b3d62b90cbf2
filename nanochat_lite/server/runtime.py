"""What the routes share: load state, scheduler, store, stats, and one chat turn.

A chat turn is the same whichever door it came through (`/api/chat`, `/ws`):
validate, find or create the conversation, check the new message fits the context,
store it (acknowledged from here on), queue it, stream the engine's events, store
the answer (complete, stopped or failed). The routes only translate events into
their wire format.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..engine import Delta, Done, EngineError, SamplingParams
from ..history import ConversationStore
from ..scheduler import Scheduler
from . import limits
from .limits import RequestError
from .schemas import ChatRequest
from .stats import Stats

log = logging.getLogger("nanochat_lite")


@dataclass
class Turn:
    conversation_id: str
    messages: list[dict[str, str]]
    params: SamplingParams


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
    def set_engine(self, engine: Any) -> None:
        self.engine = engine
        if self._tokenizer is not None:
            engine.tokenizer = self._tokenizer
        self.model_name = engine.name
        self.scheduler = Scheduler(engine)
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

    # -- a chat turn --------------------------------------------------------------
    async def begin_turn(self, req: ChatRequest) -> Turn:
        """Validate, fit-check and store the user's message. Raises RequestError."""
        self.require_ready()
        limits.check_message(req.message)
        limits.check_system(req.system)
        limits.check_id(req.conversation_id)
        params = limits.sampling(self.defaults, **req.sampling_kwargs())
        return await asyncio.to_thread(self._begin_turn_sync, req, params)

    def _begin_turn_sync(self, req: ChatRequest, params: SamplingParams) -> Turn:
        store = self.store
        if req.conversation_id is not None:
            conv = store.get(req.conversation_id)
            if conv is None:
                raise RequestError(f"no conversation with id {req.conversation_id!r}",
                                   code="conversation_not_found", status=404, param="conversation_id")
            system = (req.system or None) if req.system is not None else conv.system
            history = [m for m in store.messages(conv.id) if m.status != "failed" and m.content]
        else:
            conv = None
            system = req.system or None
            history = []
        # Reject a message that cannot fit on its own before anything is stored.
        alone = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": req.message}]
        try:
            self.engine.prepare(alone, params)
        except EngineError as e:
            raise RequestError(str(e), code=e.code) from None
        if conv is None:
            conv = store.create(system=system)
        elif system != conv.system:
            store.set_system(conv.id, system)
        store.add_message(conv.id, "user", req.message, params=_params_dict(params))
        messages = [{"role": m.role, "content": m.content} for m in history if m.role in ("user", "assistant")]
        messages.append({"role": "user", "content": req.message})
        messages = _window(messages)
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return Turn(conv.id, messages, params)

    async def stream(self, messages: list[dict[str, str]], params: SamplingParams,
                     conversation_id: str | None = None,
                     stop: threading.Event | None = None) -> AsyncIterator[Delta | Done]:
        """Queue a generation and yield its events; stores the answer when given a conversation.

        Setting `stop` ends the generation within one token with a Done whose
        finish_reason is "cancelled". Closing this iterator early (client gone) cancels
        it too.
        """
        scheduler = self.require_ready()
        t0 = self.stats.begin()
        ticket = scheduler.submit(messages, params, stop)
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
                           cancelled=done.finish_reason == "cancelled")
            status = "stopped" if done.finish_reason == "cancelled" else "complete"
            await self._store_answer(conversation_id, done.text, status, done, params)

    async def complete(self, messages: list[dict[str, str]], params: SamplingParams,
                       conversation_id: str | None = None) -> Done:
        """Run a generation to the end and return its Done (the text is in it)."""
        done: Done | None = None
        async for ev in self.stream(messages, params, conversation_id):
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
