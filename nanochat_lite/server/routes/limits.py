"""`GET /api/limits`: the limits the server enforces, so that the page checks the same
numbers instead of hand-copied ones (which had drifted: the search box allowed 200
characters, the server 500).

Every value is one of the named constants of `wire/limits.py` or `routes/conversations.py`,
or computed by it; nothing is restated here. Text is bounded by the model's context,
in tokens (`context_tokens`, of which `answer_room_tokens` must stay free for the
answer); `message_chars` (also `system_chars` and `conversation_chars`: one bound) is
only the cheap character bound checked before tokenizing: as many characters as could
fit (Runtime.text_chars). It answers while the model is still loading: then
`context_tokens` is null and the character bound is the body limit, and the bound
tightens once the model's tokenizer is known. Field names follow frames.py's rule
(snake_case, units in the names: `*_chars`, `*_bytes`, `*_tokens`).

Not here: checking anything (limits.py does that, in one place).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ...generation import MIN_ANSWER_ROOM
from ..chat.runtime import Runtime
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


def limits_body(rt: Runtime) -> dict[str, Any]:
    """The limits as the page reads them, e.g. `{"context_tokens": 4096, "answer_room_tokens": 64,
    "message_chars": 331776, ..., "sampling": {"top_k": {"min": 0, "max": 200, "integer": true}, ...}}`."""
    chars = rt.text_chars()
    n_ctx = rt.prompts.n_ctx if rt.prompts is not None else 0
    return {
        "context_tokens": n_ctx or None,
        "answer_room_tokens": MIN_ANSWER_ROOM,
        "message_chars": chars,
        "system_chars": chars,
        "conversation_chars": chars,
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
    return json_response({"success": True, "data": limits_body(request.app.state.runtime)})
