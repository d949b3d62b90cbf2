"""`nanochat-lite serve`: start-up, in the order that gets the first token out soonest.

1. Resolve the model (a pulled model is checked by size, not hashed) and bind the
   socket: from here on a client's connection waits in the listen backlog instead of
   being refused.
2. Start loading the model in a thread, and let that thread reach llama.cpp's own load
   alone (~30 ms of Python: imports and parameters) before this one goes on.
3. Open the conversation store and import the web stack, beside the load. How much
   really overlaps depends on the build: the prebuilt xllamacpp holds the GIL while its
   constructor waits for the model, so this thread waits too; `scripts/build-native.sh`
   patches that, and then the web stack costs (nearly) nothing on the way to `ready`.
   Should start-up fail meanwhile, the load is waited for and closed before the error
   exits.
4. Serve. Until the engine is attached `/api/health` answers 503 "loading"; once it
   is, the banner prints how long all this took, counted from this interpreter's
   start. Then, in the background, the shared system prefix is computed once and
   copied into every slot, and our tokenizer loads after the first answer.

Skipped because the first token does not need them: llama.cpp's warm-up decode,
its weight repacking and its memory-fit trials (see `engines/local.py`).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .. import IMPORTED_AT, __version__
from ..config import Config
from ..redact import redact_paths
from .common import CLIError, load_engine, resolve_model
from .common import say as _say
from .serve_models import build_registry, describe, resolve_more


# How long start-up waits for llama.cpp's load to begin before going on beside the loader
# (~30 ms here; a bound, not a pause: the wait ends as the load begins).
NATIVE_HEAD_START_S = 1.0


def process_age_s() -> float:
    """Seconds since this process started (from /proc, 10 ms resolution)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def interpreter_start() -> float:
    """Wall-clock instant this Python interpreter started.

    /proc gives the process's start, which includes the interpreter's own start-up
    (~20-40 ms) — unless a shell `exec`'d us, when it is the shell's start, minutes
    ago (`scripts/serve.sh` does that). Our first import is never a second after the
    interpreter starts, so an older process start means "exec'd": then count from
    our first import instead."""
    process_start = time.time() - process_age_s()
    return process_start if IMPORTED_AT - process_start < 1.0 else IMPORTED_AT


def _bind(config: Config):
    import socket

    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as e:
        sock.close()
        raise CLIError(f"Cannot listen on {config.host}:{config.port}: {e.strerror}. "
                       "Pick another port with --port N (or PORT=N), or stop what is using it.") from None
    sock.listen(2048)
    return sock


def _port_of(sock, port_file: str | None) -> int:
    """The bound port (with --port 0, the one the OS picked), written to --port-file if
    given; the socket is closed if it cannot be."""
    port: int = sock.getsockname()[1]
    if port_file:
        try:
            _write_port_file(Path(port_file), port)
        except CLIError:
            sock.close()
            raise
    return port


def _write_port_file(path: Path, port: int) -> None:
    """--port-file: the port listened on, as soon as it is bound (before the model loads).

    Whoever started us with --port 0 reads it there instead of guessing a free port
    (which another process may take before we bind it). Written to a temp file and
    renamed: a reader sees the whole number or no file, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(f"{port}\n")
        os.replace(tmp, path)
    except OSError as e:
        raise CLIError(f"Cannot write the port to --port-file {path}: {e.strerror}. "
                       "Pass a path in a folder that exists and is writable.") from None


def _open_store(config: Config):
    from ..history import is_postgres_url, open_store

    try:
        return open_store(config.db_path)
    except Exception as e:  # sqlite3.Error, OSError, a newer schema, PostgreSQL unreachable
        if is_postgres_url(config.db_path):  # the message names the (password-less) URL and the fix
            raise CLIError(f"Cannot open the conversation store: {e}") from None
        raise CLIError(f"Cannot open the conversation store {config.db_path}: {e}. "
                       "Pass another file with --db PATH (or NANOCHAT_LITE_DB).") from None


def _documents(config: Config, runtime):
    """The document tables beside the conversations (same file or database), their
    vectors and the indexer (which embeds with the runtime's embedder and steps aside
    while a chat answer is being generated), opened later: on their first use, or when
    the server is first idle (_documents_when_idle). Opening imports numpy and reads every
    stored vector, which the first token does not need."""
    from ..documents.service import open_documents

    return open_documents(config.db_path, embedder=runtime.embedder_cache.get,
                          busy=lambda: runtime.generating > 0 or runtime.queued > 0,
                          max_bytes=int(config.max_document_mb * (1 << 20)), defer=True)


class _EngineLoader:
    """Loads the engine in a thread; `wait()` returns it or raises CLIError. `native`
    is set once llama.cpp's own load has begun (or the load ended without one)."""

    def __init__(self, path: Path | None, name: str, config: Config) -> None:
        self.engine = None
        self.error: str | None = None
        self._done = threading.Event()
        self.native = threading.Event()
        if path is None:  # an upstream: nothing of llama.cpp's to wait for
            self.native.set()
        threading.Thread(target=self._load, args=(path, name, config), name="nanochat-load", daemon=True).start()

    def _load(self, path: Path, name: str, config: Config) -> None:
        try:
            self.engine = (_remote_engine(config) if path is None
                           else load_engine(path, name, config, on_native_load=self.native.set))
        except CLIError as e:
            self.error = str(e)
        finally:
            self.native.set()
            self._done.set()

    def wait(self):
        self._done.wait()
        if self.error is not None:
            raise CLIError(self.error)
        return self.engine

    def discard(self) -> None:
        """Wait for the load to end and close what it made: start-up failed meanwhile, and
        a process that exits while llama.cpp is loading on another thread may crash."""
        self._done.wait()
        if self.engine is not None:
            self.engine.close()


