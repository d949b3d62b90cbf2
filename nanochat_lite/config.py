"""Configuration: read once from flags and environment, then passed down.

This is the one module that reads environment variables: `Config.load` (the CLI) and
`Config.from_env` (standalone benchmark scripts) take a snapshot of them, and
`Config.env` carries that snapshot to the sub-configurations built at start-up
(`security_config.SecurityConfig`), so nothing else looks at `os.environ`.
Precedence: command-line flag, then environment variable, then default.

Not here: the flags themselves (each command declares its own in `commands/`), and
per-request settings (sampling fields travel with the request).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

# Flags that override one Config field of the same name when given (not None).
FLAG_FIELDS = ("model", "threads", "ctx_size", "host", "port", "seed", "parallel", "max_queue", "kv_size",
               "batch_size", "resume_window", "engine", "engine_key", "engine_model", "forwarded_allow_ips",
               "chat_template", "max_document_mb", "models_memory", "kv_type", "speculative")
MAX_RESUME_WINDOW_S = 3600.0
MAX_DOCUMENT_MB_LIMIT = 4096.0  # an upload is held in memory while it is parsed
# --speculative: llama.cpp's draft-free n-gram modes the local engine offers (the same tuple as
# engines/local.SPECULATIVE_MODES, which this room may not import; a test holds them equal).
SPECULATIVE_MODES = ("off", "ngram-simple", "ngram-map-k", "ngram-map-k4v")


class ConfigError(ValueError):
    """A setting the user can fix; the CLI prints it without a traceback (exit status 2)."""


def default_home(env: Mapping[str, str]) -> Path:
    """The model cache and data folder: $NANOCHAT_LITE_HOME, else $XDG_CACHE_HOME/nanochat-lite.

    {} -> ~/.cache/nanochat-lite;  {"NANOCHAT_LITE_HOME": "/data"} -> /data
    """
    if env.get("NANOCHAT_LITE_HOME"):
        return Path(env["NANOCHAT_LITE_HOME"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "nanochat-lite"


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    model: str = "smollm2-135m-instruct"  # a known model name or a path to a .gguf file
    threads: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    ctx_size: int = 4096  # one conversation's context window, in tokens
    # Slots generating at once. Measured on 2 cores, 10 simultaneous new chats: 10 slots
    # gave the same aggregate tokens/s as 4 (72 vs 67) and a third of the time to first
    # token (p50 1.1 s vs 3.5 s); a single stream decodes as fast either way, and idle
    # slots cost no memory since the KV cache is one pool shared by all (kv_size).
    parallel: int = 10
    max_queue: int = 64  # requests waiting for a slot; past it 503 server_busy
    kv_size: int | None = None  # KV cache shared by all slots; None = 2 × ctx_size
    # The KV cache's numbers. q8_0 (8 bits, with flash attention) measured against f16 on 2
    # quiet cores (scripts/kv_settings.py, 8,192 cells): idle RSS 258 vs 342 MB, load 286 vs
    # 330 ms, decode 91.7 vs 93.1 tok/s, prompt 230 vs 307 tok/s (a quarter slower). And
    # SmolLM2-135M, greedy, no longer recalls a name from two turns back with it ("My name is
    # Zorblax." ... "What is my name?" -> "My name is Elian", where f16 says Zorblax: the
    # restart test in tests/server/routes/test_conversations.py), so f16 stays the default.
    kv_type: str = "f16"
    # Draft-free speculative decoding (engines/local.py `_set_speculative`), a mode of
    # SPECULATIVE_MODES. Off: measured with scripts/spec_bench.py (2026-12-07, 3 rounds, a
    # shared machine at load 5-8, so the tok/s figures are noise), SmolLM2-135M kept 3-6 % of
    # the tokens drafted on chat answers, the commonest, against 22-58 % on code and 18-54 % on
    # JSON: on chat drafting is verification work with nothing to show for it. With one thread
    # (--threads 1, load 3-4) every mode was slower than off on every kind: chat 0.83-0.94x,
    # code 0.80-0.95x, JSON 0.65-0.98x (off ~70 tok/s).
    speculative: str = "off"
    # The engine's batch: the prefill piece of a prompt when no other stream is running.
    # While others stream, the scheduler hands a prompt over in pieces of ~0.25 s instead
    # (from 64 tokens; engines/scheduler.py `_prefill`): with one fixed 64-token chunk a
    # lone 3,070-token prompt took 22.6 s, with 512 15.6 s (llama-server: 18.5 s), and
    # three streams running beside it waited 0.89 s (64) to 3.6 s (256) between tokens.
    batch_size: int = 512
    # Seconds an answer keeps generating after its client's connection dropped (without
    # a stop), waiting for a resume; 0: cancelled at once. Finished answers stay
    # resumable from memory as long, then from the store.
    resume_window: float = 30.0
    home: Path = field(default_factory=lambda: default_home(os.environ))
    # Conversation store: a SQLite file, or a postgresql:// URL (kept as text: a Path would
    # fold its "//"); None = a SQLite file in the home folder.
    db: Path | str | None = None
    environment: str = "production"
    seed: int | None = None  # server-wide default seed; None = random per request
    # Generation by an OpenAI-compatible server instead of a model here: "openai:URL"
    # (its OpenAI base, e.g. openai:http://gpu:8000/v1), with its key and model name.
    engine: str | None = None
    engine_key: str | None = field(default=None, repr=False)
    engine_model: str | None = None
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated
    # addresses or networks, "*" for any): the client's address, and so its per-client
    # cap, comes from there. None: the header is ignored, whoever sends it (uvicorn
    # believes it from 127.0.0.1 by default, so any local script could rotate it).
    forwarded_allow_ips: str | None = None
    # --chat-template FILE|NAME: the chat template to use instead of the model's own (a
    # base model has none: without this, only raw prompts work). None: the model's.
    chat_template: str | None = None
    # The largest document upload, in MiB (POST /api/documents): larger is 413 too_large.
    max_document_mb: float = 50.0
    # Models served beside `model` (serve --model A --model B: A is `model`, the default;
    # B here), names of the catalog or .gguf paths; and --models-dir: every .gguf in it.
    more_models: list[str] = field(default_factory=list)
    models_dir: Path | None = None
    # --models-memory MB: the loaded models' memory (weights + KV cache) is kept under it by
    # unloading the least recently used idle one. None: what the machine can spare at
    # start (default_models_memory). --pin NAME: never unloaded.
    models_memory: int | None = None
    pin: list[str] = field(default_factory=list)
    # True when --model was given on the command line. With --engine it decides what the
    # upstream is: without --model it is the default model, as it always was (--models-dir's
    # files served beside it); with --model it is one more entry and the first --model the default.
    model_given: bool = False
    # The environment this configuration was read from, for the sub-configurations built
    # at start-up (API keys: NANOCHAT_LITE_API_KEY); empty when built by hand.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Defaults overridden by the environment (None: this process's), not yet checked."""
        env = dict(os.environ if env is None else env)
        c = cls(home=default_home(env), env=env)
        if env.get("HOST"):
            c.host = env["HOST"]
        if env.get("PORT"):
            c.port = _int(env["PORT"], "PORT")
        if env.get("NANOCHAT_LITE_MODEL"):
            c.model = env["NANOCHAT_LITE_MODEL"]
        if env.get("NANOCHAT_LITE_THREADS"):
            c.threads = _int(env["NANOCHAT_LITE_THREADS"], "NANOCHAT_LITE_THREADS")
        if env.get("NANOCHAT_LITE_CTX"):
            c.ctx_size = _int(env["NANOCHAT_LITE_CTX"], "NANOCHAT_LITE_CTX")
        if env.get("NANOCHAT_LITE_PARALLEL"):
            c.parallel = _int(env["NANOCHAT_LITE_PARALLEL"], "NANOCHAT_LITE_PARALLEL")
        if env.get("NANOCHAT_LITE_KV_TYPE"):
            c.kv_type = env["NANOCHAT_LITE_KV_TYPE"]
        if env.get("NANOCHAT_LITE_SPECULATIVE"):
            c.speculative = env["NANOCHAT_LITE_SPECULATIVE"]
        if env.get("NANOCHAT_LITE_MAX_QUEUE"):
            c.max_queue = _int(env["NANOCHAT_LITE_MAX_QUEUE"], "NANOCHAT_LITE_MAX_QUEUE")
        if env.get("NANOCHAT_LITE_RESUME_WINDOW"):
            c.resume_window = _float(env["NANOCHAT_LITE_RESUME_WINDOW"], "NANOCHAT_LITE_RESUME_WINDOW")
        if env.get("NANOCHAT_LITE_MAX_DOCUMENT_MB"):
            c.max_document_mb = _float(env["NANOCHAT_LITE_MAX_DOCUMENT_MB"], "NANOCHAT_LITE_MAX_DOCUMENT_MB")
        if env.get("NANOCHAT_LITE_DB"):
            c.db = db_setting(env["NANOCHAT_LITE_DB"])
        if env.get("NANOCHAT_LITE_ENV"):
            c.environment = env["NANOCHAT_LITE_ENV"]
        c.engine = env.get("NANOCHAT_LITE_ENGINE") or None
        c.engine_key = env.get("NANOCHAT_LITE_ENGINE_KEY") or None
        c.engine_model = env.get("NANOCHAT_LITE_ENGINE_MODEL") or None
        c.forwarded_allow_ips = env.get("NANOCHAT_LITE_FORWARDED_ALLOW_IPS") or None
        return c

    @classmethod
    def load(cls, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Config:
        """Flags over environment over defaults, then checked (ConfigError names the setting).

        `flags` is the parsed command line (`vars(args)`); a flag that is absent or None
        leaves the environment's value. `env` None = this process's environment.
        """
        c = cls.from_env(env)
        flags = flags or {}
        for name in FLAG_FIELDS:
            value = flags.get(name)
            if value is not None:
                setattr(c, name, value)
        c.model_given = flags.get("model") is not None
        if isinstance(c.model, list):  # --model given more than once: the first is the default
            c.model, c.more_models = c.model[0], list(c.model[1:])
        if flags.get("models_dir"):
            c.models_dir = Path(flags["models_dir"]).expanduser()
        c.pin = list(flags.get("pin") or [])
        if flags.get("home"):
            c.home = Path(flags["home"]).expanduser()
        if flags.get("db"):
            c.db = db_setting(flags["db"])
        c.check()
        return c

    def check(self) -> None:
        """Raise ConfigError for the first value out of range (limits llama.cpp and the OS accept)."""
        if self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if not 16 <= self.ctx_size <= 131072:
            raise ConfigError(f"--ctx-size must be between 16 and 131072 tokens, got {self.ctx_size}")
        if not 1 <= self.parallel <= 64:
            raise ConfigError(f"--parallel must be between 1 and 64 slots, got {self.parallel}")
        if not 0 <= self.max_queue <= 100_000:
            raise ConfigError(f"--max-queue must be between 0 and 100000, got {self.max_queue}")
        if self.kv_size is not None and self.kv_size < self.ctx_size:
            raise ConfigError(f"--kv-size ({self.kv_size}) must be at least --ctx-size ({self.ctx_size}): "
                              "one conversation must fit in the shared cache")
        if self.kv_type not in ("f16", "q8_0"):
            raise ConfigError(f"--kv-type must be f16 or q8_0, got {self.kv_type!r} (NANOCHAT_LITE_KV_TYPE?)")
        if not 16 <= self.batch_size <= 4096:
            raise ConfigError(f"--batch-size must be between 16 and 4096 tokens, got {self.batch_size}")
        if self.speculative not in SPECULATIVE_MODES:
            raise ConfigError(f"--speculative must be one of {', '.join(SPECULATIVE_MODES)}, got "
                              f"{self.speculative!r} (NANOCHAT_LITE_SPECULATIVE?)")
        if self.speculative != "off" and max(self.batch_size, self.parallel) // self.parallel < 2:
            # llama.cpp verifies every slot's draft in one batch (and aborts when they do not fit)
            raise ConfigError(f"--speculative {self.speculative} needs a batch of at least 2 tokens per slot: "
                              f"raise --batch-size ({self.batch_size}) to {2 * self.parallel} or lower --parallel "
                              f"({self.parallel})")
        if not 0 <= self.resume_window <= MAX_RESUME_WINDOW_S:
            raise ConfigError(f"--resume-window must be between 0 and {MAX_RESUME_WINDOW_S:g} seconds, "
                              f"got {self.resume_window:g}")
        if not 0 < self.max_document_mb <= MAX_DOCUMENT_MB_LIMIT:
            raise ConfigError(f"--max-document-mb must be above 0 and at most {MAX_DOCUMENT_MB_LIMIT:g}, "
                              f"got {self.max_document_mb:g}")
        if self.models_memory is not None and self.models_memory < 1:
            raise ConfigError(f"--models-memory must be at least 1 MB, got {self.models_memory}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, got {self.port}")
        if self.engine is not None:
            self.engine_url()
            if self.chat_template is not None and self.engine_first and self.models_dir is None:
                raise ConfigError("--chat-template applies to a model served here; with --engine the upstream "
                                  "server renders chats with its own template")

    @property
    def engine_first(self) -> bool:
        """--engine without --model: the upstream is the default model (with --models-dir,
        its files are served beside it); with --model, the first --model is the default and
        the upstream one more model entry."""
        return self.engine is not None and not self.model_given

    def engine_url(self) -> str | None:
        """The upstream's URL of --engine openai:URL (None: the built-in engine).

        "openai:http://gpu:8000/v1" -> "http://gpu:8000/v1"
        """
        if self.engine is None:
            return None
        kind, _, url = self.engine.partition(":")
        if kind != "openai" or not url.lower().startswith(("http://", "https://")):
            raise ConfigError(f"--engine {self.engine!r}: expected openai:URL with the OpenAI base URL of a "
                              "server, e.g. --engine openai:http://127.0.0.1:8000/v1")
        return url

    @property
    def db_path(self) -> Path | str:
        """The store to open: a SQLite file path, or a postgresql:// URL."""
        return self.db if self.db is not None else self.home / "conversations.sqlite3"


def db_setting(value: str) -> Path | str:
    """--db / NANOCHAT_LITE_DB: a postgresql:// (or postgres://) URL as given, else a path."""
    if value.lower().startswith(("postgresql://", "postgres://")):
        return value
    return Path(value).expanduser()


def _float(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number") from None
    if number != number:  # NaN passes every range check
        raise ConfigError(f"{name}={value!r} is not a number")
    return number


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number") from None
