"""The models one server serves: which are loaded, loading on demand, evicting by memory.

`Registry` holds one `Entry` per model given at start-up (`--model`, repeatable, and
every `.gguf` of `--models-dir`). A request asks for a model by name (`acquire`);
one that is not loaded is loaded then, by the `load` function start-up hands over
(engine + scheduler + prompt builder: each model its own), while the request waits.
Loaded models' memory (weights + KV cache, as the loader measured it) is bounded by
`budget_bytes`: to load one more, the least recently used *idle* model is unloaded
first — never a pinned one, never one with a generation running or queued, never one
a request is between `acquire` and `release` on (it holds a lease until its ticket
is queued, from when the scheduler's own counts protect it). A model that cannot fit
even alone is refused with a 503 naming both numbers.

Thread-safe: the blocking calls (`acquire`, `unload`) run off the event loop. Loads
run one at a time (two loads at once on 2 cores take as long as one after the
other, and the budget check would count neither).

A remote engine (`--engine openai:URL`) is one more entry, adopted loaded at start-up:
it holds no memory here, so it is never unloaded to make room (nor by an admin), and
its row's status is its upstream's: `loaded` while it answers, `error` naming it when not.

Not here: the engines (start-up builds them: this room never imports one), the
routes (routes/models.py), which model a conversation used (turns.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..wire.errors import RETRY_BUSY_S, RequestError

MB = 1 << 20
# How long a request waits for busy models to go idle so that its model fits, before
# a 503 (a guard against waiting forever behind a model that never stops working).
IDLE_WAIT_S = 300.0
POLL_S = 0.05  # the schedulers do not announce idleness: look this often while waiting


@dataclass(frozen=True)
class ModelSpec:
    """What is known of a model before it is loaded (from its file and header)."""

    name: str
    path: Path | None  # None: a remote engine
    size_bytes: int | None = None
    context: int | None = None  # tokens one conversation's context holds
    has_chat_template: bool | None = None
    need_bytes: int = 0  # estimated memory once loaded: weights + KV cache
    unusable: str | None = None  # why it cannot be loaded (a corrupt file): listed, never loaded
    upstream: str | None = None  # a remote engine's OpenAI base URL (path is None)

    @property
    def remote(self) -> bool:
        return self.path is None


@dataclass
class Loaded:
    """A loaded model: its scheduler (which owns the engine) and prompt builder."""

    scheduler: Any  # runtime.SchedulerLike
    prompts: Any  # runtime.Prompter
    memory_bytes: int  # measured at load: weights + KV cache
    close: Callable[[], None]  # stops the scheduler, then frees the engine
    load_ms: float = 0.0
    tokenizer_factory: Callable[[], Any] | None = None
    tokenizer: Any = None  # the runtime's Lazy for this model, made on first use
    # A remote engine's upstream state (RemoteEngine.health: `state`, `error`, `url`), read
    # for its row; None for a model loaded here.
    health: Callable[[], dict[str, Any]] | None = None


@dataclass
class Entry:
    spec: ModelSpec
    pinned: bool = False
    status: str = "unloaded"  # loaded | loading | unloading | unloaded | unusable
    loaded: Loaded | None = None
    last_used: float = 0.0  # monotonic seconds; 0: never
    leases: int = 0  # requests between acquire and release
    error: str | None = None  # the last load's failure
    loads: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def busy(self) -> bool:
        """A request holds it, or its scheduler runs or queues a generation."""
        s = self.loaded.scheduler if self.loaded is not None else None
        return self.leases > 0 or (s is not None and (s.active > 0 or s.queued > 0))


class ModelUnavailable(Exception):
    """Raised by a load function when the model's file cannot be used (deleted since
    start-up, damaged): the client gets 409 model_unusable with this message; the model
    stays listed, and is tried again on the next request (the file may be put back)."""


def not_found(name: str, names: Iterable[str]) -> RequestError:
    listed = ", ".join(names)
    return RequestError(f"no model named {name!r}; this server serves: {listed}", code="model_not_found",
                        status=404, param="model", extra={"models": list(names)})


class Registry:
    def __init__(self, specs: Sequence[ModelSpec], load: Callable[[ModelSpec], Loaded], *,
                 budget_bytes: int | None = None, pinned: Iterable[str] = (),
                 idle_wait_s: float = IDLE_WAIT_S, clock: Callable[[], float] = time.monotonic) -> None:
        if not specs:
            raise ValueError("a registry needs at least one model")
        self._entries: dict[str, Entry] = {}
        for s in specs:
            if s.name in self._entries:
                raise ValueError(f"two models are named {s.name!r}; rename one of the files")
            self._entries[s.name] = Entry(s, status="unusable" if s.unusable else "unloaded")
        for name in pinned:
            self.entry(name).pinned = True
        self.default = specs[0].name
        self.budget_bytes = budget_bytes
        self._load = load
        self._idle_wait_s = idle_wait_s
        self._clock = clock
        self._cv = threading.Condition()
        self._load_lock = threading.Lock()
        self.closed = False

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str | None) -> Entry:
        """The model named `name` (None: the default); 404 model_not_found listing the names."""
        e = self._entries.get(self.default if name is None else name)
        if e is None:
            raise not_found(str(name), self._entries)
        return e

    def loaded_memory(self) -> int:
        return sum(e.loaded.memory_bytes for e in self._entries.values() if e.loaded is not None)

    def loading(self) -> list[str]:
        return [e.name for e in self._entries.values() if e.status == "loading"]

    def loaded_entries(self) -> list[Entry]:
        return [e for e in self._entries.values() if e.loaded is not None]

    def adopt(self, name: str, loaded: Loaded) -> None:
        """A model start-up loaded by itself (the first one, on its fast path)."""
        with self._cv:
            e = self.entry(name)
            e.loaded, e.status = loaded, "loaded"
            e.loads += 1
            e.last_used = self._clock()
            self._cv.notify_all()

    # -- a request's use of a model -------------------------------------------------
    def try_acquire(self, name: str | None) -> tuple[Entry, Loaded] | None:
        """The model, leased, when it is loaded now (never blocks); else None."""
        with self._cv:
            e = self.entry(name)
            if e.status == "loaded" and e.loaded is not None:
                e.leases += 1
                e.last_used = self._clock()
                return e, e.loaded
        return None

    def acquire(self, name: str | None) -> tuple[Entry, Loaded]:
        """The model, loaded now if needed (blocking: the caller waits for the load),
        leased until `release`. RequestError: 404 unknown, 409 unusable, 503 too large for
        the budget, or the load failed."""
        with self._cv:
            e = self.entry(name)
            if e.spec.unusable:
                raise RequestError(f"the model {e.name!r} cannot be used: {e.spec.unusable}", code="model_unusable",
                                   status=409, param="model")
            e.leases += 1
        try:
            return e, self._ensure_loaded(e)
        except BaseException:
            self.release(e)
            raise

    def release(self, e: Entry) -> None:
        with self._cv:
            e.leases -= 1
            e.last_used = self._clock()
            self._cv.notify_all()

    def _ensure_loaded(self, e: Entry) -> Loaded:
        deadline = self._clock() + self._idle_wait_s
        while True:
            with self._cv:
                if self.closed:
                    raise RequestError("the server is shutting down", code="server_shutdown", status=503)
                if e.status == "loaded" and e.loaded is not None:
                    e.last_used = self._clock()
                    return e.loaded
                if e.status in ("loading", "unloading"):  # another request's load (or an unload): wait for it
                    self._cv.wait(POLL_S)
                    continue
                victims = self._room_for(e)
                if victims is None:  # busy models hold the memory: wait for one to go idle
                    if self._clock() > deadline:
                        raise RequestError(
                            f"the model {e.name!r} needs {e.spec.need_bytes // MB} MB and the loaded models, all "
                            f"busy, hold {self.loaded_memory() // MB} MB of the {self._budget_mb()} MB budget; "
                            "retry later", code="server_busy", status=503, retry_after=RETRY_BUSY_S)
                    self._cv.wait(POLL_S)
                    continue
                e.status = "loading"
                for v in victims:
                    v.status = "unloading"
            break
        for v in victims:
            self._close(v)
        return self._do_load(e)

    def _budget_mb(self) -> str:
        return "unbounded" if self.budget_bytes is None else str(self.budget_bytes // MB)

    def _room_for(self, e: Entry) -> list[Entry] | None:
        """The idle models to unload (least recently used first) so that `e` fits; None
        when busy ones stand in the way. Raises 503 when `e` cannot fit even alone (the
        pinned models' memory counted). Called holding the lock."""
        budget = self.budget_bytes
        if budget is None:
            return []
        need = e.spec.need_bytes
        pinned = sum(x.loaded.memory_bytes for x in self.loaded_entries()
                     if x.pinned and x is not e and x.loaded is not None)
        if need + pinned > budget:
            held = f" (pinned models hold {pinned // MB} MB)" if pinned else ""
            raise RequestError(f"the model {e.name!r} needs {need // MB} MB (weights + KV cache) and "
                               f"--models-memory is {budget // MB} MB{held}: it cannot be loaded; raise "
                               "--models-memory or lower --ctx-size", code="model_too_large", status=503,
                               param="model", extra={"need_mb": need // MB, "budget_mb": budget // MB})
        # A model another request is loading counts with its estimate: two loads racing
        # must not both find the same room.
        used = self.loaded_memory() + sum(x.spec.need_bytes for x in self._entries.values()
                                          if x.status == "loading" and x is not e)
        victims: list[Entry] = []
        for x in sorted(self.loaded_entries(), key=lambda x: x.last_used):
            if used + need <= budget:
                break
            if x is e or x.pinned or x.busy or x.status != "loaded" or x.spec.remote:  # a remote frees nothing
                continue
            victims.append(x)
            used -= x.loaded.memory_bytes if x.loaded else 0
        return victims if used + need <= budget else None

    def _do_load(self, e: Entry) -> Loaded:
        try:
            with self._load_lock:
                t0 = time.perf_counter()
                loaded = self._load(e.spec)
                loaded.load_ms = loaded.load_ms or (time.perf_counter() - t0) * 1000
        except BaseException as ex:
            with self._cv:
                e.status = "unloaded"
                e.error = str(ex) if isinstance(ex, Exception) else "interrupted"
                self._cv.notify_all()
            if isinstance(ex, RequestError):
                raise
            if isinstance(ex, ModelUnavailable):
                raise RequestError(f"the model {e.name!r} cannot be used: {ex}", code="model_unusable", status=409,
                                   param="model") from None
            if isinstance(ex, Exception):
                raise RequestError(f"the model {e.name!r} could not be loaded: {ex}", code="model_error",
                                   status=503, param="model") from None
            raise
        with self._cv:
            e.loaded, e.status, e.error = loaded, "loaded", None
            e.loads += 1
            e.last_used = self._clock()
            self._cv.notify_all()
            closing = self.closed
        if closing:  # the server stopped while this loaded: nobody else will close it
            self._close(e)
            raise RequestError("the server is shutting down", code="server_shutdown", status=503)
        return loaded

    def _close(self, e: Entry) -> None:
        loaded = e.loaded
        try:
            if loaded is not None:
                loaded.close()
        finally:
            with self._cv:
                e.loaded = None
                e.status = "unloaded"
                self._cv.notify_all()

    # -- admin ------------------------------------------------------------------------
    def unload(self, name: str) -> bool:
        """Unload a model now (blocking); False when it was not loaded. 409 when it is
        pinned or busy."""
        with self._cv:
            e = self.entry(name)
            if e.spec.remote:
                raise RequestError(f"the model {name!r} is served by its upstream ({e.spec.upstream or 'remote'}): "
                                   "nothing is loaded here to unload", code="model_remote", status=409, param="name")
            if e.status != "loaded":
                return False
            if e.pinned:
                raise RequestError(f"the model {name!r} is pinned (--pin): it stays loaded", code="model_pinned",
                                   status=409, param="name")
            if e.busy:
                raise RequestError(f"the model {name!r} is generating; unload it when it is idle", code="model_busy",
                                   status=409, param="name")
            e.status = "unloading"
        self._close(e)
        return True

    def close(self) -> None:
        """Unload every model (the server is stopping)."""
        with self._cv:
            self.closed = True
            entries = [e for e in self._entries.values() if e.status == "loaded"]
            for e in entries:
                e.status = "unloading"
        for e in entries:
            self._close(e)

    # -- what /api/models shows ---------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        now = self._clock()
        with self._cv:
            return [self._row(e, now) for e in self._entries.values()]

    def _row(self, e: Entry, now: float) -> dict[str, Any]:
        s = e.spec
        status = "unloaded" if e.status == "unloading" else e.status
        loaded = e.loaded
        error = s.unusable or e.error
        upstream = loaded.health() if loaded is not None and loaded.health is not None else None
        if upstream is not None and upstream.get("state") in ("unreachable", "error"):
            status, error = "error", upstream.get("error") or f"the upstream at {upstream.get('url')} does not answer"
        row: dict[str, Any] = {
            "name": e.name, "status": status, "default": e.name == self.default, "pinned": e.pinned,
            "size_bytes": s.size_bytes, "context": s.context, "has_chat_template": s.has_chat_template,
            "estimated_memory_bytes": s.need_bytes or None,
            "memory_bytes": loaded.memory_bytes if loaded is not None and not s.remote else None,
            "load_ms": round(loaded.load_ms, 1) if loaded is not None else None,
            "idle_s": round(now - e.last_used, 1) if e.last_used else None,
            "busy": e.busy, "error": error,
        }
        if s.remote:  # no file, no memory of its own here: the upstream's
            row["upstream"] = upstream.get("url") if upstream is not None else s.upstream
        return row
