"""Tokens per owner and UTC day, in the store; daily token quotas that hold.

A generation request is admitted in two steps, both before anything is stored or
queued: its prompt is built, then `Ledger.reserve` holds its prompt plus `max_tokens`
× n tokens of its owner's quota for the UTC day, in one atomic update of the store's
`usage` row — capped to what is left. When what is left cannot pay for the prompt and
one token per choice, the request gets 429 `quota_exceeded` with a Retry-After up to
midnight UTC. A capped reservation lowers the request's `max_tokens` to fit, so the
generation stops when the reservation is spent (finish_reason "length"). When the
request ends, one more update (`settle`) gives back the reservation and counts what was
used. Never an update per token; and because the counts are in the store, a restart
keeps them and replicas on one PostgreSQL share them.

    r = await ledger.reserve(identity, prompt_tokens=40, max_tokens=[200, 200])  # n = 2
    r.caps -> [130, 130] when only 300 were left: 40 + 2 × 130 = 300
    r.charge(40, 97); r.charge(40, 130)  # each choice, when it ends: one prompt counts once
    ledger.settle_soon(r)  # one update: reserved -300, prompt +40, completion +227

Owners without a quota (and servers without keys: owner 'local') reserve nothing, but
their usage is still counted (one settle per request), for `/api/stats` and `/metrics`.

A request whose reservation is never settled (the process was killed mid-answer) keeps
its tokens reserved until the day ends: a quota can then be under-used, never exceeded.
With an upstream engine (`--engine openai:URL`) the prompt is not tokenized here: its
size is estimated for the reservation (turns.prompt_size) and counted as the upstream
reports it, so a day may end past its quota by that estimate's error.

Not here: rate limits per second (none), who the request is (security.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import logging
import weakref
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...generation import Done
from ...history import Store, StoreError, Usage
from ..wire.errors import RETRY_STORAGE_S, RequestError
from .security import Identity

__all__ = ["Ledger", "Reservation", "key_table", "quota_exceeded", "seconds_to_midnight", "tokens_used", "utc_day"]

log = logging.getLogger("nanochat_lite")


def utc_day(now: datetime.datetime | None = None) -> str:
    """utc_day(datetime(2026, 11, 30, 23, 59, tzinfo=UTC)) -> "2026-11-30"."""
    return (now or datetime.datetime.now(datetime.timezone.utc)).date().isoformat()


def seconds_to_midnight(now: datetime.datetime | None = None) -> int:
    """Whole seconds until the next midnight UTC (at least 1): when a daily quota renews."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    midnight = datetime.datetime.combine(now.date() + datetime.timedelta(days=1), datetime.time(),
                                         tzinfo=datetime.timezone.utc)
    return max(1, int((midnight - now).total_seconds() + 0.999))


def quota_exceeded(owner: str, quota: int, counted: int, need: int) -> RequestError:
    """429 `quota_exceeded`, Retry-After: midnight UTC."""
    wait = seconds_to_midnight()
    renews = f"it renews at midnight UTC, in {wait // 3600} h {wait % 3600 // 60} min"
    left = max(0, quota - counted)
    if left == 0:
        message = f"the API key {owner!r} has used its daily quota of {quota:,} tokens ({counted:,} counted); {renews}"
    else:
        message = (f"the API key {owner!r} has {left:,} of its daily {quota:,} tokens left, and this request needs "
                   f"{need:,} (its prompt and at least one token per answer); {renews}")
    return RequestError(message, code="quota_exceeded", status=429, retry_after=wait)


def tokens_used(ticket: Any, done: Done | None, streamed: int) -> tuple[int, int]:
    """(prompt, completion) tokens a generation used: its Done's counts; none for one
    that never reached a slot (cancelled or timed out in the queue: nothing was
    evaluated); without a Done (an engine error) its prompt and the deltas it streamed."""
    if not getattr(ticket, "started", True):
        return 0, 0
    if done is not None:
        return done.prompt_tokens, done.completion_tokens
    return len(ticket.prepared.tokens), streamed


@dataclass
class Reservation:
    """One request's hold on its owner's tokens of the day, and what it has used."""

    owner: str
    day: str  # the UTC day it counts on, even if it ends after midnight
    tokens: int  # held in the store (0: the owner has no quota, nothing held)
    caps: list[int]  # the most tokens each choice may generate
    completion_tokens: int = 0
    parts_left: int = 1  # choices still to charge before the request is settled
    settled: bool = False
    requests: int = 1  # 0: refused after reserving (a full queue): not counted as a request
    _prompts: dict[Hashable, int] = field(default_factory=dict)  # prompt -> its tokens, counted once

    @property
    def prompt_tokens(self) -> int:
        return sum(self._prompts.values())

    def charge(self, prompt_tokens: int, completion_tokens: int, prompt: Hashable = None) -> bool:
        """One choice has ended with these counts. The choices of one prompt (`prompt`
        names it) share it: it counts once, as in the usage the client is shown. True
        when every choice has been charged: time to settle."""
        self._prompts[prompt] = max(self._prompts.get(prompt, 0), prompt_tokens)
        self.completion_tokens += completion_tokens
        self.parts_left -= 1
        return self.parts_left <= 0


