"""The scheduler: the one owner of the engine. A fair queue in front of its slots.

Requests are served first come, first served, at most `parallel` at once (one per
engine slot; llama.cpp batches the running ones together). Past `max_queue` waiting
requests, `submit` raises `QueueFull` at once, before the caller stores anything.

Each running request has a slot, chosen here: the idle slot whose cached tokens share
the longest start with the new prompt (so a conversation's next turn reuses its
cache), else the least recently used one. The KV cache is one pool shared by all
slots; before a request starts, idle slots' caches are erased (oldest first) until
the pool has room for its prompt and answer.

At start-up the shared start of every conversation (the template's system prefix)
is evaluated once in one slot, saved, and restored into the others, so the first
wave of simultaneous chats does not prefill it once per slot.

Prompts are prefilled adaptively (`_prefill`): while other slots stream, a long prompt
goes into its slot in small pieces sized from the measured time of the last piece
(FAIR_PIECE_S each), so the others get a token between two pieces; alone, it goes in
the engine's large batches, which is as fast as llama.cpp gets.

Each request gets a `Ticket`: the event loop reads the engine's events from it
without blocking, and `cancel()` stops the request within one token, or drops it
from the queue if it has not started. Not handled here: HTTP, validation, stats.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from ..generation import Delta, Done, EngineError, Prepared, SamplingParams

log = logging.getLogger("nanochat_lite")

PREFIX_FILE = "shared-prefix.bin"
PREFIX_AFTER_IDLE_S = 0.3  # seconds without requests before the shared prefix is computed
CLOSE_WAIT_S = 10.0  # close() waits this long, at most, for running engine calls to end
# While others stream, one prefill piece should take about this long: their token gap is
# one piece plus one decode step (bound: 1 s on a loaded 2-core machine).
FAIR_PIECE_S = 0.25
MIN_PIECE = 16  # tokens: smaller pieces cost more in per-request overhead than they save


class QueueFull(EngineError):
    code = "server_busy"


class QueueTimeout(EngineError):
    """The request waited `max_queue_wait` seconds without getting a slot (HTTP 503)."""

    code = "queue_timeout"
    status = 503


class EngineLike(Protocol):
    """What the scheduler needs of an engine (the real one, or a test's fake)."""

    name: str
    n_ctx: int
    kv_size: int
    parallel: int
    threads: int
    kv_cache_bytes: int | None

    def run(self, prep: Prepared, params: SamplingParams, *, emit: Callable[[Delta | Done], None],
            cancel: threading.Event | None = None, slot: int = -1) -> Done: ...

    def erase_slot(self, slot: int) -> None: ...


class PrefixEngine(EngineLike, Protocol):
    """An engine that can fill, save and restore slots (for the shared prefix)."""

    def fill_slot(self, slot: int, tokens: list[int]) -> None: ...

    def save_slot(self, slot: int, name: str) -> None: ...

    def restore_slot(self, slot: int, name: str) -> None: ...


class PiecewiseEngine(PrefixEngine, Protocol):
    """An engine whose batch is large (fast alone) and that can take a prompt in pieces."""

    batch: int  # tokens llama.cpp evaluates at once: the prefill piece when alone
    fair_batch: int  # the first piece while others stream (then sized by FAIR_PIECE_S)


class Ticket:
    """One request's place in the queue and its stream of events."""

    def __init__(self, prepared: Prepared, params: SamplingParams, loop: asyncio.AbstractEventLoop,
                 scheduler: "Scheduler", cancel: threading.Event | None = None) -> None:
        self.prepared = prepared
        self.params = params
        self.cancelled = cancel or threading.Event()
        self.started = False
        self.finished = False
        self._loop = loop
        self._scheduler = scheduler
        self._events: asyncio.Queue[Delta | Done | BaseException] = asyncio.Queue()

    def cancel(self) -> None:
        """Stop within one token; a request still queued leaves the queue now."""
        self.cancelled.set()
        self._scheduler._drop(self)

    def _put(self, item: Delta | Done | BaseException) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    async def events(self) -> AsyncIterator[Delta | Done]:
        """Async iterator over Delta events, ending with Done; raises the engine's error."""
        while True:
            item = await self._events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Done):
                return


