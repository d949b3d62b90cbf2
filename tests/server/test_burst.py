"""Issue #11's burst: 200 simultaneous `/api/chat` requests at a server whose queue holds
16. The excess is refused at once (503 `server_busy` with Retry-After), none gets a 5xx,
every accepted one completes, and nothing of a refused request is stored. With the
per-client cap on (its default), the same burst from one client is cut by that cap
instead: 429 `too_many_generations`. Real server, real model."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator

import httpx
import pytest

from serverproc import ServerProc

BURST = 200
MAX_QUEUE = 16
PARALLEL = 2
PER_CLIENT = 16


async def _burst(url: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        return await asyncio.gather(*(
            client.post("/api/chat", json={"message": f"Say the number {i}.", "max_tokens": 4})
            for i in range(BURST)))


def _run(url: str) -> list[httpx.Response]:
    # asyncio.run in a thread of its own: the browser tests keep a loop in this one.
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _burst(url)).result(timeout=900)


@pytest.fixture(scope="module")
def queue16(tmp_path_factory, chat_model_path) -> Iterator[ServerProc]:
    # Connections up to the burst; the per-client cap off, so the queue cap is what answers.
    with ServerProc(tmp_path_factory.mktemp("burst"), "--threads", "2", "--parallel", str(PARALLEL),
                    "--max-queue", str(MAX_QUEUE), "--max-client-generations", "0",
                    "--max-connections", str(BURST + 16)) as s:
        yield s


@pytest.fixture(scope="module")
def per_client(tmp_path_factory, chat_model_path) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("burst-client"), "--threads", "2", "--parallel", str(PARALLEL),
                    "--max-queue", "64", "--max-client-generations", str(PER_CLIENT),
                    "--max-connections", str(BURST + 16)) as s:
        yield s


def test_a_burst_past_the_queue_cap_is_refused_at_once_and_stores_nothing(queue16: ServerProc) -> None:
    responses = _run(queue16.url)
    statuses = collections.Counter(r.status_code for r in responses)
    print(f"\nburst of {BURST} with --max-queue {MAX_QUEUE} --parallel {PARALLEL}: statuses {dict(statuses)}")
    assert not [r for r in responses if r.status_code >= 500 and r.status_code != 503], statuses
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 503]
    assert len(ok) + len(refused) == BURST, statuses
    assert all(r.json()["error"]["code"] == "server_busy" and int(r.headers["retry-after"]) >= 1 for r in refused)
    # The queue's places were taken and the rest turned away. Not exactly "slots + queue":
    # right after start-up the shared-prefix job may hold a slot (a CI run served 17), and
    # a 4-token answer can end while the burst is still arriving, freeing a place (19).
    # So the figure is printed, and checked loosely: most of the burst was refused.
    assert MAX_QUEUE <= len(ok) < BURST // 2 and len(refused) > BURST // 2
    # Every accepted request completed; only accepted ones were stored.
    assert all(r.json()["data"]["finish_reason"] in ("stop", "length") for r in ok)
    stored = httpx.get(queue16.url + "/api/conversations", params={"limit": 100}).json()["data"]
    assert stored["total"] == len(ok), (stored["total"], len(ok))


def test_the_same_burst_from_one_client_meets_the_per_client_cap(per_client: ServerProc) -> None:
    responses = _run(per_client.url)
    statuses = collections.Counter(r.status_code for r in responses)
    print(f"\nburst of {BURST} from one client, --max-client-generations {PER_CLIENT}: statuses {dict(statuses)}")
    assert set(statuses) <= {200, 429}, statuses
    refused = [r for r in responses if r.status_code == 429]
    assert refused and all(r.json()["error"]["code"] == "too_many_generations" for r in refused)
    assert statuses[200] >= PER_CLIENT
    stored = httpx.get(per_client.url + "/api/conversations", params={"limit": 100}).json()["data"]
    assert stored["total"] == statuses[200]
