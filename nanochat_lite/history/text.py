"""Text rules of the conversation store: titles made from a first message, text
SQLite and PostgreSQL can store, and FTS5 query expressions that can never be a syntax error.

Stdlib only; no database access here (see `sqlite.py`, `postgres.py`).
"""

from __future__ import annotations

import unicodedata

TITLE_CHARS = 60  # auto-titles are cut near here, at a word boundary, then "…" is added
MAX_TITLE_CHARS = 200  # rename() refuses longer titles
MAX_QUERY_TERMS = 32  # search() ignores words past this many

_CONTROL_TO_SPACE = {code: " " for code in (*range(0x20), *range(0x7F, 0xA0))}  # category Cc


def make_title(text: str) -> str:
    """A one-line title from a message: its first non-blank line, whitespace collapsed,
    cut at a word boundary near TITLE_CHARS with "…".

    `"\\n  How do I   bake\\tbread?\\nI have flour."` -> `"How do I bake bread?"`
    """
    for line in _clean(text).splitlines():
        line = _one_line(line)
        if line:
            break
    else:
        return ""
    if len(line) <= TITLE_CHARS:
        return line
    space = line.rfind(" ", 0, TITLE_CHARS + 1)
    head = line[:space] if space >= TITLE_CHARS // 2 else line[: _cluster_cut(line, TITLE_CHARS)]
    return (head.rstrip(" ,.;:-–—") or head) + "…"


def _clean(text: str) -> str:
    """Text SQLite can store: lone surrogates (possible from JSON "\\ud800") become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _one_line(text: str) -> str:
    """Whitespace runs and control characters (NUL, ESC: no place in a title shown in a
    terminal) collapse to single spaces: `" a\x1b[2J \t b "` -> `"a [2J b"`."""
    return " ".join(text.translate(_CONTROL_TO_SPACE).split())


def _clean_title(title: str) -> str:
    clean = _one_line(_clean(title))
    if len(clean) > MAX_TITLE_CHARS:
        raise ValueError(f"title has {len(clean)} characters; at most {MAX_TITLE_CHARS} allowed")
    return clean


def _cluster_cut(text: str, n: int) -> int:
    """An index <= n that does not split a character from its combining marks, a
    ZWJ emoji sequence or a flag (two regional indicators); n if none is found."""

    def joins(before: str, after: str) -> bool:
        return (
            unicodedata.category(after) in ("Mn", "Mc", "Me", "Sk")
            or after in "\u200d\ufe0e\ufe0f"
            or before == "\u200d"
        )

    def regional(ch: str) -> bool:
        return "\U0001f1e6" <= ch <= "\U0001f1ff"

    cut = n
    while cut > 0 and joins(text[cut - 1], text[cut]):
        cut -= 1
    if cut > 0 and regional(text[cut - 1]) and regional(text[cut]):
        run = 0
        while cut - run > 0 and regional(text[cut - run - 1]):
            run += 1
        cut -= run % 2  # an odd run before the cut ends in half a flag
    return cut or n


def _match_expression(query: str) -> str | None:
    """An FTS5 expression that cannot be a syntax error: each whitespace-separated word
    quoted (inner quotes doubled) and prefix-matched, all required. None if empty."""
    # say "hi   ->   "say" * """hi" *
    words = _clean(query).replace("\x00", " ").split()[:MAX_QUERY_TERMS]
    if not words:
        return None
    # A word with no letters, digits or symbols (")--") yields an empty phrase, which
    # FTS5 ignores; a query of nothing else matches nothing.
    return " ".join('"' + word.replace('"', '""') + '" *' for word in words)
