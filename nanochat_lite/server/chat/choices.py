"""Several generations of one request (`n` > 1 on `/v1`): their events merged in arrival
order, or run to their ends. Used by both OpenAI doors; they differ only in the wire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ...engines.scheduler import Ticket
from ...generation import Delta, Done, SamplingParams
from ..wire.errors import RequestError
from . import turns
from .runtime import Runtime


async def collect_dones(rt: Runtime, tickets: Sequence[Ticket], choice_params: Sequence[SamplingParams]
                        ) -> list[Done]:
    """Run every choice's generation to its end; their Done events, by choice index."""
    dones: list[Done | None] = [None] * len(tickets)
    async for i, ev in merged(rt, tickets, choice_params):
        if isinstance(ev, Done):
            dones[i] = ev
    if any(d is None for d in dones):
        raise RequestError("a generation ended without a result", code="engine_error", status=500)
    return dones  # type: ignore[return-value]


async def merged(rt: Runtime, tickets: Sequence[Ticket], params: Sequence[SamplingParams]
                 ) -> AsyncIterator[tuple[int, Delta | Done]]:
    """The events of several generations as (choice index, event), in arrival order.

    Closing this iterator (client gone) or an error in one generation stops them all."""
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    end = object()

    async def pump(i: int) -> None:
        try:
            async for ev in turns.stream(rt, tickets[i], params[i]):
                await queue.put((i, ev))
        except Exception as e:  # RequestError from the engine: hand it to the consumer
            await queue.put((i, e))
        finally:
            await queue.put((i, end))

    tasks = [asyncio.ensure_future(pump(i)) for i in range(len(tickets))]
    try:
        running = len(tasks)
        while running:
            i, ev = await queue.get()
            if ev is end:
                running -= 1
            elif isinstance(ev, Exception):
                raise ev
            else:
                yield i, ev
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
