"""The scheduler in front of the real engine: streams running side by side, the queue's
cap, cancellation freeing a slot for the next request, the shared prefix restored
into every slot, slot choice by cached prefix, and cache isolation (an answer does
not depend on what other conversations did in the slot before it). At the end, its
rules with the fake engine: arrival order, cancel before start, close, and an engine
error failing only its own request."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from fakes import CRASH, FAIL, SLOW, FakeEngine

from nanochat_lite.engines.local import Engine
from nanochat_lite.engines.scheduler import QueueFull, Scheduler, common_prefix
from nanochat_lite.generation import Delta, Done, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
LONG = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=400)
COUNT = "Write the numbers from 1 to 500, separated by commas."


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def run_async(coro_fn):
    """asyncio.run(coro_fn()) in a thread of its own: the browser tests' Playwright keeps
    an event loop running in the main thread for the whole session."""
    out: list = []

    def target() -> None:
        try:
            out.append(("ok", asyncio.run(coro_fn())))
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            out.append(("err", e))

    t = threading.Thread(target=target)
    t.start()
    t.join(300)
    assert out, "the test's event loop did not finish within 300 s"
    kind, value = out[0]
    if kind == "err":
        raise value
    return value


@pytest.fixture(scope="module")
def engine2(chat_model_path) -> Engine:
    e = Engine(chat_model_path, n_ctx=1024, parallel=2, threads=2)
    yield e
    e.close()


@pytest.fixture(scope="module")
def engine1(chat_model_path) -> Engine:
    e = Engine(chat_model_path, n_ctx=1024, parallel=1, threads=2)
    yield e
    e.close()


async def collect(ticket, on_token=None) -> tuple[list[tuple[float, str]], Done]:
    """(arrival time, text) of each delta, and the Done."""
    deltas: list[tuple[float, str]] = []
    async for ev in ticket.events():
        if isinstance(ev, Delta):
            deltas.append((time.monotonic(), ev.text))
            if on_token:
                on_token(len(deltas))
        else:
            return deltas, ev
    raise AssertionError("no Done")


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5, 6], [5, 6]) == 2


def test_two_chats_stream_at_the_same_time_and_both_finish(engine2):
    async def main():
        sch = Scheduler(engine2)
        try:
            params = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=60)
            a = sch.submit(engine2.prompts.prepare(user(COUNT), params), params)
            b = sch.submit(engine2.prompts.prepare(user("Count from 1 to 100 in words, separated by commas."), params),
                           params)
            await asyncio.sleep(0)
            assert sch.active + sch.queued == 2
            (da, done_a), (db, done_b) = await asyncio.gather(collect(a), collect(b))
            return da, done_a, db, done_b
        finally:
            sch.close()

    da, done_a, db, done_b = run_async(main)
    assert done_a.finish_reason in ("stop", "length") and done_b.finish_reason in ("stop", "length")
    assert done_a.completion_tokens > 10 and done_b.completion_tokens > 10
    # Interleaved, not one after the other: each got tokens before the other finished.
    assert da[0][0] < db[-1][0] and db[0][0] < da[-1][0]


def test_cancel_frees_the_slot_for_the_next_queued_request(engine1):
    async def main():
        sch = Scheduler(engine1)
        try:
            first = sch.submit(engine1.prompts.prepare(user(COUNT), LONG), LONG)
            second = sch.submit(engine1.prompts.prepare(user("Say hello."), GREEDY), GREEDY)
            assert sch.queued == 1  # one slot: the second waits
            t_cancel: list[float] = []

            def stop_after(n: int) -> None:
                if n == 5 and not t_cancel:
                    t_cancel.append(time.monotonic())
                    first.cancel()

            (d1, done1), (d2, done2) = await asyncio.gather(collect(first, stop_after), collect(second))
            return t_cancel[0], d1, done1, d2, done2
        finally:
            sch.close()

    t_cancel, d1, done1, d2, done2 = run_async(main)
    assert done1.finish_reason == "cancelled" and len(d1) <= 7
    assert done2.finish_reason in ("stop", "length") and d2
    # The queued request waited for the slot and got it when the first was cancelled:
    # its first token came after the cancel, and the first stopped within two tokens
    # of it (not after its 400).
    assert d2[0][0] > t_cancel
    assert done1.completion_tokens <= 7


def test_a_cancelled_queued_request_leaves_the_queue_at_once(engine1):
    async def main():
        sch = Scheduler(engine1)
        try:
            first = sch.submit(engine1.prompts.prepare(user(COUNT), LONG), LONG)
            second = sch.submit(engine1.prompts.prepare(user("Say hello."), GREEDY), GREEDY)
            second.cancel()
            assert sch.queued == 0
            _, done2 = await collect(second)
            first.cancel()
            _, done1 = await collect(first)
            return done1, done2
        finally:
            sch.close()

    done1, done2 = run_async(main)
    assert done2.finish_reason == "cancelled" and done2.completion_tokens == 0
    assert done1.finish_reason == "cancelled"


def test_queue_cap_refuses_at_once(engine1):
    async def main():
        sch = Scheduler(engine1, max_queue=1)
        try:
            prep = engine1.prompts.prepare(user(COUNT), LONG)
            running = sch.submit(prep, LONG)
            waiting = sch.submit(prep, LONG)
            with pytest.raises(QueueFull, match="limit is 1"):
                sch.submit(prep, LONG)
            for t in (waiting, running):
                t.cancel()
                await collect(t)
        finally:
            sch.close()

    run_async(main)


def test_shared_prefix_is_computed_once_and_restored_into_every_slot(chat_model_path):
    engine = Engine(chat_model_path, n_ctx=1024, parallel=3, threads=2)
    try:
        prefix = engine.prompts.shared_prefix()
        assert len(prefix) > 10  # SmolLM2's default system prompt

        async def main():
            sch = Scheduler(engine, shared_prefix=engine.prompts.shared_prefix)
            try:
                deadline = time.monotonic() + 30
                while sch.prefix_tokens == 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert sch.prefix_tokens == len(prefix)
                tickets = [sch.submit(engine.prompts.prepare(user(f"Name a colour, number {i}."), GREEDY), GREEDY)
                           for i in range(3)]
                return [d for _, d in await asyncio.gather(*(collect(t) for t in tickets))]
            finally:
                sch.close()

        dones = run_async(main)
        # Three new conversations in three slots: every one found the prefix cached.
        assert [d.cached_tokens >= len(prefix) for d in dones] == [True, True, True]
    finally:
        engine.close()


def test_next_turn_goes_to_the_slot_holding_its_conversation(engine2):
    async def main():
        sch = Scheduler(engine2)
        try:
            first = user("Tell me about the sea in two sentences.")
            other = user("What is a prime number? One sentence.")
            a = sch.submit(engine2.prompts.prepare(first, GREEDY), GREEDY)
            b = sch.submit(engine2.prompts.prepare(other, GREEDY), GREEDY)
            (_, done_a), _ = await asyncio.gather(collect(a), collect(b))
            follow = first + [{"role": "assistant", "content": done_a.text},
                              {"role": "user", "content": "And about rivers?"}]
            prep = engine2.prompts.prepare(follow, GREEDY)
            _, done = await collect(sch.submit(prep, GREEDY))
            return prep, done
        finally:
            sch.close()

    prep, done = run_async(main)
    # The whole earlier turn (prompt and answer) was reused from that slot's cache.
    assert done.cached_tokens > len(prep.tokens) // 2


def test_an_answer_does_not_depend_on_what_ran_in_the_slot_before(engine1):
    """Cache isolation: with one slot (batching cannot change the arithmetic), the same
    conversation at temperature 0 gives the same answer first and after 20 others."""
    conversation = user("In one sentence, why is the sky blue?")
    params = SamplingParams(temperature=0.0, max_tokens=40)

    async def answer(sch: Scheduler, messages) -> Done:
        return (await collect(sch.submit(engine1.prompts.prepare(messages, params), params)))[1]

    async def main():
        sch = Scheduler(engine1)
        try:
            engine1.erase_slot(0)
            first = await answer(sch, conversation)
            for i in range(20):
                others = [{"role": "system", "content": f"You are assistant number {i}."}] if i % 2 else []
                await answer(sch, others + user(f"Question {i}: what is {i} plus {i * 3}?"))
            # A conversation sharing the start of ours, then ours again.
            await answer(sch, user("In one sentence, why is the grass green?"))
            again = await answer(sch, conversation)
            return first, again
        finally:
            sch.close()

    first, again = run_async(main)
    assert first.text and again.text == first.text


# -- the scheduler's rules, with the fake engine (no model, milliseconds) ---------------

def fake_scheduler(parallel: int = 1, **kw):
    fake = FakeEngine(parallel=parallel)
    return fake, Scheduler(fake, **kw)


def ask(fake, sch, text: str, params: SamplingParams):
    return sch.submit(fake.prepare(user(text), params), params)


async def hold(fake, sch, text: str, params: SamplingParams):
    """A slow request that holds a slot; returns once it is generating."""
    ticket = ask(fake, sch, text + " " + SLOW, params)
    await asyncio.to_thread(fake.started.wait, 10)
    return ticket


def test_queued_requests_start_in_arrival_order():
    fake, sch = fake_scheduler(parallel=1)

    async def main():
        params = SamplingParams(max_tokens=4)
        first = await hold(fake, sch, "hold", params)
        tickets = [ask(fake, sch, f"request {i}", params) for i in range(5)]
        assert sch.queued == 5
        first.cancel()  # the slot frees; the five run one by one, in order
        for t in tickets:
            await collect(t)
        await collect(first)

    try:
        run_async(main)
    finally:
        sch.close()
    order = [c.messages[-1]["content"] for c in fake.calls[1:]]
    assert order == [f"request {i}" for i in range(5)]


def test_cancel_before_start_never_reaches_the_engine():
    fake, sch = fake_scheduler(parallel=1)

    async def main():
        params = SamplingParams(max_tokens=4)
        busy = await hold(fake, sch, "hold", params)
        waiting = ask(fake, sch, "never run", params)
        waiting.cancel()
        _, done = await collect(waiting)
        assert done.finish_reason == "cancelled" and done.completion_tokens == 0
        assert sch.queued == 0
        busy.cancel()
        await collect(busy)

    try:
        run_async(main)
    finally:
        sch.close()
    assert [c.messages[-1]["content"] for c in fake.calls] == ["hold " + SLOW]


def test_close_cancels_running_and_queued_requests_and_refuses_new_ones():
    fake, sch = fake_scheduler(parallel=1)

    async def main():
        params = SamplingParams(max_tokens=1000)
        running = await hold(fake, sch, "long", params)
        queued = ask(fake, sch, "queued", params)
        sch.close()
        _, done_q = await collect(queued)
        _, done_r = await collect(running)
        assert done_q.finish_reason == "cancelled"
        assert done_r.finish_reason == "cancelled"
        with pytest.raises(Exception, match="shutting down"):
            ask(fake, sch, "late", params)

    run_async(main)


def test_an_engine_error_fails_its_request_only():
    fake, sch = fake_scheduler(parallel=2)

    async def main():
        params = SamplingParams(max_tokens=8)
        bad = ask(fake, sch, "x " + FAIL, params)
        bug = ask(fake, sch, "x " + CRASH, params)
        good = ask(fake, sch, "fine", params)
        with pytest.raises(Exception, match="failed mid-stream"):
            await collect(bad)
        with pytest.raises(RuntimeError, match="has a bug"):
            await collect(bug)
        _, done = await collect(good)
        assert done.finish_reason == "stop" and done.text == "Hello, world!"
        # both slots are free again
        again = ask(fake, sch, "again", params)
        _, done2 = await collect(again)
        assert done2.finish_reason == "stop"
        # The worker hands the Done over before it frees its slot (scheduler._work's
        # finally), so the count settles just after the last answer: wait for it (the
        # deadline only guards against a slot that is never freed).
        deadline = time.monotonic() + 30
        while sch.active and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert sch.active == 0 and sch.queued == 0

    try:
        run_async(main)
    finally:
        sch.close()
