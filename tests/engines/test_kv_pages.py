"""Giving back never-written KV cache pages (engines/kv_pages.py): only all-zero pages go,
what the memory reads stays the same, and an engine that gave its pages back answers
exactly as one that did not, with far less resident memory."""

from __future__ import annotations

import ctypes
import mmap

import pytest

from nanochat_lite.engines.kv_pages import PAGE, LoadWindow, drop_zero_pages, intersect, subtract
from nanochat_lite.engines.local import Engine
from nanochat_lite.generation import Done, SamplingParams


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def test_subtract_and_intersect():
    assert subtract([(0, 100)], [(10, 20), (50, 60)]) == [(0, 10), (20, 50), (60, 100)]
    assert subtract([(0, 100)], [(0, 100)]) == []
    assert subtract([(0, 100)], [(200, 300)]) == [(0, 100)]
    assert intersect([(0, 100)], [(50, 150), (160, 170)]) == [(50, 100)]


def test_only_zero_pages_go_and_the_memory_reads_the_same():
    size = 80 << 20
    window = LoadWindow()
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # what llama.cpp's allocation gets
    window.close()
    view = ctypes.c_char.from_buffer(buf)
    addr = ctypes.addressof(view)
    del view
    assert any(a <= addr < b for a, b in window.ranges), "the new mapping was not seen"
    buf.write(b"\0" * size)  # resident, all zeros: like the cleared KV cache
    marks = {3 * PAGE + 5: 7, (1 << 20) + 100: 9, size - 1: 11}
    for at, value in marks.items():
        buf[at] = value
    before = rss_kb()
    dropped = drop_zero_pages([(addr, addr + size)])
    assert dropped == size - 3 * PAGE  # every page but the three written ones
    assert before - rss_kb() > 60_000  # KB: the pages really left the process's memory
    for at, value in marks.items():
        assert buf[at] == value
    assert buf[:PAGE] == b"\0" * PAGE and buf[size // 2] == 0  # a dropped page reads zeros
    buf[size // 2] = 5  # and can be written again
    assert buf[size // 2] == 5
    buf.close()


def test_pages_never_touched_are_not_counted():
    size = 8 << 20
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = ctypes.c_char.from_buffer(buf)
    addr = ctypes.addressof(view)
    del view
    buf[(3 << 20):(4 << 20)] = b"\0" * (1 << 20)  # one resident MiB of zeros; the other 7 never touched
    buf[(5 << 20) + 9] = 1  # and one page written
    assert drop_zero_pages([(addr, addr + size)]) == 1 << 20  # what left RSS, not the whole range
    assert buf[(5 << 20) + 9] == 1
    buf.close()


def test_nothing_is_dropped_outside_mapped_ranges():
    assert drop_zero_pages([]) == 0
    assert drop_zero_pages([(PAGE, 2 * PAGE)]) == 0  # not mapped: skipped, no crash


@pytest.fixture(scope="module")
def two_engines(chat_model_path):
    kept = Engine(chat_model_path, n_ctx=2048, parallel=2, kv_size=8192, threads=2)
    given = Engine(chat_model_path, n_ctx=2048, parallel=2, kv_size=8192, threads=2)
    yield kept, given
    kept.close()
    given.close()


def test_an_engine_that_gave_its_pages_back_answers_the_same(two_engines):
    kept, given = two_engines
    before = rss_kb()
    dropped = given.release_unused_memory()
    assert dropped > 150 << 20, dropped  # most of the 8,192-cell cache (180 MB) was never written
    assert before - rss_kb() > 150_000
    assert given.release_unused_memory() == 0  # once
    assert (given.kv_released_bytes, kept.kv_released_bytes) == (dropped, 0)  # what /api/stats reports
    params = SamplingParams(temperature=0.0, max_tokens=48)
    messages = [{"role": "user", "content": "My name is Zorblax. Write two sentences about a cat."}]
    answers = [[ev for ev in e.generate(messages, params) if isinstance(ev, Done)][0].text for e in (kept, given)]
    assert answers[0] == answers[1]
    assert answers[0].strip()


def test_the_scheduler_gives_pages_back_once_idle_with_every_slot_held():
    import threading
    import time
    from dataclasses import dataclass, field

    from fakes import FakeEngine

    from nanochat_lite.engines.scheduler import Scheduler

    @dataclass
    class Releasing(FakeEngine):
        parallel: int = 3
        seen: list[list[bool]] = field(default_factory=list)
        called: threading.Event = field(default_factory=threading.Event)
        sch: object = None

        def release_unused_memory(self) -> int:
            self.seen.append([s.busy for s in self.sch._slots])  # type: ignore[attr-defined]
            self.called.set()
            return 0

    fake = Releasing()
    sch = Scheduler(fake)
    fake.sch = sch
    try:
        deadline = time.monotonic() + 60
        while not fake.called.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.seen == [[True, True, True]]  # once, while the engine could run nothing else
        while any(s.busy for s in sch._slots) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not any(s.busy for s in sch._slots)  # and the slots were handed back
    finally:
        sch.close()
