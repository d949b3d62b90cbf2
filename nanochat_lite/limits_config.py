"""Load limits of `serve`: open connections, WebSockets, read timeouts, generations
per client, the queue-wait deadline. Named defaults, flags and environment variables.

Standard library only, so the CLI can add the flags without importing the web stack.
They are applied by `server/connlimits.py` (connections, timeouts, per client) and
the scheduler (queue wait). The queue cap itself is `--max-queue` (config.py).

| limit | flag | default |
|---|---|---|
| open connections (HTTP and WebSocket) | --max-connections | 256 |
| open WebSockets | --max-websockets | 64 |
| seconds to send a request's headers | --header-timeout | 10 |
| seconds to send a request's body | --body-timeout | 30 |
| generations at once per client (API key, else IP address) | --max-client-generations | 16 |
| seconds a generation may wait in the queue | --max-queue-wait | 120 |

A value of 0 turns a limit off.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, fields

from .config import ConfigError

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_WEBSOCKETS = 64
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_MAX_CLIENT_GENERATIONS = 16
DEFAULT_MAX_QUEUE_WAIT_S = 120.0
ENV_PREFIX = "NANOCHAT_LITE_"

# field -> (flag, environment variable, help)
_FLAGS: dict[str, tuple[str, str]] = {
    "max_connections": ("--max-connections", "open connections, WebSockets included; past it new ones get 503"),
    "max_websockets": ("--max-websockets", "open WebSockets; past it the handshake is refused (403)"),
    "header_timeout_s": ("--header-timeout", "seconds a client has to send a request's headers (408 after)"),
    "body_timeout_s": ("--body-timeout", "seconds a client has to send a request's body (408 after)"),
    "max_client_generations": ("--max-client-generations",
                               "generations queued or running at once per API key (or per IP address "
                               "without keys); past it 429 too_many_generations"),
    "max_queue_wait_s": ("--max-queue-wait", "seconds a generation may wait for a slot (503 queue_timeout after)"),
}


@dataclass(frozen=True)
class NetLimits:
    """Load limits; 0 (or 0.0) turns one off."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_websockets: int = DEFAULT_MAX_WEBSOCKETS
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_client_generations: int = DEFAULT_MAX_CLIENT_GENERATIONS
    max_queue_wait_s: float = DEFAULT_MAX_QUEUE_WAIT_S

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0:
                raise ConfigError(f"{_FLAGS[f.name][0]} must be 0 (off) or more, got {value}")

    @classmethod
    def from_args(cls, args: argparse.Namespace | None, env: Mapping[str, str]) -> NetLimits:
        """Flags win over NANOCHAT_LITE_MAX_CONNECTIONS-style variables, which win over
        the defaults. Raises ConfigError naming the flag or variable."""
        values: dict[str, float | int] = {}
        for f in fields(cls):
            flag = _FLAGS[f.name][0]
            var = ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
            kind = int if f.type in ("int", int) else float
            raw = getattr(args, f.name, None) if args is not None else None
            where = flag
            if raw is None and env.get(var, "").strip():
                raw, where = env[var].strip(), var
            if raw is None:
                continue
            try:
                values[f.name] = kind(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: expected {'a whole number' if kind is int else 'a number'}, "
                                  f"got {raw!r}") from None
        return cls(**values)  # type: ignore[arg-type]


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The `serve` flags read by NetLimits.from_args."""
    g = parser.add_argument_group("load limits (0 turns one off)")
    defaults = NetLimits()
    for f in fields(NetLimits):
        flag, text = _FLAGS[f.name]
        kind = int if f.type in ("int", int) else float
        g.add_argument(flag, dest=f.name, type=kind, metavar="N",
                       help=f"{text} (default {getattr(defaults, f.name):g})")
