"""`serve`'s models: what `--model` (repeated) and `--models-dir` name, and how one loads.

Turns the flags into the registry's `ModelSpec`s (server/chat/models.py) — each
file's size, whether it has a chat template, the memory it will need (file + KV
cache, read from its header) — and gives the registry its `load` function: engine,
scheduler (with the shared system prefix) and prompt builder, each model its own.
A file in `--models-dir` that is not a readable, whole GGUF is listed as unusable
with the reason; the others serve. A `--model` that cannot be resolved stops the
start-up (CLIError), as it always has. `--engine openai:URL` beside `--model` or
`--models-dir` is one more entry, named by the upstream's model (`--engine-model`, or
the first it lists), built at start-up and never unloaded (it holds no memory here).

Not here: when models load or unload (the registry decides), the first model's load
at start-up (boot.py keeps its fast path).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config
from ..redact import redact_paths
from .common import CLIError, resolve_model

MB = 1 << 20
# What the rest of the server may need beside the chat models (the embeddings model
# loaded on first use ~90 MB, Python and the page ~150 MB, the documents' vectors),
# kept out of the default --models-memory.
MARGIN_MB = 512


def default_models_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The default --models-memory, in MB: MemAvailable at start, less a fifth of it (the
    page cache other programs rely on) and MARGIN_MB for the rest of this server. None
    when /proc/meminfo cannot tell (not Linux): then no bound.

    MemAvailable 22,100 MB -> 22,100 * 0.8 - 512 = 17,168 MB"""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) // 1024  # kB -> MB
                return max(1, int(available * 0.8) - MARGIN_MB)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _kv_bytes(path: Path, config: Config) -> int:
    from ..engines.local import kv_cache_bytes

    return kv_cache_bytes(path, max(config.kv_size or 2 * config.ctx_size, config.ctx_size), config.kv_type) or 0


def spec_for(path: Path, name: str, config: Config) -> Any:
    """The registry's view of a model file, read from its header (~0.1 s); a file that is
    not a whole GGUF is a spec marked unusable, with the reason (no path in it)."""
    from ..gguf import GGUFError, check, string_value
    from ..server.chat.models import ModelSpec

    try:
        size = path.stat().st_size
        check(path)
        has_template = config.chat_template is not None or bool(string_value(path, "tokenizer.chat_template"))
    except (GGUFError, OSError) as e:
        why = redact_paths(str(e.strerror if isinstance(e, OSError) and e.strerror else e))
        why = why.replace(f"{path}: ", "").replace(str(path), name)
        return ModelSpec(name=name, path=path, unusable=why)
    return ModelSpec(name=name, path=path, size_bytes=size, context=config.ctx_size, has_chat_template=has_template,
                     need_bytes=size + _kv_bytes(path, config))


def resolve_more(config: Config, first_name: str) -> list[tuple[Path, str]]:
    """The models after the first: the other --model values (resolved, pulled if needed),
    then --models-dir's .gguf files by file name (a name seen already is skipped).
    CLIError before the server binds for a --model that is not a model, a missing
    folder, a --pin that names nothing."""
    out: list[tuple[Path, str]] = []
    names = {first_name}
    for spec in config.more_models:
        p, n = resolve_model(dataclasses.replace(config, model=spec))
        if n in names:
            raise CLIError(f"--model {spec}: a model named {n!r} is given twice; pass each model once")
        names.add(n)
        out.append((p, n))
    if config.models_dir is not None:
        folder = config.models_dir
        if not folder.is_dir():
            raise CLIError(f"--models-dir {folder} is not a folder; pass the folder that holds the .gguf files")
        for p in sorted(folder.glob("*.gguf")):
            if p.stem not in names:
                names.add(p.stem)
                out.append((p, p.stem))
    for pinned in config.pin:
        if pinned not in names:
            raise CLIError(f"--pin {pinned}: no model of that name is served ({', '.join(sorted(names))})")
    return out


def model_specs(config: Config, first: tuple[Path | None, str], more: list[tuple[Path, str]],
                has_template: bool | None) -> list[Any]:
    """The registry's specs. With one model, its header is not read (start-up stays as
    fast as it was; nothing is ever unloaded to make room for it)."""
    from ..server.chat.models import ModelSpec

    path, name = first
    if path is None:  # --engine openai:URL
        specs = [ModelSpec(name=name, path=None, has_chat_template=has_template, upstream=config.engine_url())]
    elif not more:
        specs = [ModelSpec(name=name, path=path, size_bytes=_size(path), context=config.ctx_size,
                           has_chat_template=has_template)]
    else:
        specs = [spec_for(path, name, config)]
    return specs + [spec_for(p, n, config) for p, n in more]


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def adopt(spec: Any, engine: Any, scheduler: Any, *, measure: bool) -> Any:
    """The first model, loaded by boot.py's fast path, as a registry entry's `Loaded`
    (`measure`: read its KV figure now; with one model nobody needs it yet)."""
    from ..server.chat.models import Loaded

    def close() -> None:
        scheduler.close()
        engine.close()

    if spec.remote:  # the upstream holds the model: no memory, no tokenizer here
        return Loaded(scheduler=scheduler, prompts=engine.prompts, memory_bytes=0, close=close, health=engine.health)
    kv = (engine.describe_cache() or 0) if measure else 0
    return Loaded(scheduler=scheduler, prompts=engine.prompts, memory_bytes=(spec.size_bytes or 0) + kv, close=close,
                  tokenizer_factory=_tokenizer_factory(spec.path) if spec.path is not None else None)


