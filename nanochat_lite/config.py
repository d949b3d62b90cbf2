"""Configuration: read once from flags and environment, then passed down.

No other module reads environment variables. Precedence: command-line flag, then
environment variable, then default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

ENV_VARS = {
    "host": "HOST",
    "port": "PORT",
    "model": "NANOCHAT_LITE_MODEL",
    "threads": "NANOCHAT_LITE_THREADS",
    "ctx_size": "NANOCHAT_LITE_CTX",
    "parallel": "NANOCHAT_LITE_PARALLEL",
    "max_queue": "NANOCHAT_LITE_MAX_QUEUE",
    "home": "NANOCHAT_LITE_HOME",
    "db": "NANOCHAT_LITE_DB",
    "environment": "NANOCHAT_LITE_ENV",
}


def default_home(env: Mapping[str, str]) -> Path:
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
    # Prefill chunk: between two chunks every other stream gets a token. Measured with
    # three streams running while a 3,070-token prompt arrives: longest gap 3.6 s at
    # 256, 1.9 s at 128, 0.89 s at 64, and the long prompt's first token as late
    # (30.2 s, 32.7 s, 30.9 s): small chunks cost the prefill almost nothing here.
    batch_size: int = 64
    home: Path = field(default_factory=lambda: default_home(os.environ))
    # Conversation store: a SQLite file, or a postgresql:// URL (kept as text: a Path would
    # fold its "//"); None = a SQLite file in the home folder.
    db: Path | str | None = None
    environment: str = "production"
    seed: int | None = None  # server-wide default seed; None = random per request

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Config":
        c = cls(home=default_home(env))
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
        if env.get("NANOCHAT_LITE_MAX_QUEUE"):
            c.max_queue = _int(env["NANOCHAT_LITE_MAX_QUEUE"], "NANOCHAT_LITE_MAX_QUEUE")
        if env.get("NANOCHAT_LITE_DB"):
            c.db = db_setting(env["NANOCHAT_LITE_DB"])
        if env.get("NANOCHAT_LITE_ENV"):
            c.environment = env["NANOCHAT_LITE_ENV"]
        return c

    @property
    def db_path(self) -> Path | str:
        """The store to open: a SQLite file path, or a postgresql:// URL."""
        return self.db if self.db is not None else self.home / "conversations.sqlite3"


def db_setting(value: str) -> Path | str:
    """--db / NANOCHAT_LITE_DB: a postgresql:// (or postgres://) URL as given, else a path."""
    if value.lower().startswith(("postgresql://", "postgres://")):
        return value
    return Path(value).expanduser()


class ConfigError(ValueError):
    pass


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number") from None
