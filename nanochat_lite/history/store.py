"""What every conversation store is: the `Store` protocol, the records it returns, its
errors, and the rules both backends share (argument checks, export rendering).

The backends (`sqlite.py`, `postgres.py`) give the same answers to the same calls: the
same ids, order, paging, titles, statuses and search-hit shape. The server depends on
this module's names only, never on a backend.

Every conversation and message has an owner: the API key's name, or `LOCAL_OWNER`
("local") for a server without keys (and for rows stored before owners existed). Every
method that reads or changes conversations takes `owner=` and sees that owner's rows
only: another owner's id is answered exactly as an id that does not exist (None,
NotFound, False, no hit). Reads also take `owner=None`, every owner's rows (an admin's
view); writes never do. Token usage is kept per owner and UTC day (`Usage`).

Stdlib only; no database access here.
"""

from __future__ import annotations

import builtins
import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

ROLES = ("system", "user", "assistant")
# "streaming": an answer still being generated (its text is saved as it grows); a
# server that stops without finishing it leaves it to `interrupt_streaming()`.
# "length": an answer cut by its max_tokens or the owner's quota, not ended by the model.
STATUSES = ("complete", "length", "stopped", "failed", "interrupted", "streaming")
FINAL_STATUSES = ("complete", "length", "stopped", "failed", "interrupted")
MARK_START, MARK_END = "«", "»"  # wrap matched words in search snippets; plain text, no HTML
EXPORT_FORMATS = ("json", "markdown")

LOCAL_OWNER = "local"  # the owner of rows made without an API key

_ID_RE = re.compile(r"[0-9A-Za-z_-]{1,64}")
_OWNER_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # an API key's name (security_config.py)
_DAY_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CLIENT_ID_RE = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no spaces


