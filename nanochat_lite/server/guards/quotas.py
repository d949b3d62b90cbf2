"""Tokens per API key name, and the optional daily token quota of each key.

The runtime counts tokens when a generation ends (`Stats.end`) and knows nothing of
keys; the load-limits middleware (connlimits.py) knows the key of the request it is
serving. They meet through a context variable: the middleware sets `current_key` to
(key name, ledger) around the request, and `record_tokens` (called by `Stats.end`,
in the same task or a task started from it) adds the tokens to that key. A request
without a key (no keys configured) records nothing.

Days are UTC days: a quota of 100,000 tokens lets a key use 100,000 prompt +
completion tokens between two UTC midnights. The quota is checked when a request
starts, so the generation that crosses it finishes; later ones get 429
`quota_exceeded` until midnight UTC.

Not here: persistence (counts restart with the server), rate limits per second.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["TokenLedger", "current_key", "record_tokens"]


@dataclass
class _KeyTokens:
    prompt: int = 0
    completion: int = 0
    day: datetime.date | None = None  # the UTC day `today` counts
    today: int = 0  # prompt + completion tokens on `day`


def _utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


class TokenLedger:
    """Prompt and completion tokens per key name since start-up, and today's total.

    ledger = TokenLedger({"alice": 1000}); ledger.record("alice", 600, 500)
    ledger.quota_message("alice") -> "the API key 'alice' has used its daily quota ..."
    """

    def __init__(self, quotas: Mapping[str, int] | None = None) -> None:
        self.quotas: dict[str, int] = dict(quotas or {})  # key name -> tokens per UTC day
        self._keys: dict[str, _KeyTokens] = {}
        self._lock = threading.Lock()  # Stats.end may run on a worker thread

    def record(self, name: str, prompt: int, completion: int) -> None:
        today = _utc_today()
        with self._lock:
            k = self._keys.setdefault(name, _KeyTokens())
            k.prompt += prompt
            k.completion += completion
            if k.day != today:
                k.day, k.today = today, 0
            k.today += prompt + completion

    def used_today(self, name: str) -> int:
        k = self._keys.get(name)
        return k.today if k is not None and k.day == _utc_today() else 0

    def quota_message(self, name: str) -> str | None:
        """None while the key may start a generation; else why not (for a 429)."""
        quota = self.quotas.get(name)
        if quota is None:
            return None
        used = self.used_today(name)
        if used < quota:
            return None
        return (f"the API key {name!r} has used its daily quota of {quota:,} tokens ({used:,} used); "
                "it renews at midnight UTC")

    def snapshot(self, name: str) -> dict[str, int | None]:
        """{"prompt_tokens": 12, "completion_tokens": 40, "tokens_today": 52, "daily_token_quota": None}"""
        k = self._keys.get(name) or _KeyTokens()
        return {"prompt_tokens": k.prompt, "completion_tokens": k.completion, "tokens_today": self.used_today(name),
                "daily_token_quota": self.quotas.get(name)}

    def names(self) -> list[str]:
        return sorted(set(self._keys) | set(self.quotas))


# (key name, ledger) of the request being served; set by the load-limits middleware.
current_key: ContextVar[tuple[str, TokenLedger] | None] = ContextVar("nanochat_current_key", default=None)


def record_tokens(prompt: int, completion: int) -> None:
    """Add a finished generation's tokens to the key of the current request, if any."""
    entry = current_key.get()
    if entry is not None and (prompt or completion):
        name, ledger = entry
        ledger.record(name, prompt, completion)