@dataclass
class _Slot:
    id: int
    tokens: list[int] = field(default_factory=list)  # a prefix of what its cache holds
    cached: int = 0  # tokens its cache holds (prompt + answer), for the pool's accounting
    reserved: int = 0  # while running: prompt + the most the answer may add
    ticket: Ticket | None = None
    busy: bool = False  # running a request, or being filled/erased
    prefilling: bool = False  # its prompt goes in by pieces: not streaming yet
    erase: bool = False  # its cache must be erased before the next request starts
    last_used: float = 0.0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the shared start of two token lists. common_prefix([1, 2, 3], [1, 2, 4]) -> 2."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def next_piece(size: int, elapsed: float, big: int) -> int:
    """The next prefill piece while others stream: what takes FAIR_PIECE_S at the rate the
    last piece (`size` tokens in `elapsed` s, the others' decode step included) went."""
    if elapsed <= 0:
        return big
    return max(MIN_PIECE, min(big, int(size * FAIR_PIECE_S / elapsed)))


def _cancelled_done(ticket: Ticket) -> Done:
    return Done(text="", finish_reason="cancelled", prompt_tokens=len(ticket.prepared.tokens),
                completion_tokens=0, dropped_messages=ticket.prepared.dropped, ttft_ms=0.0, total_ms=0.0,
                decode_tokens_per_s=0.0, seed=ticket.params.seed or 0)


