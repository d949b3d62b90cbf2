"""The model registry (server/chat/models.py) with a fake load function: which model is
unloaded to make room (least recently used, idle, not pinned), what is refused and how.

Memory figures are in MB for readability; the registry counts bytes."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nanochat_lite.server.chat.models import MB, Loaded, ModelSpec, ModelUnavailable, Registry
from nanochat_lite.server.wire.errors import RequestError


class FakeScheduler:
    def __init__(self) -> None:
        self.active = 0
        self.queued = 0
        self.closed = False


class Clock:
    """A clock tests advance by hand: last_used order is set, never raced."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def spec(name: str, mb: int, **kw: object) -> ModelSpec:
    return ModelSpec(name=name, path=Path(f"/m/{name}.gguf"), size_bytes=mb * MB, need_bytes=mb * MB, **kw)  # type: ignore[arg-type]


class Loads:
    """The load function: records loads and closes, memory as the spec estimated (or
    `measured` overrides it)."""

    def __init__(self, measured: dict[str, int] | None = None, fail: dict[str, Exception] | None = None) -> None:
        self.log: list[str] = []
        self.schedulers: dict[str, FakeScheduler] = {}
        self.measured = measured or {}
        self.fail = fail or {}

    def __call__(self, s: ModelSpec) -> Loaded:
        if s.name in self.fail:
            raise self.fail[s.name]
        self.log.append(f"load {s.name}")
        sched = FakeScheduler()
        self.schedulers[s.name] = sched

        def close() -> None:
            sched.closed = True
            self.log.append(f"unload {s.name}")

        return Loaded(scheduler=sched, prompts=object(), close=close,
                      memory_bytes=self.measured.get(s.name, s.need_bytes))


def use(reg: Registry, name: str | None) -> str:
    entry, _ = reg.acquire(name)
    reg.release(entry)
    return entry.name


def statuses(reg: Registry) -> dict[str, str]:
    return {r["name"]: r["status"] for r in reg.describe()}


def test_loads_on_first_use_and_the_first_is_the_default() -> None:
    loads = Loads()
    reg = Registry([spec("a", 100), spec("b", 100)], loads, budget_bytes=1000 * MB)
    assert statuses(reg) == {"a": "unloaded", "b": "unloaded"}
    assert use(reg, None) == "a"
    assert use(reg, "b") == "b"
    assert use(reg, "a") == "a"  # loaded already: not loaded twice
    assert loads.log == ["load a", "load b"]
    assert statuses(reg) == {"a": "loaded", "b": "loaded"}
    assert reg.loaded_memory() == 200 * MB


def test_least_recently_used_idle_model_is_unloaded_to_make_room() -> None:
    loads = Loads()
    reg = Registry([spec("a", 300), spec("b", 300), spec("c", 300)], loads, budget_bytes=700 * MB, clock=Clock())
    use(reg, "a")
    use(reg, "b")
    use(reg, "a")  # b is now the least recently used
    use(reg, "c")
    assert loads.log == ["load a", "load b", "unload b", "load c"]
    assert statuses(reg) == {"a": "loaded", "b": "unloaded", "c": "loaded"}
    assert loads.schedulers["b"].closed and not loads.schedulers["a"].closed


def test_measured_memory_counts_not_the_estimate() -> None:
    # b was estimated at 100 MB but measured 500 once loaded: c (200) no longer fits beside it.
    loads = Loads(measured={"b": 500 * MB})
    reg = Registry([spec("a", 100), spec("b", 100), spec("c", 200)], loads, budget_bytes=700 * MB, clock=Clock())
    use(reg, "a")
    use(reg, "b")
    use(reg, "c")
    assert loads.log == ["load a", "load b", "unload a", "load c"]
    assert reg.loaded_memory() == 700 * MB


def test_pinned_model_is_never_unloaded() -> None:
    loads = Loads()
    reg = Registry([spec("a", 300), spec("b", 300), spec("c", 300)], loads, budget_bytes=650 * MB,
                   pinned=["a"], clock=Clock())
    for name in ["a", "b", "c", "b", "c"]:
        use(reg, name)
    assert "unload a" not in loads.log
    assert loads.log == ["load a", "load b", "unload b", "load c", "unload c", "load b", "unload b", "load c"]
    with pytest.raises(RequestError) as e:
        reg.unload("a")
    assert (e.value.status, e.value.code) == (409, "model_pinned")


def test_a_busy_model_is_never_unloaded_the_request_waits_for_it_to_go_idle() -> None:
    loads = Loads()
    reg = Registry([spec("a", 300), spec("b", 300)], loads, budget_bytes=400 * MB, clock=Clock())
    use(reg, "a")
    loads.schedulers["a"].active = 1  # a generation runs on a
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(use(reg, "b")))
    waiter.start()
    # The waiter polls; it cannot load b while a generates. Give it many chances to misbehave.
    for _ in range(20):
        with reg._cv:
            reg._cv.wait(0.01)
        assert loads.log == ["load a"] and not loads.schedulers["a"].closed
    loads.schedulers["a"].active = 0  # the generation ends
    waiter.join(timeout=60)
    assert got == ["b"]
    assert loads.log == ["load a", "unload a", "load b"]


