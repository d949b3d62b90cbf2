"""Answers that outlive their connection: numbered events, resume, saved as they stream.

An `Answer` is the assistant's reply to one chat turn (`/api/chat`, `/ws`). A task of
its own (`_produce`) reads the scheduler ticket's events — not the client's connection
— so a dropped connection does not end it:

- every event gets a number: `start` is seq 0, each token the next, the final `done`
  (or `error`) the last; they are kept in a bounded buffer (MAX_ANSWER_BUFFER_EVENTS
  per answer, MAX_BUFFERED_BYTES_TOTAL in all, oldest dropped first);
- clients `follow` an answer from a seq on: the buffered events after it exactly once,
  then the live ones. Events no longer buffered are replaced by one `snapshot` (the
  text up to a seq). While the prompt is read, a `progress` frame every
  PROGRESS_INTERVAL_S keeps proxies from closing the connection;
- when the last follower leaves without a stop, generation goes on for the resume
  window (`--resume-window`); nobody back in time → cancelled, stored `interrupted`
  (counted as cancelled in the stats). A finished answer stays resumable for the
  window, then is served from the store (`replay`);
- the text is saved as it grows: the assistant row is created `streaming` with the
  user's message, rewritten at most every SAVE_INTERVAL_S, then finalized
  (complete, stopped, interrupted, failed). Saves run in one thread of their own, in
  order; the final one is awaited to the end even when its task is cancelled;
- `drain()` (graceful shutdown) cancels every generation, stores each as interrupted
  and ends its followers with an `error` frame `server_shutdown`.

Every answer has an owner (the API key's name, or 'local'): it is found, followed,
resumed and replayed only by its owner; for anyone else its id answers exactly as an
unknown id does (404 `answer_not_found`). When it ends, its token reservation
(guards/quotas.py) is charged with what it used and settled.

Not here: building the prompt and storing the user's message (turns.py), wire formats
(frames.py; http.py and ws.py write them), who a request is (the doors pass its owner).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ...engines.scheduler import Ticket
from ...generation import Delta, Done, EngineError, SamplingParams
from ...history import Message, NotFound, Store, StoreError
from ..guards.quotas import Ledger, Reservation, tokens_used
from ..observe.stats import Stats
from ..wire import frames
from ..wire.errors import RETRY_STORAGE_S, RequestError, error_frame
from ..wire.limits import MAX_ID_CHARS

log = logging.getLogger("nanochat_lite")

DEFAULT_RESUME_WINDOW_S = 30.0  # --resume-window / NANOCHAT_LITE_RESUME_WINDOW
MAX_RESUME_WINDOW_S = 3600.0
MAX_ANSWER_BUFFER_EVENTS = 2048  # events one answer keeps for resumes (then: a snapshot)
MAX_BUFFERED_BYTES_TOTAL = 32 << 20  # bytes of buffered events over all answers
# The text so far is saved at most this often while tokens arrive: after a crash the
# store holds what was generated up to ~1 s before it (this plus one fsync).
SAVE_INTERVAL_S = 0.5
PROGRESS_INTERVAL_S = 5.0  # a progress frame this often before the first token (proxies: 30-60 s)
DRAIN_TIMEOUT_S = 15.0  # graceful shutdown waits this long for generations to end and be stored


class Answer:
    """One answer's state: its numbered frames, its text so far and who follows it."""

    def __init__(self, *, answer_id: str, conversation_id: str, message_id: int, model: str,
                 client_id: str | None, owner: str, ticket: Ticket, params: SamplingParams,
                 started: float, resumable: bool, reservation: Reservation | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.id = answer_id
        self.conversation_id = conversation_id
        self.message_id = message_id  # the assistant row, created 'streaming'
        self.model = model
        self.client_id = client_id
        self.owner = owner
        self.reservation = reservation
        # Fields the final frame carries besides the text (a grounded answer's citations).
        self.extra = extra or {}
        self.ticket = ticket
        self.params = params
        self.started = started  # time.perf_counter() when the request arrived
        self.resumable = resumable  # False: a plain JSON request, cancelled when its client leaves
        self.frames: collections.deque[tuple[int, dict[str, Any], int]] = collections.deque()  # (seq, frame, bytes)
        self.last_seq = -1
        self.text_parts: list[str] = []  # token seq k carries text_parts[k - 1]
        self.done: Done | None = None
        self.error: RequestError | None = None  # the final error, when it ended with one
        self.status = "streaming"
        self.finished = False
        self.followers = 0
        self.user_stopped = False
        self.abandoned = False  # cancelled because nobody came back (or the server stops)
        self.shutdown = False
        self.task: asyncio.Task[None] | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self._changed = asyncio.Event()
        self._saved_at = time.monotonic()
        self._saving = False

    @property
    def n_tokens(self) -> int:
        return len(self.text_parts)

    def text_upto(self, seq: int) -> str:
        """The answer's text after the events up to `seq` (0: start, "")."""
        return "".join(self.text_parts[:max(0, seq)])

    def stop(self) -> None:
        """The user's stop: ends within one token, stored as `stopped`."""
        self.user_stopped = True
        self.ticket.cancel()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class Answers:
    """The live and recently finished answers of one server, by id."""

    def __init__(self, store: Store, stats: Stats, ledger: Ledger | None = None, *,
                 resume_window_s: float = DEFAULT_RESUME_WINDOW_S) -> None:
        self._store = store
        self._stats = stats
        self._own_ledger = ledger is None  # made here (tests): closed here
        self._ledger = ledger or Ledger(store)
        self.resume_window_s = resume_window_s
        self.closing = False  # graceful shutdown has begun
        self._by_id: dict[str, Answer] = {}
        self._bytes = 0
        # Open WebSockets' shutdown callbacks: a final error frame, then close code 1012.
        self.sockets: set[Callable[[], Awaitable[None]]] = set()
        # One writer thread for every save: saves reach the store in the order they were
        # made, and a locked database holds one thread, not the loop's shared pool.
        self._saver = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="nanochat-save")

    # -- what the doors call ---------------------------------------------------------
    def start(self, *, answer_id: str, conversation_id: str, message_id: int, model: str, client_id: str | None,
              owner: str, ticket: Ticket, params: SamplingParams, started: float,
              resumable: bool = True, reservation: Reservation | None = None,
              extra: dict[str, Any] | None = None) -> Answer:
        """Take over a queued generation whose user and assistant rows are stored (and
        settle its token reservation when it ends)."""
        a = Answer(answer_id=answer_id, conversation_id=conversation_id, message_id=message_id,
                   model=model, client_id=client_id, owner=owner, ticket=ticket,
                   params=params, started=started, resumable=resumable, reservation=reservation, extra=extra)
        self._by_id[answer_id] = a
        self._push(a, frames.start_frame(conversation_id, a.model, answer_id=answer_id, client_id=client_id))
        a.task = asyncio.get_running_loop().create_task(self._produce(a), name=f"answer-{answer_id}")
        if self.closing:  # the signal came while this turn was being stored
            self._cancel_for_shutdown(a)
        return a

    def find(self, answer_id: str, owner: str) -> Answer | None:
        """`owner`'s answer in memory (None: not, or no longer). Another owner's is None
        too: the caller then looks in the store (`replay`), which answers 404
        `answer_not_found` for it, exactly as for an id that never existed."""
        a = self._by_id.get(answer_id)
        return a if a is not None and a.owner == owner else None

    async def follow(self, a: Answer, after: int = -1) -> AsyncIterator[dict[str, Any]]:
        """The answer's frames with seq > `after`, each once, then the live ones, until
        the final frame. Leaving early (the client is gone) starts the resume window."""
        self.check_after(a, after)
        after = max(after, -1)
        a.followers += 1
        if a.expiry is not None:
            a.expiry.cancel()
            a.expiry = None
        try:
            pos = after
            while True:
                changed = a._changed
                while a.frames and pos < a.last_seq:
                    base = a.frames[0][0]
                    if pos + 1 < base:  # those events were dropped from the buffer
                        pos = base - 1
                        yield frames.snapshot_frame(a.id, pos, a.text_upto(pos))
                        continue
                    seq, frame, _ = a.frames[pos + 1 - base]
                    pos = seq
                    yield frame
                if a.finished and (pos >= a.last_seq or not a.frames):
                    return
                if a.n_tokens:  # streaming: every change is notified, no frame is due on a timer
                    await changed.wait()
                    continue
                try:  # still waiting for the first token: a progress frame every interval
                    await asyncio.wait_for(changed.wait(), PROGRESS_INTERVAL_S)
                except TimeoutError:
                    if a.n_tokens == 0 and not a.finished:
                        yield frames.progress_frame()
        finally:
            a.followers -= 1
            if a.followers == 0 and not a.finished:
                self._left(a)

    @staticmethod
    def check_after(a: Answer, after: int) -> None:
        """A resume may not claim events the answer will never have."""
        if after > a.last_seq and (a.finished or after > a.last_seq + MAX_ANSWER_BUFFER_EVENTS):
            raise RequestError(f"after={after} is past this answer's last event ({a.last_seq})",
                               code="invalid_request", param="after")

    async def replay(self, answer_id: str, after: int = -1, *, owner: str,
                     start_model: str | None = None) -> list[dict[str, Any]]:
        """`owner`'s answer no longer in memory, from the store: (`start` and) a `done`
        with `replayed: true` and the whole text. RequestError 404 `answer_not_found`,
        also for another owner's answer (the store is asked for `owner`'s rows only).
        `start_model`: also a start frame, naming this model where the row names none."""
        m: Message | None = await self.run_store(self._store.answer_message, answer_id, owner=owner)
        if m is None:
            raise answer_not_found(answer_id)
        out: list[dict[str, Any]] = []
        if start_model is not None:
            out.append(frames.start_frame(m.conversation_id, m.model or start_model, answer_id=answer_id))
        out.append(frames.replayed_done_frame(
            answer_id=answer_id, conversation_id=m.conversation_id, model=m.model, text=m.content, status=m.status,
            seq=max(after, 0) + 1, prompt_tokens=m.prompt_tokens, completion_tokens=m.completion_tokens,
            ttft_ms=m.ttft_ms, duration_ms=m.duration_ms))
        if m.citations is not None:  # a grounded answer keeps its citations when replayed
            out[-1].update(citations=m.citations, documents_mode=m.documents_mode)
        return out

    async def run_store(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A store call off the loop; StoreError (a locked or full database) becomes
        503 `storage_unavailable`."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except StoreError as e:
            raise storage_unavailable(e) from None

    async def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Graceful shutdown: refuse new turns, cancel every generation (each ends within
        one token), and wait until each is stored and its followers have their final frame."""
        self.closing = True
        for a in list(self._by_id.values()):
            if not a.finished:
                self._cancel_for_shutdown(a)
        tasks = [a.task for a in self._by_id.values() if a.task is not None and not a.task.done()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            if late:
                log.warning("%d answers were not stored within %.0f s of the shutdown", len(late), timeout)
        await asyncio.sleep(0.05)  # let followers hand their final frame to the sockets
        if self.sockets:
            await asyncio.wait([asyncio.ensure_future(close()) for close in list(self.sockets)], timeout=2.0)

    def close(self) -> None:
        """Wait for the saves still running (after the loop has stopped)."""
        self._saver.shutdown(wait=True)
        if self._own_ledger:
            self._ledger.close()

    # -- internals -------------------------------------------------------------------
    def _push(self, a: Answer, frame: dict[str, Any]) -> None:
        a.last_seq += 1
        if a.last_seq > 0:
            frame["seq"] = a.last_seq
        size = len(frame.get("text") or "") + len(frame.get("message") or "") + 64  # bytes, roughly
        a.frames.append((a.last_seq, frame, size))
        self._bytes += size
        # Bounded: the oldest events go first (a resume from before them gets a snapshot);
        # the newest one always stays.
        while len(a.frames) > 1 and (len(a.frames) > MAX_ANSWER_BUFFER_EVENTS
                                     or self._bytes > MAX_BUFFERED_BYTES_TOTAL):
            self._bytes -= a.frames.popleft()[2]
        a._notify()

    def _left(self, a: Answer) -> None:
        """The last follower left mid-answer: wait for a resume, or cancel now."""
        if a.resumable and self.resume_window_s > 0 and not self.closing:
            a.expiry = asyncio.get_running_loop().call_later(self.resume_window_s, self._abandon, a)
        else:
            self._abandon(a)

    def _abandon(self, a: Answer) -> None:
        a.expiry = None
        if a.followers == 0 and not a.finished and not a.user_stopped:
            a.abandoned = True
            a.ticket.cancel()

    def _cancel_for_shutdown(self, a: Answer) -> None:
        a.shutdown = a.abandoned = True
        if a.expiry is not None:
            a.expiry.cancel()
            a.expiry = None
        a.ticket.cancel()

    def _forget(self, a: Answer) -> None:
        if self._by_id.get(a.id) is a and a.followers == 0:
            del self._by_id[a.id]
            self._bytes -= sum(size for _, _, size in a.frames)
            a.frames.clear()
        elif self._by_id.get(a.id) is a:  # someone is still reading it: look again later
            asyncio.get_running_loop().call_later(max(1.0, self.resume_window_s), self._forget, a)

    def _save_soon(self, a: Answer) -> None:
        """Save the text so far if SAVE_INTERVAL_S has passed (one save in flight at a time)."""
        now = time.monotonic()
        if a._saving or now - a._saved_at < SAVE_INTERVAL_S:
            return
        a._saving, a._saved_at = True, now
        text = "".join(a.text_parts)
        fut = asyncio.get_running_loop().run_in_executor(self._saver, self._save_partial, a.message_id, text)

        def saved(f: asyncio.Future[None]) -> None:
            a._saving = False
            if not f.cancelled() and f.exception() is not None:
                log.warning("could not save answer %s so far: %s", a.id, f.exception())

        fut.add_done_callback(saved)

    def _save_partial(self, message_id: int, text: str) -> None:
        try:
            self._store.update_message(message_id, text, status="streaming")
        except NotFound:
            pass  # the conversation was deleted meanwhile

    def _save_final(self, a: Answer, status: str, text: str, done: Done | None) -> None:
        figures: dict[str, Any] = {}
        if done is not None:
            figures = dict(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                           ttft_ms=round(done.ttft_ms, 2), duration_ms=round(done.total_ms, 2))
        try:
            self._store.update_message(a.message_id, text, status=status, **figures)
        except NotFound:
            pass

    async def _store_final(self, a: Answer, status: str, text: str, done: Done | None) -> RequestError | None:
        """The final save, awaited to its end even if this task is cancelled meanwhile
        (the loop shutting down must not lose it). Returns the storage error, if any."""
        fut = asyncio.get_running_loop().run_in_executor(self._saver, self._save_final, a, status, text, done)
        cancelled = False
        while not fut.done():
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError:
                cancelled = True
            except Exception:
                break
        if cancelled:
            raise asyncio.CancelledError
        e = fut.exception()
        if e is None:
            return None
        log.error("could not store answer %s (%s): %r", a.id, status, e)
        return storage_unavailable(e, stored=False)

    def _settle(self, a: Answer, done: Done | None) -> None:
        """Count the answer's tokens against its owner's day, and give back the rest of
        its reservation (quotas.tokens_used: what a generation without a Done used)."""
        if a.reservation is None:
            return
        a.reservation.charge(*tokens_used(a.ticket, done, a.n_tokens))
        self._ledger.settle_soon(a.reservation)

    async def _produce(self, a: Answer) -> None:
        t0 = self._stats.begin()
        done: Done | None = None
        error: RequestError | None = None
        try:
            try:
                async for event in a.ticket.events():
                    if isinstance(event, Delta):
                        a.text_parts.append(event.text)
                        self._push(a, frames.token_frame(event.text))
                        self._save_soon(a)
                    else:
                        done = event
            except EngineError as e:
                error = RequestError(str(e), code=e.code, status=getattr(e, "status", 400))
            except Exception as e:  # a bug: fail this answer loudly, keep serving
                log.error("generation failed: %r", e, exc_info=e)
                error = RequestError("internal error during generation; see the server log",
                                     code="internal_error", status=500)
        except asyncio.CancelledError:
            # Only the loop going away cancels this task: stop the worker, keep the text.
            a.ticket.cancel()
            self._stats.end(t0, ok=True, cancelled=True)
            a.finished, a.status = True, "interrupted"
            self._settle(a, None)
            await self._store_final(a, "interrupted", "".join(a.text_parts), None)
            raise
        finally:
            a.ticket.cancel()  # a no-op when it finished
        if done is not None:
            cancelled = done.finish_reason == "cancelled"
            self._stats.end(t0, ok=True, prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                         ttft_ms=done.ttft_ms, tokens_per_s=done.decode_tokens_per_s, cancelled=cancelled,
                         cached_tokens=done.cached_tokens)
            if cancelled:
                status = "interrupted" if a.abandoned and not a.user_stopped else "stopped"
            else:  # cut by max_tokens or the owner's quota: stored as such, not as ended
                status = "length" if done.finish_reason == "length" else "complete"
            text = done.text
        else:
            self._stats.end(t0, ok=False)
            status, text = "failed", "".join(a.text_parts)
        a.done, a.status = done, status
        store_error = await self._store_final(a, status, text, done)
        self._settle(a, done)  # after the answer's own save: its client waits for that one only
        final: RequestError | None
        if a.shutdown and status == "interrupted":
            final = RequestError("the server is shutting down; the answer so far is stored as interrupted",
                                 code="server_shutdown", status=503)
        else:
            final = store_error or error
        if final is not None:
            a.error = final
            self._push(a, {**error_frame(final), "answer_id": a.id})
        else:
            assert done is not None
            self._push(a, frames.done_frame(done, conversation_id=a.conversation_id, model=a.model,
                                            processing_ms=(time.perf_counter() - a.started) * 1000,
                                            answer_id=a.id, seq=a.last_seq + 1, status=status) | a.extra)
        a.finished = True
        a._notify()
        asyncio.get_running_loop().call_later(self.resume_window_s, self._forget, a)


def answer_not_found(answer_id: str) -> RequestError:
    return RequestError(f"no answer {answer_id!r} on this server (unknown, expired, or started with another "
                        "API key); load the conversation instead", code="answer_not_found", status=404,
                        param="answer_id")


def check_answer_id(answer_id: object) -> str:
    """An answer id is 1-64 printable ASCII characters; anything else is unknown (404)."""
    if (not isinstance(answer_id, str) or not 0 < len(answer_id) <= MAX_ID_CHARS
            or not all("!" <= ch <= "~" for ch in answer_id)):
        raise answer_not_found(str(answer_id)[:80])
    return answer_id


def storage_unavailable(e: BaseException, *, stored: bool = True) -> RequestError:
    """503 `storage_unavailable`; `stored=False`: the answer was generated, then not stored."""
    message = f"the conversation store is unavailable: {e}" if stored else \
        f"the answer was generated but could not be stored: {e}"
    return RequestError(message, code="storage_unavailable", status=503, retry_after=RETRY_STORAGE_S)
