"""`GET /api/limits`: the limits the server enforces, so that the page checks the same
numbers instead of hand-copied ones (which had drifted: the search box allowed 200
characters, the server 500).

Every value is one of the named constants of `wire/limits.py` or `routes/conversations.py`;
nothing is restated here. The body never depends on the model, so it answers while
the model is still loading. Field names follow frames.py's rule (snake_case, units
in the names: `*_chars`, `*_bytes`).

Not here: checking anything (limits.py does that, in one place).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..wire import limits as L
from ..wire.http import json_response

# name -> (min, max, integer?) of each sampling field a chat request may carry.
_SAMPLING: dict[str, tuple[float, float, bool]] = {
    "temperature": (L.TEMPERATURE_MIN, L.TEMPERATURE_MAX, False),
    "top_p": (L.TOP_P_MIN, L.TOP_P_MAX, False),
    "top_k": (L.TOP_K_MIN, L.TOP_K_MAX, True),
    "min_p": (L.MIN_P_MIN, L.MIN_P_MAX, False),
    "repeat_penalty": (L.REPEAT_PENALTY_MIN, L.REPEAT_PENALTY_MAX, False),
    "frequency_penalty": (L.PENALTY_MIN, L.PENALTY_MAX, False),
    "presence_penalty": (L.PENALTY_MIN, L.PENALTY_MAX, False),
    "max_tokens": (L.MAX_TOKENS_MIN, L.MAX_TOKENS_MAX, True),
    "seed": (L.SEED_MIN, L.SEED_MAX, True),
}


def limits_body() -> dict[str, Any]:
    """The limits as the page reads them, e.g.
    `{"message_chars": 8000, ..., "sampling": {"top_k": {"min": 0, "max": 200, "integer": true}, ...}}`."""
    return {
        "message_chars": L.MAX_MESSAGE_CHARS,
        "system_chars": L.MAX_SYSTEM_CHARS,
        "conversation_chars": L.MAX_CONVERSATION_CHARS,
        "messages": L.MAX_MESSAGES,
        "body_bytes": L.MAX_BODY_BYTES,
        "ws_frame_bytes": L.MAX_WS_FRAME_BYTES,
        "id_chars": L.MAX_ID_CHARS,
        "stop_strings": L.MAX_STOP_STRINGS,
        "stop_chars": L.MAX_STOP_CHARS,
        "search_chars": L.MAX_QUERY_CHARS,
        "title_chars": L.MAX_TITLE_CHARS,
        "page_size": L.MAX_PAGE,
        "sampling": {name: {"min": lo, "max": hi, "integer": integer} for name, (lo, hi, integer) in _SAMPLING.items()},
    }


async def limits(request: Request) -> Response:
    return json_response({"success": True, "data": limits_body()})