@dataclass
class Message:
    id: int
    conversation_id: str
    role: str  # "system" | "user" | "assistant"
    content: str
    status: str  # "complete" | "length" | "stopped" | "failed" | "interrupted" | "streaming"
    created_at: float  # unix seconds
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None  # milliseconds, request start to first token
    duration_ms: float | None = None  # milliseconds, whole generation
    model: str | None = None
    params: dict[str, Any] | None = None  # sampling parameters as given
    # A user message: the id the client gave it (re-sending it does not store it twice).
    client_id: str | None = None
    # The answer's id on the wire: on the assistant message, and on the user message
    # that asked for it.
    answer_id: str | None = None
    # An answer grounded in the owner's documents: the sources its prompt numbered
    # ([{"n", "document_id", "name", "page", "text", "score"}]) and how they were
    # chosen ("search" or "whole"); None for every other message.
    citations: builtins.list[dict[str, Any]] | None = None
    documents_mode: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Conversation:
    id: str  # uuid4 hex unless the caller chose one
    title: str  # "" until set by rename() or by the first user message
    system: str | None
    created_at: float  # unix seconds
    updated_at: float  # unix seconds of the last message (or creation)
    message_count: int
    owner: str = LOCAL_OWNER  # the API key's name that created it, or "local"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Usage:
    """One owner's tokens on one UTC day. `reserved_tokens`: held by requests still
    generating (reserve_usage), given back or turned into used tokens by settle_usage."""

    owner: str
    day: str  # "2026-11-30", UTC
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reserved_tokens: int = 0
    requests: int = 0  # settled generation requests

    @property
    def counted(self) -> int:
        """What the day's quota is measured against: used plus reserved tokens."""
        return self.prompt_tokens + self.completion_tokens + self.reserved_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NotFound(KeyError):
    """No conversation with this id."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else "not found"


class AlreadyExists(ValueError):
    """create() was given a conversation_id that is already taken."""


class StoreError(RuntimeError):
    """The database cannot be used; the message names it and the fix."""


class StorageUnavailable(StoreError):
    """The database is there but cannot answer now: locked by another process past the
    busy timeout, full, read-only, an I/O error or a lost connection. The server answers
    503 `storage_unavailable`; retrying later may work."""


@runtime_checkable
class Store(Protocol):
    """A conversation store. Every method blocks (call it from a worker thread, never
    from the event loop) and is safe to call from several threads at once. Every write
    has been committed durably when the method returns.

    `owner`: whose rows the call sees (see the module docstring); `None` (reads only):
    every owner's."""

    def close(self) -> None: ...
    def __enter__(self) -> Store: ...
    def __exit__(self, *exc: object) -> None: ...

    def create(self, *, system: str | None = None, title: str | None = None,
               conversation_id: str | None = None, owner: str = LOCAL_OWNER) -> Conversation: ...
    def get(self, conversation_id: str, *, owner: str | None = LOCAL_OWNER) -> Conversation | None: ...
    def list(self, *, limit: int = 20, offset: int = 0,
             owner: str | None = LOCAL_OWNER) -> tuple[builtins.list[Conversation], int]: ...
    def rename(self, conversation_id: str, title: str, *, owner: str = LOCAL_OWNER) -> Conversation: ...
    def set_system(self, conversation_id: str, system: str | None, *, owner: str = LOCAL_OWNER) -> None: ...
    def delete(self, conversation_id: str, *, owner: str = LOCAL_OWNER) -> bool: ...

    def messages(self, conversation_id: str, *, owner: str | None = LOCAL_OWNER) -> builtins.list[Message]: ...
    def add_message(self, conversation_id: str, role: str, content: str, *, status: str = "complete",
                    prompt_tokens: int | None = None, completion_tokens: int | None = None,
                    ttft_ms: float | None = None, duration_ms: float | None = None,
                    model: str | None = None, params: dict[str, Any] | None = None,
                    client_id: str | None = None, answer_id: str | None = None,
                    owner: str = LOCAL_OWNER, citations: builtins.list[dict[str, Any]] | None = None,
                    documents_mode: str | None = None) -> Message: ...
    def update_message(self, message_id: int, content: str, *, status: str,
                       prompt_tokens: int | None = None, completion_tokens: int | None = None,
                       ttft_ms: float | None = None, duration_ms: float | None = None) -> None: ...
    def message_by_client_id(self, client_id: str, *, owner: str = LOCAL_OWNER) -> Message | None: ...
    def answer_message(self, answer_id: str, *, owner: str = LOCAL_OWNER) -> Message | None: ...
    def interrupt_streaming(self) -> int: ...

    def search(self, query: str, *, limit: int = 20,
               owner: str | None = LOCAL_OWNER) -> builtins.list[dict[str, Any]]: ...
    def unembedded(self, model: str, *, limit: int,
                   owner: str | None = LOCAL_OWNER) -> builtins.list[tuple[int, str]]: ...
    def put_vectors(self, model: str, vectors: builtins.list[tuple[int, bytes]]) -> None: ...
    def vectors(self, model: str, *,
                owner: str | None = LOCAL_OWNER) -> builtins.list[tuple[dict[str, Any], bytes]]: ...
    def export(self, conversation_id: str, fmt: str, *, owner: str | None = LOCAL_OWNER) -> str: ...
    def integrity_check(self) -> str: ...

    def reserve_usage(self, owner: str, day: str, want: int, *, quota: int, minimum: int = 1) -> int: ...
    def settle_usage(self, owner: str, day: str, *, reserved: int, prompt_tokens: int,
                     completion_tokens: int, requests: int = 1) -> None: ...
    def usage(self, *, owner: str | None = None, day: str | None = None) -> builtins.list[Usage]: ...


# -- rules shared by the backends ------------------------------------------------------

HIT_KEYS = ("conversation_id", "title", "message_id", "role", "snippet", "created_at", "score")


def check_conversation_id(cid: object) -> str:
    if not isinstance(cid, str) or not _ID_RE.fullmatch(cid):
        raise ValueError(
            f"conversation_id {cid!r}: expected 1-64 characters of 0-9, A-Z, a-z, _ or -"
        )
    return cid


def check_message(role: str, status: str, content: object) -> None:
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if status not in STATUSES:
        raise ValueError(f"status {status!r}: expected one of {', '.join(STATUSES)}")
    if not isinstance(content, str):
        raise TypeError(f"content must be str, got {type(content).__name__}")


