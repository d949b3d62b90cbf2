"""Serving statistics for `/api/stats`: counters and recent-window percentiles.

Percentiles cover the last `WINDOW` finished requests (a bounded deque, so memory
stays flat however long the server runs). Times are in milliseconds, except in the
`Histogram`s (seconds, as Prometheus expects), which cover every request since start
and feed `/metrics` (metrics.py).
"""

from __future__ import annotations

import bisect
import collections
import os
import time
from collections.abc import Sequence
from typing import Any

WINDOW = 1000
# Upper bounds of the histogram buckets, in seconds (+Inf is implied).
TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GENERATION_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile. percentile([1, 2, 3, 4], 50) -> 2."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return round(s[k], 2)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class Histogram:
    """Counts of observations per bucket, plus their sum: Prometheus's histogram.

    h = Histogram((0.1, 1.0)); h.observe(0.05); h.observe(0.5); h.observe(7)
    h.cumulative() -> [(0.1, 1), (1.0, 2), (inf, 3)]; h.sum -> 7.55
    """

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram bounds must be strictly increasing, got {bounds!r}")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound falls in that bucket (Prometheus's `le`).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append((bound, total))
        return out


class Stats:
    def __init__(self, startup_ms: float | None = None) -> None:
        self.started = time.time()
        self.startup_ms = startup_ms
        self.requests_total = 0
        self.requests_failed = 0
        self.requests_cancelled = 0
        self.rejected = 0  # refused because the queue was full
        # Refused inside a route, before anything was stored (quota_exceeded), by (status, code):
        # /metrics adds them to the middlewares' refusals.
        self.refused: collections.Counter[tuple[int, str]] = collections.Counter()
        self.tokens_cached = 0  # prompt tokens served from a slot's cache
        self.active = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self._latency: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self._ttft: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self._tps: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self.ttft_hist = Histogram(TTFT_BUCKETS_S)  # seconds
        self.latency_hist = Histogram(GENERATION_BUCKETS_S)  # seconds, queue wait included

    def begin(self) -> float:
        self.requests_total += 1
        self.active += 1
        return time.perf_counter()

    def end(self, t0: float, *, ok: bool, prompt_tokens: int = 0, completion_tokens: int = 0,
            ttft_ms: float | None = None, tokens_per_s: float | None = None, cancelled: bool = False,
            cached_tokens: int = 0) -> None:
        self.active -= 1
        if not ok:
            self.requests_failed += 1
            return
        if cancelled:
            self.requests_cancelled += 1
        self.tokens_in += prompt_tokens
        self.tokens_cached += cached_tokens
        self.tokens_out += completion_tokens
        latency_ms = (time.perf_counter() - t0) * 1000.0
        self._latency.append(latency_ms)
        self.latency_hist.observe(latency_ms / 1000.0)
        if ttft_ms is not None:
            self._ttft.append(ttft_ms)
            self.ttft_hist.observe(ttft_ms / 1000.0)
        if tokens_per_s:
            self._tps.append(tokens_per_s)

    def snapshot(self, *, queued: int, generating: int, model: str | None) -> dict[str, Any]:
        lat, ttft, tps = list(self._latency), list(self._ttft), list(self._tps)
        return {
            "model": model,
            "uptime_s": round(time.time() - self.started, 3),
            "startup_ms": self.startup_ms,
            "requests": {
                "total": self.requests_total,
                "active": self.active,
                "generating": generating,
                "queued": queued,
                "failed": self.requests_failed,
                "cancelled": self.requests_cancelled,
                "rejected_busy": self.rejected,
            },
            "tokens": {"prompt": self.tokens_in, "prompt_cached": self.tokens_cached, "completion": self.tokens_out},
            "latency_ms": {"p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99),
                           "count": len(lat)},
            "ttft_ms": {"p50": percentile(ttft, 50), "p95": percentile(ttft, 95), "count": len(ttft)},
            "decode_tokens_per_s": {
                "mean": round(sum(tps) / len(tps), 2) if tps else None,
                "last": round(tps[-1], 2) if tps else None,
            },
            "memory": {"rss_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes()},
        }