class Ledger:
    """Reservations and settlements of tokens per owner and day, on `store`.

    Settlements run in one thread of their own, in order, off the event loop; `close()`
    waits for them (the store must still be open)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._settler = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="nanochat-usage")
        # Reservations of the /v1 doors, by ticket (and the prompt it shares with other
        # choices): their streams charge them as they end. Weak: a ticket whose stream
        # never ran (its client left first) leaves its tokens reserved, never overspent.
        self._by_ticket: weakref.WeakKeyDictionary[Any, tuple[Reservation, Hashable]] = weakref.WeakKeyDictionary()

    async def reserve(self, who: Identity, *, prompt_tokens: int, max_tokens: Sequence[int]) -> Reservation:
        """Hold `prompt_tokens` + sum(`max_tokens`) of `who`'s quota (one entry per choice),
        capped to what is left; the caps say how many tokens each choice may then generate.
        Raises RequestError 429 `quota_exceeded` when less than the prompt plus one token
        per choice is left, 503 `storage_unavailable` when the store cannot answer."""
        day = utc_day()
        n = len(max_tokens)
        if who.daily_quota is None:
            return Reservation(who.owner, day, 0, list(max_tokens), parts_left=n)
        want = prompt_tokens + sum(max_tokens)
        need = prompt_tokens + n
        granted = await self._run(self.store.reserve_usage, who.owner, day, want, quota=who.daily_quota,
                                  minimum=need)
        if granted == 0:
            rows = await self._run(self.store.usage, owner=who.owner, day=day)
            raise quota_exceeded(who.owner, who.daily_quota, rows[0].counted if rows else 0, need)
        share = (granted - prompt_tokens) // n  # >= 1: the store granted at least `need`
        return Reservation(who.owner, day, granted, [min(m, share) for m in max_tokens], parts_left=n)

    def watch(self, ticket: Any, r: Reservation, prompt: Hashable = None) -> None:
        """Charge `r` when this ticket's stream ends (`charge_ticket`); `prompt` names
        the prompt it shares with other choices."""
        self._by_ticket[ticket] = (r, prompt)

    def charge_ticket(self, ticket: Any, prompt_tokens: int, completion_tokens: int) -> None:
        """A /v1 generation has ended: charge its reservation (once per ticket); settle
        it after its last choice."""
        entry = self._by_ticket.pop(ticket, None)
        if entry is not None and entry[0].charge(prompt_tokens, completion_tokens, entry[1]):
            self.settle_soon(entry[0])

    def release(self, r: Reservation) -> None:
        """The request was refused after its reservation (nothing generated): give it back."""
        r.requests = 0
        self.settle_soon(r)

    def settle_soon(self, r: Reservation) -> concurrent.futures.Future[None] | None:
        """Give the reservation back and count what was used: one update, in the settle
        thread. Once per reservation (later calls do nothing)."""
        if r.settled:
            return None
        r.settled = True
        if r.tokens == 0 and r.requests == 0:
            return None
        try:
            return self._settler.submit(self._settle, r)
        except RuntimeError:  # closed: the server is past its shutdown; try once, here
            self._settle(r)
            return None

    def _settle(self, r: Reservation) -> None:
        try:
            self.store.settle_usage(r.owner, r.day, reserved=r.tokens, prompt_tokens=r.prompt_tokens,
                                    completion_tokens=r.completion_tokens, requests=r.requests)
        except Exception as e:  # a locked or lost database: the tokens stay reserved until the day ends
            log.warning("could not count %d tokens of %r (reserved %d): %s", r.prompt_tokens + r.completion_tokens,
                        r.owner, r.tokens, e)

    async def usage(self, owner: str | None) -> list[Usage]:
        """Every day's counts of `owner` (None: every owner's)."""
        rows: list[Usage] = await self._run(self.store.usage, owner=owner)
        return rows

    def close(self) -> None:
        """Wait for the settlements still running."""
        self._settler.shutdown(wait=True)

    @staticmethod
    async def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except StoreError as e:
            raise RequestError(f"the conversation store is unavailable: {e}", code="storage_unavailable",
                               status=503, retry_after=RETRY_STORAGE_S) from None


def key_table(rows: Sequence[Usage], counts: Mapping[str, Mapping[str, int]], quotas: Mapping[str, int],
              *, only: str | None = None, today: str | None = None) -> dict[str, dict[str, int | None]]:
    """Per API key name: its requests and WebSockets since start-up (`counts`, from
    KeyUsage), its tokens from the store (all days; today's, reservations included) and
    its daily quota. `only`: that key's row alone (a key that is not an admin sees its own).

    key_table([Usage("alice", "2026-11-30", 40, 60, 10, 2)], {"alice": {"requests": 3, "websockets": 0}}, {},
              today="2026-11-30")
    -> {"alice": {"requests": 3, "websockets": 0, "prompt_tokens": 40, "completion_tokens": 60,
                  "tokens_today": 110, "tokens_reserved": 10, "daily_token_quota": None}}
    """
    today = today or utc_day()
    table: dict[str, dict[str, int | None]] = {}
    for name in sorted(counts):  # the configured keys; the store may hold other owners ('local')
        if only is not None and name != only:
            continue
        mine = [u for u in rows if u.owner == name]
        day = next((u for u in mine if u.day == today), None)
        table[name] = {**counts[name], "prompt_tokens": sum(u.prompt_tokens for u in mine),
                       "completion_tokens": sum(u.completion_tokens for u in mine),
                       "tokens_today": day.counted if day else 0, "tokens_reserved": day.reserved_tokens if day else 0,
                       "daily_token_quota": quotas.get(name)}
    return table
