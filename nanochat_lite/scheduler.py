"""The scheduler: requests enter a queue, one worker thread owns the engine.

Requests are served first come, first served. Each request gets a `Ticket`: the
event loop reads the engine's events from it without blocking, and `cancel()` stops
the request within one token (or drops it from the queue if it has not started).
A later batching scheduler can replace this one behind the same `submit` call.

Not handled here: HTTP, validation, statistics (the server does those).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .engine import Delta, Done, EngineError, SamplingParams


class EngineLike(Protocol):
    name: str
    n_ctx: int

    def generate(self, messages: Sequence[dict[str, str]], params: SamplingParams,
                 cancel: threading.Event | None = None) -> Any: ...


class Ticket:
    """One request's place in the queue and its stream of events."""

    def __init__(self, messages: list[dict[str, str]], params: SamplingParams,
                 loop: asyncio.AbstractEventLoop, cancel: threading.Event | None = None) -> None:
        self.messages = messages
        self.params = params
        self.cancelled = cancel or threading.Event()
        self._loop = loop
        self._events: asyncio.Queue[Delta | Done | BaseException] = asyncio.Queue()
        self.started = False

    def cancel(self) -> None:
        self.cancelled.set()

    def _put(self, item: Delta | Done | BaseException) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    async def events(self):
        """Async iterator over Delta events, ending with Done; raises the engine's error."""
        while True:
            item = await self._events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Done):
                return


class Scheduler:
    def __init__(self, engine: EngineLike, *, on_start: Callable[[Ticket], None] | None = None) -> None:
        self.engine = engine
        self._queue: collections.deque[Ticket] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self.active = 0
        self._on_start = on_start
        self._thread = threading.Thread(target=self._run, name="nanochat-engine", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, messages: list[dict[str, str]], params: SamplingParams,
               cancel: threading.Event | None = None) -> Ticket:
        """Queue a request; setting `cancel` (or ticket.cancel()) stops it within one token."""
        ticket = Ticket(messages, params, asyncio.get_running_loop(), cancel)
        with self._cv:
            self._queue.append(ticket)
            self._cv.notify()
        return ticket

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            for t in self._queue:
                t.cancel()
            self._cv.notify_all()

    def _run(self) -> None:
        warm_up = getattr(self.engine, "warm_up", None)
        if warm_up is not None and not getattr(self.engine, "warmed", False):
            try:
                warm_up()
            except Exception:  # an optimisation only; requests still work without it
                pass
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._queue:
                    return
                ticket = self._queue.popleft()
                self.active = 1
            try:
                ticket.started = True
                if self._on_start:
                    self._on_start(ticket)
                for event in self.engine.generate(ticket.messages, ticket.params, ticket.cancelled):
                    ticket._put(event)
            except EngineError as e:
                ticket._put(e)
            except Exception as e:  # a bug: report it to the request, keep serving others
                ticket._put(e)
            finally:
                with self._cv:
                    self.active = 0
