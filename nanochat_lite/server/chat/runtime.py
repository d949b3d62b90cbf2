"""The server's life cycle: what the routes share, and whether it is ready.

`Runtime` holds the conversation store, the stats, the default sampling parameters,
the answers being streamed (answers.py: resumable, saved as they stream), the token
ledger (guards/quotas.py: reservations and usage per owner and day), and — once
the start-up code has loaded the model — the scheduler (the only owner of the engine) and the prompt builder (template + tokenizer, safe from any thread). The
routes never touch the engine. The tokenizer and the embeddings model load lazily,
each once, through one `Lazy` helper.

Not here: a chat turn (turns.py), wire shapes (frames.py, errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from ...documents.service import DocumentService
from ...generation import Prepared, SamplingParams
from ...history import Store
from ...redact import redact_paths
from ..guards.quotas import Ledger
from ..observe.stats import Stats
from ..wire import limits
from ..wire.errors import RETRY_BUSY_S, RETRY_LOADING_S, RequestError
from .answers import DEFAULT_RESUME_WINDOW_S, Answers
from .models import Loaded, Registry, not_found

T = TypeVar("T")


class Prompter(Protocol):
    """Builds prompts (token ids, fitted to the context) from messages, text or ids.
    Safe to call from any thread; raises engine.ContextOverflow / EngineError."""

    name: str
    n_vocab: int | None
    n_ctx: int  # tokens one conversation's context holds; 0: unknown (a remote engine that did not say)

    def prepare(self, messages: Sequence[dict[str, str]], params: SamplingParams) -> Prepared: ...

    def prepare_text(self, text: str, params: SamplingParams) -> Prepared: ...

    def prepare_tokens(self, tokens: Sequence[int], params: SamplingParams) -> Prepared: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def use_tokenizer(self, tokenizer: Any) -> None: ...


class SchedulerLike(Protocol):
    """What the runtime needs of the scheduler (scheduler.Scheduler, or a test's)."""

    max_queue: int

    @property
    def queued(self) -> int: ...

    @property
    def active(self) -> int: ...

    @property
    def slots(self) -> int: ...

    def submit(self, prepared: Prepared, params: SamplingParams, cancel: threading.Event | None = None,
               loop: asyncio.AbstractEventLoop | None = None) -> Any: ...

    def info(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Lazy(Generic[T]):
    """A value made once, on first use, by a blocking factory (run off the loop)."""

    def __init__(self, factory: Callable[[], T] | None, *, missing: RequestError,
                 failed: Callable[[Exception], RequestError]) -> None:
        self._factory = factory
        self._missing = missing  # raised when there is no factory
        self._failed = failed  # turns the factory's exception into the client's error
        self._value: T | None = None
        self._lock = threading.Lock()

    @property
    def value(self) -> T | None:
        """The value if it has been made, else None (never blocks)."""
        return self._value

    def get(self) -> T:
        """The value, made now if needed (blocking)."""
        with self._lock:
            if self._value is None:
                if self._factory is None:
                    raise self._missing
                try:
                    self._value = self._factory()
                except RequestError:
                    raise
                except Exception as e:
                    raise self._failed(e) from None
            return self._value

    def like(self, factory: Callable[[], T] | None) -> Lazy[T]:
        """Another Lazy with this one's errors, made by `factory` (another model's tokenizer)."""
        return Lazy(factory, missing=self._missing, failed=self._failed)

    async def aget(self) -> T:
        if self._value is not None:
            return self._value
        return await asyncio.to_thread(self.get)


class BoundedLock:
    """An asyncio lock with a bounded line: past `max_waiters` waiting, entering raises
    RequestError 503 `server_busy` at once instead of joining the line."""

    def __init__(self, max_waiters: int) -> None:
        self._lock = asyncio.Lock()
        self._max_waiters = max_waiters
        self.waiting = 0

    async def __aenter__(self) -> None:
        if self._lock.locked() and self.waiting >= self._max_waiters:
            raise RequestError(f"{self.waiting} embedding requests are already waiting (the limit is "
                               f"{self._max_waiters}); retry in a few seconds", code="server_busy", status=503,
                               retry_after=RETRY_BUSY_S)
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


class Runtime:
    def __init__(self, *, store: Store, model_name: str, startup_ms: float | None = None,
                 defaults: SamplingParams | None = None, embedder_factory: Callable[[], Any] | None = None,
                 tokenizer_factory: Callable[[], Any] | None = None,
                 resume_window_s: float = DEFAULT_RESUME_WINDOW_S) -> None:
        self.store = store
        self.model_name = model_name
        self.state = "loading"  # -> "ready" | "error"
        self.error: str | None = None
        self.scheduler: SchedulerLike | None = None
        self.prompts: Prompter | None = None
        # The models served (start-up sets it; None: one model, attached as it is). The
        # scheduler and prompts above are then the default model's, as first loaded.
        self.registry: Registry | None = None
        self.stats = Stats(startup_ms)
        self.defaults = defaults or SamplingParams()
        self.ledger = Ledger(store)
        self.answers = Answers(store, self.stats, self.ledger, resume_window_s=resume_window_s)
        try:  # answers a crashed server left 'streaming' are over: keep their text, mark them
            store.interrupt_streaming()
        except Exception as e:  # a locked database: requests will say so; serve anyway
            logging.getLogger("nanochat_lite").warning("could not mark unfinished answers interrupted: %s", e)
        self.embed_lock = BoundedLock(limits.MAX_EMBED_WAITERS)  # one embedding batch at a time
        self.documents: DocumentService | None = None  # the app sets it when documents are on
        self.embedder_cache: Lazy[Any] = Lazy(
            embedder_factory,
            missing=RequestError("embeddings are not enabled on this server", code="not_available", status=404),
            failed=lambda e: RequestError(f"the embeddings model is not available: {redact_paths(str(e))}",
                                          code="model_error",
                                          status=503))
        self.tokenizer_cache: Lazy[Any] = Lazy(
            tokenizer_factory,
            missing=RequestError("no tokenizer is available on this server", code="not_available", status=404),
            failed=lambda e: RequestError(f"the built-in tokenizer cannot read this model: {redact_paths(str(e))}",
                                          code="tokenizer_unsupported", status=422))

    # -- life cycle ---------------------------------------------------------------
    def attach(self, scheduler: SchedulerLike, prompts: Prompter) -> None:
        """The model is loaded: serve with this scheduler (which owns the engine) and
        this prompt builder."""
        self.prompts = prompts
        tokenizer = self.tokenizer_cache.value
        if tokenizer is not None:
            prompts.use_tokenizer(tokenizer)
        self.model_name = prompts.name
        self.scheduler = scheduler
        self.state = "ready"

    def set_error(self, message: str) -> None:
        self.error = message
        self.state = "error"

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close()
        elif self.scheduler:
            self.scheduler.close()
        self.answers.close()
        self.ledger.close()  # after the answers: their last settlements are queued by then

    def require_ready(self) -> tuple[SchedulerLike, Prompter]:
        if self.state != "ready" or self.scheduler is None or self.prompts is None:
            if self.state == "error":
                raise RequestError(f"the model failed to load: {self.error}", code="model_error", status=503)
            raise RequestError("the model is still loading; retry in a moment", code="loading", status=503,
                               retry_after=RETRY_LOADING_S)
        return self.scheduler, self.prompts

    @contextlib.asynccontextmanager
    async def using(self, model: str | None, *, any_name: bool = False,
                    waiting: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> AsyncIterator[Runtime]:
        """This runtime bound to the model named `model` (None: the default), loaded now
        if needed (the request waits; the load runs off the loop): a shallow copy sharing
        the store, stats, ledger and answers, whose scheduler, prompts, tokenizer and
        model_name are that model's. The model is not unloaded while the block runs (after
        it, a queued generation keeps it). `any_name`: a name that matches no model means
        the default when only one is served (OpenAI clients must send some name).
        RequestError: 503 while the server starts (as `require_ready`), 404 unknown.
        `waiting`: while the model loads, called with a `loading` frame every
        LOADING_FRAME_S (the WebSocket sends it: the page shows "loading model…")."""
        self.require_ready()
        reg = self.registry
        if reg is None:
            if model is not None and model != self.model_name and not any_name:
                raise not_found(model, [self.model_name])
            yield self
            return
        if model is not None and any_name and len(reg) == 1:
            model = None
        got = reg.try_acquire(model)
        entry, loaded = got if got is not None else await _load_waiting(reg, model, waiting)
        try:
            yield self._bound(entry.name, loaded)
        finally:
            reg.release(entry)

    def _bound(self, name: str, loaded: Loaded) -> Runtime:
        if loaded.scheduler is self.scheduler:
            return self  # the default model as first loaded: this runtime is it
        if loaded.tokenizer is None:
            loaded.tokenizer = self.tokenizer_cache.like(loaded.tokenizer_factory)
        view = copy.copy(self)
        view.model_name, view.scheduler, view.prompts, view.tokenizer_cache = (
            name, loaded.scheduler, loaded.prompts, loaded.tokenizer)
        return view

    def text_chars(self) -> int:
        """Characters a message (or a whole `/v1` conversation) may have before it is
        tokenized: as many as could fit the context (limits.text_chars), with the
        model's longest token once its tokenizer is loaded. Before the model is
        loaded, the body limit."""
        prompts = self.prompts
        if prompts is None:
            return limits.text_chars(0)
        return limits.text_chars(prompts.n_ctx, getattr(prompts, "token_chars", None))

    def _schedulers(self) -> list[SchedulerLike]:
        if self.registry is not None:
            return [e.loaded.scheduler for e in self.registry.loaded_entries() if e.loaded is not None]
        return [self.scheduler] if self.scheduler is not None else []

    @property
    def generating(self) -> int:
        """Generations running now, over every loaded model."""
        return sum(s.active for s in self._schedulers())

    @property
    def queued(self) -> int:
        return sum(s.queued for s in self._schedulers())

    def engine_info(self) -> dict[str, Any]:
        """Slots and cache figures for /api/stats and /api/health (the default model's,
        while it is loaded)."""
        if self.registry is not None:
            loaded = self.registry.entry(None).loaded
            return loaded.scheduler.info() if loaded is not None else {}
        return self.scheduler.info() if self.scheduler is not None else {}

    # -- lazily loaded parts ------------------------------------------------------
    def load_tokenizer(self) -> Any:
        """Load the BPE tokenizer once (blocking, ~0.4 s) and build prompts with it."""
        tokenizer = self.tokenizer_cache.get()
        if self.prompts is not None:
            self.prompts.use_tokenizer(tokenizer)
        return tokenizer

    async def tokenizer(self) -> Any:
        if self.tokenizer_cache.value is not None:
            return self.tokenizer_cache.value
        return await asyncio.to_thread(self.load_tokenizer)

    async def embedder(self) -> Any:
        """The embeddings engine, loaded (once) on first use."""
        return await self.embedder_cache.aget()


LOADING_FRAME_S = 1.0  # a `loading` frame this often while a request waits for its model


async def _load_waiting(reg: Registry, model: str | None,
                        waiting: Callable[[dict[str, Any]], Awaitable[None]] | None) -> tuple[Any, Loaded]:
    """reg.acquire(model) off the loop, telling `waiting` how long it has taken every
    LOADING_FRAME_S. If `waiting` fails (the client went away), the load goes on and the
    model it acquired is released when it ends."""
    if waiting is None:
        return await asyncio.to_thread(reg.acquire, model)
    entry = reg.entry(model)  # the name and size to show; raises model_not_found before any load
    task = asyncio.ensure_future(asyncio.to_thread(reg.acquire, model))
    started = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=LOADING_FRAME_S)
            if done:
                return task.result()
            await waiting({"type": "loading", "model": entry.spec.name, "size_bytes": entry.spec.size_bytes,
                           "elapsed_ms": round((time.monotonic() - started) * 1000)})
    except BaseException:
        if not task.done():
            task.add_done_callback(lambda t: reg.release(t.result()[0])
                                   if not t.cancelled() and t.exception() is None else None)
        raise