def check_client_id(value: object, name: str = "client_id") -> str | None:
    """None, or 1-64 printable ASCII characters (a client's own id for a message or answer)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _CLIENT_ID_RE.fullmatch(value):
        raise ValueError(f"{name} {value!r}: expected 1-64 printable ASCII characters")
    return value


def check_owner(owner: object, *, any_allowed: bool = False) -> str | None:
    """An owner: an API key's name (1-64 of A-Z, a-z, 0-9, '_', '.', '-') or "local";
    None only where every owner's rows may be read (`any_allowed`)."""
    if owner is None and any_allowed:
        return None
    if not isinstance(owner, str) or not _OWNER_RE.fullmatch(owner):
        raise ValueError(f"owner {owner!r}: expected 1-64 characters of A-Z, a-z, 0-9, '_', '.' or '-'")
    return owner


def check_usage(owner: str, day: str, *numbers: int) -> None:
    check_owner(owner)
    if not isinstance(day, str) or not _DAY_RE.fullmatch(day):
        raise ValueError(f"day {day!r}: expected a UTC date, YYYY-MM-DD")
    if any(not isinstance(n, int) or n < 0 for n in numbers):
        raise ValueError(f"token counts must be whole numbers >= 0, got {numbers}")


def check_page(limit: int, offset: int) -> None:
    if limit < 0 or offset < 0:
        raise ValueError(f"limit={limit}, offset={offset}: both must be >= 0")


def check_export_format(fmt: str) -> None:
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r}: expected 'json' or 'markdown'")


def merge_hits(message_hits: builtins.list[dict[str, Any]], title_hits: builtins.list[dict[str, Any]],
               limit: int) -> builtins.list[dict[str, Any]]:
    """Message hits plus title hits of conversations no message hit shows, best first.
    (Auto-titles repeat the first message: a title hit must not show it twice.)"""
    seen = {hit["conversation_id"] for hit in message_hits}
    hits = message_hits + [hit for hit in title_hits if hit["conversation_id"] not in seen]
    hits.sort(key=lambda hit: -hit["score"])
    return hits[:limit]


def render_export(conversation: Conversation, messages: builtins.list[Message], fmt: str) -> str:
    """See Store.export: "json" ({"conversation": ..., "messages": [...]}, indented) or
    "markdown" (title, then one bold-labelled section per message; a message that did not
    complete is marked, e.g. "**Assistant** _(stopped)_")."""
    if fmt == "json":
        return json.dumps(
            {"conversation": conversation.to_dict(), "messages": [m.to_dict() for m in messages]},
            indent=2,
            ensure_ascii=False,
        )
    parts = [f"# {conversation.title or 'Untitled conversation'}"]
    if conversation.system:
        parts.append(f"**System prompt**\n\n{conversation.system}")
    for m in messages:
        label = f"**{m.role.capitalize()}**"
        if m.status != "complete":
            label += f" _({m.status})_"
        parts.append(f"{label}\n\n{m.content or '_(empty)_'}")
        if m.citations:
            parts.append("Sources:\n\n" + "\n".join(
                f"{c.get('n')}. {c.get('name')}" + (f", p. {c['page']}" if c.get("page") is not None else "")
                for c in m.citations))
    return "\n\n".join(parts) + "\n"


def encode_citations(citations: builtins.list[dict[str, Any]] | None, mode: str | None) -> str | None:
    """The `citations` column's JSON text: {"mode": ..., "citations": [...]} (None: no documents)."""
    if citations is None:
        return None
    # ASCII: a lone surrogate or NUL in a chunk's text stays an escape, storable in both databases.
    return json.dumps({"mode": mode, "citations": citations}, ensure_ascii=True)


def decode_citations(text: str | None) -> tuple[builtins.list[dict[str, Any]] | None, str | None]:
    """The column back as (citations, mode); (None, None) for NULL or a value not ours."""
    if not text:
        return None, None
    try:
        value = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(value, dict) or not isinstance(value.get("citations"), list):
        return None, None
    mode = value.get("mode")
    return value["citations"], mode if isinstance(mode, str) else None
