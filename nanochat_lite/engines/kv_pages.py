"""Give the operating system back the engine's never-used KV cache pages.

llama.cpp allocates the whole KV cache at load and clears it with memset, so every page
of it is resident from the start (180 MB for SmolLM2-135M's default 8,192 cells),
though a cell is only written when a conversation reaches it. Anonymous private memory
that is all zeros can be dropped with madvise(MADV_DONTNEED): the kernel hands back a
zero-filled page on the next touch, so what the engine reads is unchanged, and the cache
grows in RSS as conversations fill it, like memory that was never cleared.

Only pages proven zero are dropped, checked 1 MiB at a time right before the drop,
and only in the large anonymous ranges mapped while llama.cpp loaded (`LoadWindow`:
its KV cache and compute buffers). The caller makes sure the engine is idle (the
scheduler holds every slot), and Python threads are kept from running meanwhile (the
calls keep the GIL and the switch interval is raised), so nothing writes a page
between its check and its drop. Linux only; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from collections.abc import Sequence

PAGE = mmap.PAGESIZE
CHUNK = 1 << 20
MIN_RANGE = 64 << 20  # only ranges this large: the KV cache and llama.cpp's buffers, not malloc's small ones
MADV_DONTNEED = 4

Range = tuple[int, int]


def anonymous_ranges(maps: str = "/proc/self/maps") -> list[Range]:
    """The process's private read-write mappings backed by no file (start, end)."""
    out: list[Range] = []
    with open(maps) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 5 and parts[1].startswith("rw") and parts[1].endswith("p"):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                out.append((start, end))
    return out


def subtract(ranges: Sequence[Range], minus: Sequence[Range]) -> list[Range]:
    """The parts of `ranges` that no range of `minus` covers."""
    out: list[Range] = []
    for a, b in ranges:
        pieces = [(a, b)]
        for c, d in minus:
            cut: list[Range] = []
            for x, y in pieces:
                if d <= x or c >= y:  # no overlap
                    cut.append((x, y))
                    continue
                if x < c:
                    cut.append((x, c))
                if d < y:
                    cut.append((d, y))
            pieces = cut
        out.extend(pieces)
    return out


def intersect(ranges: Sequence[Range], within: Sequence[Range]) -> list[Range]:
    return [(max(a, c), min(b, d)) for a, b in ranges for c, d in within if max(a, c) < min(b, d)]


class LoadWindow:
    """The anonymous ranges mapped between `__init__` and `close()`: what the model's load
    added. Empty where /proc/self/maps does not exist."""

    def __init__(self) -> None:
        try:
            self._before: list[Range] | None = anonymous_ranges()
        except OSError:
            self._before = None
        self.ranges: list[Range] = []

    def close(self) -> None:
        if self._before is None:
            return
        try:
            added = subtract(anonymous_ranges(), self._before)
        except OSError:
            return
        self.ranges = [r for r in added if r[1] - r[0] >= MIN_RANGE]


def drop_zero_pages(ranges: Sequence[Range]) -> int:
    """Drop the all-zero resident pages of those of `ranges` still mapped; returns the bytes
    of resident memory given back. The caller keeps the engine idle for the duration.

    Pages never touched are not resident (and not counted): reading them would only map
    the kernel's zero page, so a 1 MiB piece with no resident page is skipped unread.
    """
    if not ranges or not sys.platform.startswith("linux"):
        return 0
    try:
        live = intersect(ranges, anonymous_ranges())
    except OSError:
        return 0
    libc = ctypes.PyDLL(None)  # PyDLL: these calls keep the GIL
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    zero = ctypes.create_string_buffer(CHUNK)
    resident = ctypes.create_string_buffer(CHUNK // PAGE)  # one byte per page, bit 0: resident
    dropped = 0
    interval = sys.getswitchinterval()
    sys.setswitchinterval(60.0)  # no other Python thread runs between a check and its drop
    try:
        for start, end in live:
            for addr in range(start, end, CHUNK):
                n = min(CHUNK, end - addr)
                if libc.mincore(addr, n, resident) != 0:
                    continue
                flags = resident.raw[: n // PAGE]
                pages = [i for i, flag in enumerate(flags) if flag & 1]
                if not pages:
                    continue
                if libc.memcmp(addr, zero, n) == 0:
                    dropped += len(pages) * PAGE if libc.madvise(addr, n, MADV_DONTNEED) == 0 else 0
                    continue
                for i in pages:  # partly used: its zero pages one by one
                    page = addr + i * PAGE
                    if libc.memcmp(page, zero, PAGE) == 0 and libc.madvise(page, PAGE, MADV_DONTNEED) == 0:
                        dropped += PAGE
    finally:
        sys.setswitchinterval(interval)
    return dropped
