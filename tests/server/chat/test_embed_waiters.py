"""Embedding requests wait for the one running batch in a bounded line
(limits.MAX_EMBED_WAITERS): past it a request is refused at once with 503 server_busy,
and the line drains in order once the batch ends."""

from __future__ import annotations

import asyncio

import pytest

from nanochat_lite.server.chat.runtime import BoundedLock
from nanochat_lite.server.wire.errors import RequestError


def test_a_full_line_refuses_at_once_and_the_rest_run_in_turn() -> None:
    async def main() -> list[int]:
        lock = BoundedLock(3)
        order: list[int] = []
        release = asyncio.Event()

        async def holder() -> None:
            async with lock:
                await release.wait()

        async def waiter(i: int) -> None:
            async with lock:
                order.append(i)

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(waiter(i)) for i in range(3)]
        await asyncio.sleep(0)
        assert lock.waiting == 3
        with pytest.raises(RequestError) as refused:
            async with lock:
                pass
        assert refused.value.status == 503 and refused.value.code == "server_busy" and refused.value.retry_after
        release.set()
        await asyncio.gather(first, *waiters)
        assert lock.waiting == 0
        async with lock:  # free again
            pass
        return order

    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the browser tests keep a loop in this thread
        assert pool.submit(asyncio.run, main()).result(timeout=30) == [0, 1, 2]