class Scheduler:
    def __init__(self, engine: EngineLike, *, max_queue: int = 64,
                 shared_prefix: Callable[[], list[int]] | None = None, max_queue_wait: float | None = None) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.max_queue_wait = max_queue_wait or None  # seconds in the queue before QueueTimeout; None: no limit
        self._slots = [_Slot(i) for i in range(max(1, engine.parallel))]
        self._queue: collections.deque[Ticket] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self.prefix_tokens = 0  # shared-prefix tokens restored into every slot
        self._threads = [threading.Thread(target=self._work, args=(slot,), name=f"nanochat-slot-{slot.id}",
                                          daemon=True) for slot in self._slots]
        if shared_prefix is not None or hasattr(engine, "release_unused_memory"):
            self._threads.append(threading.Thread(target=self._when_idle, args=(shared_prefix,),
                                                  name="nanochat-prefix", daemon=True))
        for t in self._threads:
            t.start()

    # -- what the server reads ----------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def active(self) -> int:
        """Requests generating now (slots in use by requests)."""
        return sum(1 for s in self._slots if s.ticket is not None)

    @property
    def slots(self) -> int:
        return len(self._slots)

    def info(self) -> dict[str, Any]:
        """Slots, queue and cache figures (for /api/stats and /api/health)."""
        eng = self.engine
        info: dict[str, Any] = {
            "slots": self.slots, "slots_in_use": self.active, "queued": self.queued, "max_queue": self.max_queue,
            "ctx_size": eng.n_ctx, "kv_size": eng.kv_size, "kv_cache_bytes": eng.kv_cache_bytes,
            "kv_type": getattr(eng, "kv_type", None),
            # resident pages nothing had written, given back once idle: mostly the KV cache's
            # (also llama.cpp's other load-time buffers'); they return as conversations write them
            "kv_released_bytes": getattr(eng, "kv_released_bytes", None),
            "shared_prefix_tokens": self.prefix_tokens, "threads": eng.threads}
        health = getattr(eng, "health", None)
        if health is not None:  # a remote engine (remote.py): its upstream, not a cache here
            info.update(ctx_size=eng.n_ctx or None, kv_size=None, kv_type=None, threads=None, upstream=health())
        return info

    # -- requests -----------------------------------------------------------------
    def submit(self, prepared: Prepared, params: SamplingParams, cancel: threading.Event | None = None,
               loop: asyncio.AbstractEventLoop | None = None) -> Ticket:
        """Queue a request, or raise QueueFull when `max_queue` requests already wait."""
        ticket = Ticket(prepared, params, loop or asyncio.get_running_loop(), self, cancel)
        with self._cv:
            if self._stopping:
                raise EngineError("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are already waiting (the limit is "
                                f"{self.max_queue}); retry in a few seconds")
            self._queue.append(ticket)
            self._dispatch()
        if self.max_queue_wait is not None and not ticket.started:
            # A timer on the ticket's loop, so a request at the back of a stalled queue
            # hears back on time even when no slot frees up to run _dispatch.
            ticket._loop.call_soon_threadsafe(ticket._loop.call_later, self.max_queue_wait, self._expire, ticket)
        return ticket

    def _expire(self, ticket: Ticket) -> None:
        with self._cv:
            try:
                self._queue.remove(ticket)
            except ValueError:
                return  # started, cancelled or finished in time
            self._dispatch()
        ticket.finished = True
        ticket._put(QueueTimeout(f"the request waited {self.max_queue_wait:g} s for a free slot; "
                                 "the server is overloaded, retry later"))

    def _drop(self, ticket: Ticket) -> None:
        with self._cv:
            try:
                self._queue.remove(ticket)
            except ValueError:
                return  # running (it sees the cancel flag) or already finished
            self._dispatch()  # a place at the head may have opened
        ticket.finished = True
        ticket._put(_cancelled_done(ticket))

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Cancel what runs and waits, refuse new requests, and wait (up to `wait_s`) for
        the threads that call the engine to end: closing the engine under a running call
        crashed the process (a SIGTERM during the shared-prefix copy: exit 134/139)."""
        with self._cv:
            self._stopping = True
            waiting = list(self._queue)
            self._queue.clear()
            for s in self._slots:
                if s.ticket is not None:
                    s.ticket.cancelled.set()
            self._cv.notify_all()
        for t in waiting:
            t.cancelled.set()
            t._put(_cancelled_done(t))
        deadline = time.monotonic() + wait_s
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    # -- slot choice (callers hold self._cv) ---------------------------------------
    def _dispatch(self) -> None:
        """Start queued requests, in order, while an idle slot and room in the pool exist."""
        while self._queue:
            idle = [s for s in self._slots if not s.busy]
            if not idle:
                return
            ticket = self._queue[0]
            tokens = ticket.prepared.tokens
            slot = max(idle, key=lambda s: (common_prefix(s.tokens, tokens), -s.last_used))
            need = len(tokens) + ticket.prepared.max_new
            if not self._make_room(slot, need):
                return  # running requests hold the pool; wait for one to end (keeps FIFO order)
            self._queue.popleft()
            slot.busy, slot.ticket, slot.reserved = True, ticket, need
            self._cv.notify_all()

    def _make_room(self, chosen: _Slot, need: int) -> bool:
        """True when `need` tokens fit the pool beside the others' use, after marking
        idle slots' caches for erasure (least recently used first)."""
        pool = self.engine.kv_size
        running = sum(s.reserved for s in self._slots if s.ticket is not None)
        if running + need > pool:
            return False
        idle = sorted((s for s in self._slots if not s.busy and s is not chosen and s.cached),
                      key=lambda s: s.last_used)
        used = running + sum(s.cached for s in self._slots if s.ticket is None and s is not chosen)
        for s in idle:
            if used + need <= pool:
                break
            used -= s.cached
            s.tokens, s.cached, s.erase = [], 0, True  # erased by the chosen slot's worker
        return used + need <= pool

    # -- workers ------------------------------------------------------------------
    def _work(self, slot: _Slot) -> None:
        while True:
            with self._cv:
                while slot.ticket is None and not self._stopping:
                    self._cv.wait()
                if slot.ticket is None:
                    return
                ticket = slot.ticket
                erase = [s for s in self._slots if s.erase]
                for s in erase:
                    s.erase, s.busy = False, True
            for s in erase:
                self._erase(s)
            ticket.started = True
            done: Done | None = None
            try:
                self._prefill(slot, ticket)
                done = self.engine.run(ticket.prepared, ticket.params, emit=ticket._put, cancel=ticket.cancelled,
                                       slot=slot.id)
            except EngineError as e:
                ticket._put(e)
            except Exception as e:  # a bug: report it to the request, keep serving others
                log.error("generation failed in slot %d: %r", slot.id, e, exc_info=e)
                ticket._put(e)
            finally:
                ticket.finished = True
                with self._cv:
                    slot.tokens = list(ticket.prepared.tokens)
                    slot.cached = len(slot.tokens) + (done.completion_tokens if done else ticket.prepared.max_new)
                    slot.ticket, slot.busy, slot.reserved = None, False, 0
                    slot.last_used = time.monotonic()
                    self._dispatch()

    def _prefill(self, slot: _Slot, ticket: Ticket) -> None:
        """Evaluate a long prompt into the slot's cache piece by piece, so `run` only has
        its last tokens left. Alone, the pieces are the engine's batch (big: fastest); while
        another slot streams, they shrink to what takes ~FAIR_PIECE_S at the measured rate,
        so no stream waits for a whole big batch between two of its tokens. Checked before
        every piece: a stream that starts or ends changes the next piece's size."""
        engine = self.engine
        fair = getattr(engine, "fair_batch", 0)
        if not fair or not hasattr(engine, "fill_slot"):
            return  # a remote or fake engine: it prefills the prompt in `run`
        big = cast(PiecewiseEngine, engine).batch
        if big <= fair:
            return  # small batches anyway: the engine's own chunks are the pieces
        tokens = ticket.prepared.tokens
        done = common_prefix(slot.tokens, tokens)
        piece = fair
        slot.prefilling = True
        try:
            while not ticket.cancelled.is_set() and not self._stopping:
                contended = self._others_streaming(slot)
                size = piece if contended else big
                if len(tokens) - done <= size:
                    return  # the rest goes in with the answer's request
                t0 = time.perf_counter()
                cast(PiecewiseEngine, engine).fill_slot(slot.id, tokens[:done + size])
                elapsed = time.perf_counter() - t0
                done += size
                if contended:
                    piece = next_piece(size, elapsed, big)
        finally:
            slot.prefilling = False

    def _others_streaming(self, me: _Slot) -> bool:
        return any(s is not me and s.ticket is not None and not s.prefilling for s in self._slots)

    def _erase(self, slot: _Slot) -> None:
        try:
            self.engine.erase_slot(slot.id)
        except Exception as e:  # the pool then overflows into an engine error, reported per request
            log.warning("could not erase slot %d: %r", slot.id, e)
        with self._cv:
            slot.busy = False
            self._dispatch()

    def _when_idle(self, shared_prefix: Callable[[], list[int]] | None) -> None:
        """Once the server is first idle (PREFIX_AFTER_IDLE_S without requests: at start-up
        the first request must not share the engine with this work, measured: it delayed
        the first token): the shared prefix, then the KV pages nothing wrote go back."""
        self._wait_idle(PREFIX_AFTER_IDLE_S)
        if shared_prefix is not None and not self._stopping:
            self._share_prefix(shared_prefix)
        release = getattr(self.engine, "release_unused_memory", None)
        if release is not None and not self._stopping:
            self._release_pages(release)

    def _release_pages(self, release: Callable[[], int]) -> None:
        """Run `release` with every slot held, so the engine computes nothing meanwhile
        (engines/kv_pages.py drops only pages nothing writes). A request that takes a
        slot first makes it wait for the next idle moment."""
        for _ in range(100):
            held = [s for s in (self._claim_idle() for _ in self._slots) if s is not None]
            try:
                if len(held) == len(self._slots):
                    try:
                        dropped = release()
                        log.info("gave back %.1f MB of never-used KV cache pages", dropped / (1 << 20))
                    except Exception as e:  # memory only: requests work without it
                        log.warning("could not give back unused KV cache pages: %r", e)
                    return
            finally:
                with self._cv:
                    for s in held:
                        s.busy = False
                    self._dispatch()
            self._wait_idle(PREFIX_AFTER_IDLE_S)
            if self._stopping:
                return

    def _share_prefix(self, shared_prefix: Callable[[], list[int]]) -> None:
        """Evaluate the shared prefix in one idle slot, then copy it into the others."""
        engine = cast(PrefixEngine, self.engine)  # only given shared_prefix with such an engine
        try:
            tokens = shared_prefix()
            if not tokens:
                return
            first = self._claim_idle()
            if first is None:
                return
            try:
                engine.fill_slot(first.id, tokens)
                engine.save_slot(first.id, PREFIX_FILE)
                self._release(first, tokens)
            except BaseException:
                self._release(first, [])
                raise
            for _ in range(len(self._slots) - 1):
                slot = self._claim_idle(empty_only=True)
                if slot is None:
                    break
                try:
                    engine.restore_slot(slot.id, PREFIX_FILE)
                    self._release(slot, tokens)
                except BaseException:
                    self._release(slot, [])
                    raise
            self.prefix_tokens = len(tokens)
        except Exception as e:  # an optimisation only: requests work without it
            log.warning("could not share the prompt prefix between slots: %r", e)

    def _wait_idle(self, quiet_s: float) -> None:
        idle_since = time.monotonic()
        while not self._stopping:
            now = time.monotonic()
            if self._queue or any(s.ticket is not None for s in self._slots):
                idle_since = now
            elif now - idle_since >= quiet_s:
                return
            time.sleep(0.05)

    def _claim_idle(self, *, empty_only: bool = False) -> _Slot | None:
        with self._cv:
            if self._stopping:
                return None
            for s in self._slots:
                if not s.busy and not (empty_only and s.tokens):
                    s.busy = True
                    return s
        return None

    def _release(self, slot: _Slot, tokens: list[int]) -> None:
        with self._cv:
            slot.tokens, slot.cached, slot.busy = list(tokens), len(tokens) + 1, False
            self._dispatch()