def remote_name(engine: Any, names: list[str]) -> str:
    """The registry's name of an upstream served beside local models: the model it is
    asked for (`--engine-model`, else the first the upstream listed at start, else
    `openai:HOST`), with `@HOST:PORT` when a model here already has that name (an
    upstream that serves the same model as this server).

    "llama3" -> "llama3";  "smollm2-135m-instruct" taken -> "smollm2-135m-instruct@gpu:8000"
    """
    name = str(engine.name)
    return name if name not in names else f"{name}@{engine.upstream.host}:{engine.upstream.port}"


def build_registry(config: Config, first: tuple[Path | None, str], more: list[tuple[Path, str]], engine: Any,
                   scheduler: Any, max_queue_wait: float | None, remote: Any = None) -> Any:
    """The models served: the first, loaded by boot.py, adopted as it is; the others
    (--model B..., --models-dir) listed, loaded on their first request; `remote` (an
    upstream beside local models) adopted last, under `remote_name`. The memory bound
    applies only when there are several local models (one is never unloaded, and a
    remote holds no memory here)."""
    from ..engines.scheduler import Scheduler
    from ..server.chat.models import MB, ModelSpec, Registry

    if first[0] is None and more:  # --engine with --models-dir: the upstream's entry has its model's name,
        first = (None, remote_name(engine, [n for _, n in more]))  # as its answers say (alone: as it always was)
    specs = model_specs(config, first, more, getattr(engine.prompts, "has_chat_template", None))
    if remote is not None:
        specs.append(ModelSpec(name=remote_name(remote, [s.name for s in specs]), path=None,
                               upstream=config.engine_url()))
    budget_mb = (config.models_memory or default_models_memory()) if more else None
    registry = Registry(specs, loader(config, max_queue_wait=max_queue_wait),
                        budget_bytes=budget_mb * MB if budget_mb else None, pinned=config.pin)
    registry.adopt(first[1], adopt(specs[0], engine, scheduler, measure=bool(more)))
    if remote is not None:
        upstream = Scheduler(remote, max_queue=config.max_queue, shared_prefix=remote.prompts.shared_prefix,
                             max_queue_wait=max_queue_wait)
        registry.adopt(specs[-1].name, adopt(specs[-1], remote, upstream, measure=False))
    return registry


def loader(config: Config, *, max_queue_wait: float | None) -> Callable[[Any], Any]:
    """The registry's `load`: engine + scheduler + prompt builder for a spec (blocking).
    A file that cannot be used is ModelUnavailable, whose message names the model, not
    where its file is."""

    def load(spec: Any) -> Any:
        from ..engines.scheduler import Scheduler
        from ..server.chat.models import Loaded, ModelUnavailable
        from .common import load_engine

        if spec.remote:  # adopted at start-up and never unloaded: not loaded here
            raise ModelUnavailable("it is served by its upstream, which this server did not connect at start-up")
        if not spec.path.is_file():
            raise ModelUnavailable("its file is gone (deleted or moved since the server started); put it back, or "
                                   "restart the server without it")
        try:
            engine = load_engine(spec.path, spec.name, config)
        except CLIError as e:  # a diagnosis of the file, and the fix
            raise ModelUnavailable(redact_paths(str(e))) from None
        scheduler = Scheduler(engine, max_queue=config.max_queue, shared_prefix=engine.prompts.shared_prefix,
                              max_queue_wait=max_queue_wait)
        kv = engine.describe_cache() or 0

        def close() -> None:
            scheduler.close()  # waits for the threads that call the engine
            engine.close()

        return Loaded(scheduler=scheduler, prompts=engine.prompts, memory_bytes=(spec.size_bytes or 0) + kv,
                      close=close, tokenizer_factory=_tokenizer_factory(spec.path))

    return load


def _tokenizer_factory(path: Path) -> Callable[[], Any]:
    def make() -> Any:
        from ..tokenizer import Tokenizer

        try:
            return Tokenizer.from_gguf(path)
        except (ValueError, OSError) as e:  # what clients read names the file, not where it is
            raise ValueError(redact_paths(str(e))) from None

    return make


def describe(rows: list[dict[str, Any]], budget_bytes: int | None) -> str:
    """The banner's line about the models: how many, which are unusable, the memory bound."""
    bound = f"{budget_bytes // MB} MB" if budget_bytes is not None else "unbounded"
    bad = [r["name"] for r in rows if r["status"] == "unusable"]
    unusable = f" ({len(bad)} unusable: {', '.join(bad)})" if bad else ""
    return f"{len(rows)}{unusable}, loaded on demand within --models-memory {bound}"
