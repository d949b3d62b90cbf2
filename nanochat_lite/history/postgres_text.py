"""Text as the PostgreSQL store keeps and searches it: NUL escaped (PostgreSQL text
cannot hold it, see postgres.py's docstring) and user words turned into a prefix
tsquery that can never be a syntax error. No connection is kept here."""

from __future__ import annotations

import builtins
import re
from typing import Any

import psycopg

from .postgres_schema import _TS_CONFIG

_ESC = "\U0010fffd"  # a private-use character: the escape for NUL (see postgres.py's docstring)
_TSQUERY_LEXEME = re.compile(r"'(?:[^'\\]|''|\\.)*'")


def _prefix_query(conn: psycopg.Connection[Any], words: builtins.list[str]) -> str | None:
    """A tsquery (as text) requiring every word, each lexeme a prefix; None if no word
    has a lexeme. Each word goes through websearch_to_tsquery in quotes, so operators
    ("or", "-", quotes) are plain words: `content:hello` -> `'content':* <-> 'hello':*`."""
    rows = conn.execute(
        f"""SELECT websearch_to_tsquery('{_TS_CONFIG}', '"' || w || '"')::text
            FROM unnest(%s::text[]) WITH ORDINALITY AS t(w, i) ORDER BY i""",
        (words,),
    ).fetchall()
    parts = [text for (text,) in rows if text]
    if not parts:
        return None
    prefixed = " & ".join("(" + _TSQUERY_LEXEME.sub(lambda m: m.group(0) + ":*", p) + ")" for p in parts)
    try:
        with conn.transaction():  # a savepoint: a surprise in the text must not end the search
            conn.execute("SELECT %s::tsquery", (prefixed,))
        return prefixed
    except psycopg.DataError:
        return " & ".join(f"({p})" for p in parts)


def _enc(text: str | None) -> str | None:
    """Text PostgreSQL can store: `"a\\x00b"` -> `"a" + _ESC + "0b"` (reversible)."""
    if text is None or ("\x00" not in text and _ESC not in text):
        return text
    return text.replace(_ESC, _ESC + "1").replace("\x00", _ESC + "0")


def _dec(text: str | None) -> str | None:
    if text is None or _ESC not in text:
        return text
    return re.sub(_ESC + "([01])", lambda m: "\x00" if m.group(1) == "0" else _ESC, text)