def serve(config: Config, args: argparse.Namespace | None = None) -> int:
    from ..security_config import SecurityConfig

    t_start = interpreter_start()
    security = SecurityConfig.from_args(args, config.env, host=config.host)  # bad keys: exit before any work
    from ..limits_config import NetLimits

    limits = NetLimits.from_args(args, config.env)
    prefix_hook = _test_prefix_tokens(config.env)
    # --engine openai:URL alone: an upstream server generates; no model is loaded here.
    # Beside --model: one more model entry, its engine built while the first model loads.
    path, name = (None, config.engine_model or "upstream") if config.engine_first else resolve_model(config)
    more = resolve_more(config, name)  # --model B..., --models-dir: errors before binding
    sock = _bind(config)
    port = _port_of(sock, getattr(args, "port_file", None))
    loader = _EngineLoader(path, name, config)
    beside = _EngineLoader(None, "", config) if config.engine and path is not None else None
    store, runtime, documents, app, server = _beside_the_load(config, security, limits, (path, name),
                                                              [x for x in (loader, beside) if x is not None])
    failure: list[str] = []

    def attach() -> None:
        from ..engines.scheduler import Scheduler

        try:
            engine = loader.wait()
            remote = beside.wait() if beside is not None else None
        except CLIError as e:
            failure.append(str(e))
            runtime.set_error(redact_paths(str(e)))  # /api/health shows it: no paths
            server.should_exit = True
            return
        _give_signals_back(server)
        scheduler = Scheduler(engine, max_queue=config.max_queue,
                              shared_prefix=_shared_prefix(engine.prompts.shared_prefix, prefix_hook),
                              max_queue_wait=limits.max_queue_wait_s)
        runtime.registry = build_registry(config, (path, name), more, engine, scheduler, limits.max_queue_wait_s,
                                          remote)
        runtime.attach(scheduler, engine.prompts)
        if path is None and more:  # answers carry the upstream's entry's name (build_registry), not the engine's
            runtime.model_name = runtime.registry.default
        startup_ms = (time.time() - t_start) * 1000.0
        runtime.stats.startup_ms = round(startup_ms, 1)
        _banner(config, engine, path, port, startup_ms, app.state.security.exposure_warning())
        if more or remote is not None:
            _say(f"  Models:       {describe(runtime.registry.describe(), runtime.registry.budget_bytes)}")
            _preload_pinned(runtime.registry, [n for n in config.pin if n != name])
        if path is not None:  # an upstream has its own tokenizer and cache
            _tokenizer_when_idle(runtime, server, engine)
        _documents_when_idle(runtime, server, documents)

    threading.Thread(target=attach, name="nanochat-attach", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        runtime.close()
        if prefix_hook is not None:  # the test hook: the engine calls close() waited for, or not
            print(f"{PREFIX_HOOK_EXIT} {getattr(runtime.scheduler, 'prefix_tokens', 0)}", file=sys.stderr, flush=True)
        documents.close()  # the indexer stops after its current batch's document
        for engine in (loader.engine, beside.engine if beside is not None else None):
            if engine is not None:
                engine.close()
        store.close()
    if failure:
        raise CLIError(failure[0])
    return 0


def _beside_the_load(config: Config, security, limits, model: tuple[Path | None, str],
                     loaders: list[_EngineLoader]):
    """The store, the runtime, the app and uvicorn, built while the model loads (its loader is
    `loaders[0]`). Should any of it fail, the loads are waited for and closed before the error
    goes on: a process that exits while llama.cpp loads on another thread may crash."""
    path, name = model
    try:
        # The loader's own Python (imports, parameters) runs alone first: beside this thread's
        # work it would get the GIL only half the time. With a build whose load releases the
        # GIL (scripts/build-native.sh) everything below then runs beside llama.cpp's load.
        loaders[0].native.wait(NATIVE_HEAD_START_S)
        store = _open_store(config)

        from ..server import Runtime, create_app  # the web stack, imported while the model loads

        runtime = Runtime(store=store, model_name=name, embedder_factory=_embedder_factory(config),
                          tokenizer_factory=_tokenizer_factory(path), resume_window_s=config.resume_window)
        if config.seed is not None:
            from ..generation import SamplingParams
            runtime.defaults = SamplingParams(seed=config.seed)
        documents = _documents(config, runtime)
        app = create_app(runtime, security=security, documents=documents)
        server = _uvicorn_server(config, app, runtime, limits, security)
        if path is not None:  # what the loader needs after llama.cpp's load, imported here meanwhile
            from ..engines.local import import_after_load

            import_after_load()
        return store, runtime, documents, app, server
    except BaseException:
        for started in loaders:
            started.discard()
        raise


def _tokenizer_factory(path):
    """What loads our tokenizer for the model at `path` (None for an upstream: it has its own)."""
    if path is None:
        return None

    def make_tokenizer():
        from ..tokenizer import Tokenizer

        try:
            return Tokenizer.from_gguf(path)
        except (ValueError, OSError) as e:  # what clients read names the file, not where it is
            raise ValueError(redact_paths(str(e))) from None

    return make_tokenizer


def _preload_pinned(registry, names: list[str]) -> None:
    """--pin NAME: loaded now, in the background (the first model is loaded already)."""
    def load() -> None:
        for n in names:
            try:
                entry, _ = registry.acquire(n)
                registry.release(entry)
            except Exception as e:  # RequestError: too large, a broken file; the others serve
                _say(f"--pin {n}: {e}")

    if names:
        threading.Thread(target=load, name="nanochat-pinned", daemon=True).start()


def _uvicorn_server(config: Config, app, runtime, limits, security):
    """uvicorn around the app, with the load limits outermost (connection cap and read
    timeouts in the HTTP protocol; WebSocket cap, generations per client before the app)."""
    import uvicorn

    from ..server.chat.shutdown import GracefulServer, ShutdownGate
    from ..server.guards.connlimits import ConnLimitsMiddleware, uvicorn_options
    from ..server.observe.metrics import enable_access_log
    from ..server.wire.limits import MAX_WS_FRAME_BYTES

    refused = app.state.metrics.count_refused
    served = ConnLimitsMiddleware(app, limits, security=security, on_refused=refused)
    enable_access_log()  # one line per request on stderr (logger nanochat_lite.access)
    # On SIGTERM/SIGINT: 503 server_shutdown for new requests, running answers end and
    # are stored as interrupted, their clients get a final event; then exit status 0.
    # One WebSocket frame limit: the app's (uvicorn closes a larger frame with 1009 before
    # the app sees it). X-Forwarded-For only from the proxies named by --forwarded-allow-ips.
    return GracefulServer(uvicorn.Config(
        ShutdownGate(served, runtime), log_level="warning", access_log=False, lifespan="off",
        ws_max_size=MAX_WS_FRAME_BYTES, proxy_headers=config.forwarded_allow_ips is not None,
        forwarded_allow_ips=config.forwarded_allow_ips or "", timeout_graceful_shutdown=2,
        **uvicorn_options(limits, refused),
    ), runtime)


def _give_signals_back(server) -> None:
    """llama.cpp's server engine installs its own SIGINT/SIGTERM handlers when it starts
    (they would stop only the engine); give them back to uvicorn. Done (and waited for)
    before the engine is attached and "Ready" printed: a Ctrl-C in between would otherwise
    stop only the engine and leave the server up."""
    while not server.started and not server.should_exit:
        time.sleep(0.002)
    if server.servers:
        restored = threading.Event()

        def restore() -> None:
            _reinstall_signal_handlers()
            restored.set()

        server.servers[0].get_loop().call_soon_threadsafe(restore)
        restored.wait(5.0)


def _banner(config: Config, engine, path: Path | None, port: int, startup_ms: float, warning: str | None) -> None:
    host = f"[{config.host}]" if ":" in config.host else config.host
    where = f"({path})" if path else f"from {engine.upstream.url}"
    engine_line = (f"{engine.threads} threads · {engine.parallel} slots · context {engine.n_ctx} tokens per "
                   f"chat, {engine.kv_size} shared") if path else f"up to {engine.parallel} answers at once upstream"
    print(f"Nanochat-Lite {__version__}\n"
          f"  Model:        {engine.name} {where}\n"
          f"  Environment:  {config.environment} · {engine_line}\n"
          f"  Startup time: {startup_ms:.0f} ms (from interpreter start)\n"
          f"  Ready at:     http://{host}:{port}", flush=True)
    if warning:
        print(f"  WARNING:      {warning}", flush=True)


def _tokenizer_when_idle(runtime, server, engine) -> None:
    """The project's tokenizer (same ids as llama.cpp's, faster) counts tokens, builds
    prompts and serves /api/tokenize. Loading it (and reading the GGUF header for the
    KV-cache figure) is ~0.5 s of Python holding the GIL: measured, doing it right after the
    first answer stalled the next wave of requests (10 chats: TTFT 3.4 s instead of 1.1 s).
    So it waits for IDLE_BEFORE_LOAD_S without traffic; until then llama.cpp tokenizes,
    through the internal API."""
    if not _wait_idle(runtime, server):
        return
    try:
        runtime.load_tokenizer()
    except Exception as e:  # an unsupported vocabulary: llama.cpp's tokenizer stays
        _say(f"note: {e}; token counting uses llama.cpp's tokenizer")
    engine.describe_cache()


def _documents_when_idle(runtime, server, documents) -> None:
    """Open the documents (numpy, every stored vector: 0.1 s to a few seconds of Python)
    when the server is idle, as the tokenizer; a document request before then opens them
    itself. A failure is logged here and answered 503 by the document routes."""
    if not _wait_idle(runtime, server):
        return
    try:
        documents.open()
    except Exception as e:  # DocumentsUnavailable, already logged
        _say(f"note: {redact_paths(str(e))}; the document routes answer 503 until it opens")


def _wait_idle(runtime, server) -> bool:
    """Until nothing has been generated or queued for IDLE_BEFORE_LOAD_S; False if the
    server is stopping."""
    idle_since = time.monotonic()
    while not server.should_exit:
        now = time.monotonic()
        if runtime.generating or runtime.queued or runtime.stats.active:
            idle_since = now
        elif now - idle_since >= IDLE_BEFORE_LOAD_S:
            return True
        time.sleep(0.1)
    return False


def _remote_engine(config: Config):
    """The engine for --engine openai:URL (remote.py); a bad URL is a CLIError."""
    from ..engines.remote import RemoteEngine

    try:
        return RemoteEngine(config.engine_url() or "", key=config.engine_key, model=config.engine_model,
                            parallel=config.parallel)
    except ValueError as e:
        raise CLIError(f"--engine: {e}") from None


# Seconds without a request before the background loads (our tokenizer, the GGUF header).
IDLE_BEFORE_LOAD_S = 2.0


def _reinstall_signal_handlers() -> None:
    """Re-register Python's current SIGINT/SIGTERM handlers (main thread only)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is not None:
            signal.signal(sig, handler)


def _embedder_factory(config: Config):
    def make():
        from .. import models
        from ..embeddings import Embedder

        try:
            return Embedder(models.ensure(config.home, models.DEFAULT_EMBEDDING, progress=_say),
                            threads=config.threads)
        except Exception as e:  # what clients read names the file, not where it is
            _say(f"embeddings: {e}")
            raise RuntimeError(redact_paths(str(e))) from None

    return make


# -- a test hook -----------------------------------------------------------------------
# NANOCHAT_LITE_TEST_PREFIX_TOKENS=N, for tests/server/test_shutdown_race.py only: the
# background shared-prefix job evaluates N tokens (the real prefix, repeated) instead of
# the real ~24, and prints PREFIX_HOOK_LINE on stderr just before. Its engine call then
# lasts seconds, so a SIGTERM sent when that line appears lands inside it every time
# (sent after fixed sleeps, it missed the ~0.2 s copy one run in three). Before the
# engine closes, PREFIX_HOOK_EXIT says how many prefix tokens the slots hold: all N
# when the scheduler's close() waited for that call to end (closing the engine under
# it crashes the process only about 6 times in 10). Read once at start-up; nothing on
# a request's path looks at it.
TEST_PREFIX_ENV = "NANOCHAT_LITE_TEST_PREFIX_TOKENS"
PREFIX_HOOK_LINE = "test hook: evaluating the shared prefix"
PREFIX_HOOK_EXIT = "test hook: shared-prefix tokens in the slots as the engine closes:"


def _test_prefix_tokens(env: Mapping[str, str]) -> int | None:
    raw = env.get(TEST_PREFIX_ENV)
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= 4096:
        raise CLIError(f"{TEST_PREFIX_ENV} must be a token count between 1 and 4096, got {raw!r} "
                       "(it is a test hook: unset it)")
    return n


def _shared_prefix(real: Callable[[], list[int]], pad_to: int | None) -> Callable[[], list[int]]:
    """The scheduler's shared-prefix source: `real`, or with the test hook, `real`
    repeated to `pad_to` tokens, announced on stderr."""
    if pad_to is None:
        return real

    def padded() -> list[int]:
        tokens = real() or [0]
        tokens = (tokens * (pad_to // len(tokens) + 1))[:pad_to]
        print(f"{PREFIX_HOOK_LINE} ({len(tokens)} tokens)", file=sys.stderr, flush=True)
        return tokens

    return padded