def test_a_leased_model_counts_as_busy() -> None:
    loads = Loads()
    reg = Registry([spec("a", 300), spec("b", 300)], loads, budget_bytes=400 * MB, idle_wait_s=0.0, clock=Clock())
    entry, _ = reg.acquire("a")  # a request between acquire and queueing its ticket
    with pytest.raises(RequestError) as e:
        reg.acquire("b")  # no wait allowed (idle_wait_s=0): refused rather than cutting a's request
    assert (e.value.status, e.value.code) == (503, "server_busy")
    assert loads.log == ["load a"]
    with pytest.raises(RequestError) as e:
        reg.unload("a")
    assert e.value.code == "model_busy"
    reg.release(entry)
    assert use(reg, "b") == "b"


def test_a_model_that_cannot_fit_even_alone_is_a_503_naming_the_numbers() -> None:
    loads = Loads()
    reg = Registry([spec("a", 100), spec("big", 900)], loads, budget_bytes=500 * MB)
    with pytest.raises(RequestError) as e:
        reg.acquire("big")
    assert (e.value.status, e.value.code) == (503, "model_too_large")
    assert "900 MB" in e.value.message and "500 MB" in e.value.message
    assert loads.log == []
    assert reg.entry("big").leases == 0


def test_pinned_memory_counts_against_fitting_alone() -> None:
    reg = Registry([spec("a", 300), spec("b", 300)], Loads(), budget_bytes=500 * MB, pinned=["a"])
    use(reg, "a")
    with pytest.raises(RequestError) as e:
        reg.acquire("b")
    assert e.value.code == "model_too_large" and "pinned models hold 300 MB" in e.value.message


def test_unknown_model_is_404_listing_the_names() -> None:
    reg = Registry([spec("a", 1), spec("b", 1)], Loads())
    with pytest.raises(RequestError) as e:
        reg.acquire("nope")
    assert (e.value.status, e.value.code) == (404, "model_not_found")
    assert "a, b" in e.value.message


def test_unusable_file_is_listed_with_its_reason_and_refused() -> None:
    loads = Loads()
    reg = Registry([spec("a", 1), ModelSpec(name="bad", path=Path("/m/bad.gguf"), unusable="truncated: x")], loads)
    rows = {r["name"]: r for r in reg.describe()}
    assert rows["bad"]["status"] == "unusable" and rows["bad"]["error"] == "truncated: x"
    with pytest.raises(RequestError) as e:
        reg.acquire("bad")
    assert (e.value.status, e.value.code) == (409, "model_unusable")
    assert use(reg, "a") == "a" and loads.log == ["load a"]


def test_a_failed_load_is_a_503_and_the_model_stays_unloaded() -> None:
    loads = Loads(fail={"b": RuntimeError("the file of b is gone")})
    reg = Registry([spec("a", 1), spec("b", 1)], loads)
    with pytest.raises(RequestError) as e:
        reg.acquire("b")
    assert (e.value.status, e.value.code) == (503, "model_error") and "is gone" in e.value.message
    row = next(r for r in reg.describe() if r["name"] == "b")
    assert row["status"] == "unloaded" and "is gone" in row["error"]
    assert reg.entry("b").leases == 0


def test_simultaneous_requests_for_one_model_load_it_once() -> None:
    gate = threading.Event()
    loads = Loads()

    def slow(s: ModelSpec) -> Loaded:
        gate.wait(60)
        return loads(s)

    reg = Registry([spec("a", 1), spec("b", 1)], slow)
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(use(reg, "b"))) for _ in range(5)]
    for t in threads:
        t.start()
    while reg.loading() != ["b"]:  # one of them is loading; the others wait for it
        with reg._cv:
            reg._cv.wait(0.01)
    gate.set()
    for t in threads:
        t.join(60)
    assert got == ["b"] * 5 and loads.log == ["load b"]


def test_unload_and_close() -> None:
    loads = Loads()
    reg = Registry([spec("a", 1), spec("b", 1)], loads)
    use(reg, "b")
    assert reg.unload("b") is True and reg.unload("b") is False
    use(reg, "a")
    reg.close()
    assert loads.log == ["load b", "unload b", "load a", "unload a"]
    with pytest.raises(RequestError) as e:
        reg.acquire("a")
    assert e.value.code == "server_shutdown"


def test_a_file_gone_or_damaged_is_a_409_and_tried_again_later() -> None:
    loads = Loads(fail={"b": ModelUnavailable("its file is gone")})
    reg = Registry([spec("a", 1), spec("b", 1)], loads)
    with pytest.raises(RequestError) as e:
        reg.acquire("b")
    assert (e.value.status, e.value.code) == (409, "model_unusable") and "its file is gone" in e.value.message
    del loads.fail["b"]  # the file is back
    assert use(reg, "b") == "b"
