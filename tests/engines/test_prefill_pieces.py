"""Adaptive prefill (Scheduler._prefill): alone, a long prompt goes into its slot in the
engine's big batches; while another answer streams, in small pieces sized by the time
the last one took, so the streaming answer gets a token between two of them. With a
fake engine that records the pieces, then the real model: a prompt fed in pieces gives
the same greedy answer as one fed whole."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from fakes import SLOW, FakeEngine
from test_scheduler import run_async

from nanochat_lite.engines.local import Engine
from nanochat_lite.engines.scheduler import FAIR_PIECE_S, MIN_PIECE, Scheduler, next_piece
from nanochat_lite.generation import Done, SamplingParams

PARAMS = SamplingParams(temperature=0.0, max_tokens=8)


@dataclass
class PiecesEngine(FakeEngine):
    """A fake engine with a big batch that records each fill_slot call."""

    batch: int = 512
    fair_batch: int = 64
    parallel: int = 2
    fills: list[tuple[int, int]] = field(default_factory=list)  # (slot, prompt length so far)
    fill_s: float = 0.0

    def fill_slot(self, slot: int, tokens: list[int]) -> None:
        if self.fill_s:
            time.sleep(self.fill_s)
        self.fills.append((slot, len(tokens)))


def answer_once(sch: Scheduler, prep, params: SamplingParams) -> Done:
    """Submit one request, wait for its Done, and close the scheduler."""
    async def go() -> Done:
        ticket = sch.submit(prep, params)
        async for ev in ticket.events():
            if isinstance(ev, Done):
                return ev
        raise AssertionError("no Done")

    try:
        return run_async(go)
    finally:
        sch.close()


def words(n: int) -> str:
    return " ".join(["w"] * n)  # the fake tokenizer: one token per word, +1 for BOS


def test_next_piece_aims_at_a_quarter_second_within_bounds():
    assert next_piece(64, FAIR_PIECE_S, 512) == 64  # it took as long as aimed: keep it
    assert next_piece(64, FAIR_PIECE_S / 2, 512) == 128  # twice as fast: twice as big
    assert next_piece(64, FAIR_PIECE_S * 8, 512) == MIN_PIECE  # a loaded machine: smallest
    assert next_piece(64, 0.001, 512) == 512  # never past the engine's batch
    assert next_piece(64, 0.0, 512) == 512


def test_alone_a_long_prompt_goes_in_big_batches():
    fake = PiecesEngine()
    sch = Scheduler(fake)

    done = answer_once(sch, fake.prepare([{"role": "user", "content": words(1500)}], PARAMS), PARAMS)
    assert done.finish_reason == "stop"
    # 1,501 tokens: two 512-token batches by fill_slot, the last 477 with the answer.
    assert [n for _, n in fake.fills] == [512, 1024]


def test_a_short_prompt_is_not_split():
    fake = PiecesEngine()
    sch = Scheduler(fake)

    async def go() -> None:
        ticket = sch.submit(fake.prepare([{"role": "user", "content": words(40)}], PARAMS), PARAMS)
        async for _ in ticket.events():
            pass

    try:
        run_async(go)
    finally:
        sch.close()
    assert fake.fills == []


def test_while_another_answer_streams_the_pieces_start_small():
    fake = PiecesEngine(fill_s=0.01)
    sch = Scheduler(fake)

    async def go() -> list[tuple[int, int]]:
        slow = sch.submit(fake.prepare([{"role": "user", "content": SLOW}], PARAMS.with_overrides(max_tokens=500)),
                          PARAMS.with_overrides(max_tokens=500))
        while not fake.started.is_set():  # the streaming answer is generating
            await asyncio.sleep(0.01)
        long = sch.submit(fake.prepare([{"role": "user", "content": words(1500)}], PARAMS), PARAMS)
        async for _ in long.events():
            pass
        fills = list(fake.fills)
        slow.cancel()
        async for _ in slow.events():
            pass
        return fills

    try:
        fills = run_async(go)
    finally:
        sch.close()
    assert fills, "the long prompt was not split while another answer streamed"
    sizes = [b - a for a, b in zip([0] + [n for _, n in fills], [n for _, n in fills])]
    assert sizes[0] == 64
    assert all(MIN_PIECE <= s <= 512 for s in sizes)
    assert fills[-1][1] < 1501  # the last tokens go with the answer's own request


def test_a_prompt_fed_in_pieces_gives_the_same_answer_as_fed_whole(chat_model_path):
    text = ("Here is a list of fruits: " + ", ".join(f"fruit number {i}" for i in range(260))
            + ". Which fruit number comes first?")
    params = SamplingParams(temperature=0.0, max_tokens=16)
    answers = []
    for batch in (512, 64):  # 64 = FAIR_BATCH: no pieces, the engine's own chunks
        engine = Engine(chat_model_path, n_ctx=2048, parallel=1, threads=2, batch=batch)
        try:
            prep = engine.prompts.prepare([{"role": "user", "content": text}], params)
            assert len(prep.tokens) > 1024
            sch = Scheduler(engine)
            calls: list[int] = []
            fill = engine.fill_slot
            engine.fill_slot = lambda slot, tokens: (calls.append(len(tokens)), fill(slot, tokens))[1]  # type: ignore[method-assign]
            done = answer_once(sch, prep, params)
            assert bool(calls) == (batch == 512), calls
            answers.append((done.text, done.prompt_tokens))
        finally:
            engine.close()
    assert answers[0] == answers[1]
