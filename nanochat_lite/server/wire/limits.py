"""Request limits: named constants, checked in one place.

Every route turns a body into a typed struct (msgspec does the shape, schemas.py),
then calls `sampling` / `check_message` / `check_conversation` here. A violation
raises `RequestError` (errors.py), which every door turns into its 4xx error shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...generation import SamplingParams
from .errors import RequestError

if TYPE_CHECKING:
    from .schemas import Sampling

MAX_BODY_BYTES = 1 << 20  # 1 MiB; larger bodies get 413
MAX_MESSAGE_CHARS = 8_000
MAX_SYSTEM_CHARS = 8_000
MAX_MESSAGES = 500
MAX_CONVERSATION_CHARS = 32_000
MAX_TOKENS_MIN, MAX_TOKENS_MAX = 1, 4_096
TEMPERATURE_MIN, TEMPERATURE_MAX = 0.0, 2.0
TOP_K_MIN, TOP_K_MAX = 0, 200
TOP_P_MIN, TOP_P_MAX = 0.0, 1.0
MIN_P_MIN, MIN_P_MAX = 0.0, 1.0
REPEAT_PENALTY_MIN, REPEAT_PENALTY_MAX = 0.0, 3.0
PENALTY_MIN, PENALTY_MAX = -2.0, 2.0  # frequency / presence, as OpenAI
SEED_MIN, SEED_MAX = 0, 2**31 - 1
MAX_STOP_STRINGS, MAX_STOP_CHARS = 4, 64
MAX_ID_CHARS = 64
# Conversations: page size, search text, a title set by rename.
MAX_PAGE = 100
MAX_QUERY_CHARS = 500
MAX_TITLE_CHARS = 200
# OpenAI API extras
MAX_N = 8  # choices per request (n, or prompts x n for /v1/completions): each takes a slot
TOP_LOGPROBS_MIN, TOP_LOGPROBS_MAX = 0, 20  # as OpenAI
LOGIT_BIAS_MIN, LOGIT_BIAS_MAX = -100.0, 100.0  # as OpenAI; -100 bans the token outright
MAX_LOGIT_BIAS = 300  # entries
MAX_SCHEMA_DEPTH = 32  # nesting of a response_format / tool JSON Schema
MAX_SCHEMA_NODES = 5_000  # subschemas in one JSON Schema
MAX_PROMPT_TOKENS = 32_768  # token ids in one /v1/completions or /v1/embeddings input
MAX_WS_FRAME_BYTES = MAX_BODY_BYTES
MAX_EMBED_WAITERS = 32  # embedding requests waiting for the one running batch; past it 503 server_busy


def check_range(name: str, value: float | int | None, lo: float, hi: float) -> None:
    if value is None:
        return
    if value != value or not lo <= value <= hi:  # value != value: NaN
        raise RequestError(f"`{name}` must be between {lo:g} and {hi:g}, got {value!r}", param=name)


def check_message(text: str, *, name: str = "message") -> None:
    if not text.strip():
        raise RequestError(f"`{name}` must not be empty", param=name)
    if len(text) > MAX_MESSAGE_CHARS:
        raise RequestError(
            f"`{name}` has {len(text):,} characters; the limit is {MAX_MESSAGE_CHARS:,}",
            code="message_too_long", param=name,
        )


def check_system(text: str | None) -> None:
    if text is not None and len(text) > MAX_SYSTEM_CHARS:
        raise RequestError(
            f"`system` has {len(text):,} characters; the limit is {MAX_SYSTEM_CHARS:,}",
            code="message_too_long", param="system",
        )


def check_conversation(messages: Sequence[dict[str, str]]) -> None:
    if not messages:
        raise RequestError("`messages` must hold at least one message", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise RequestError(
            f"{len(messages)} messages; the limit is {MAX_MESSAGES}", code="too_many_messages", param="messages"
        )
    total = sum(len(m["content"]) for m in messages)
    if total > MAX_CONVERSATION_CHARS:
        raise RequestError(
            f"the conversation has {total:,} characters; the limit is {MAX_CONVERSATION_CHARS:,}",
            code="conversation_too_long", param="messages",
        )
    for i, m in enumerate(messages):
        if len(m["content"]) > MAX_MESSAGE_CHARS:
            raise RequestError(
                f"message {i} has {len(m['content']):,} characters; the limit is {MAX_MESSAGE_CHARS:,}",
                code="message_too_long", param=f"messages[{i}]",
            )


def check_id(value: str | None, name: str = "conversation_id") -> None:
    if value is not None and (not value or len(value) > MAX_ID_CHARS or not value.isprintable()):
        raise RequestError(f"`{name}` is not a valid id", param=name)


def sampling(base: SamplingParams, fields: "Sampling", *, max_tokens: int | None = None) -> SamplingParams:
    """Check a request's sampling fields against their bounds and merge them onto the
    defaults: the one path for every door (`/api/chat`, `/ws`, `/v1/*`).
    `max_tokens` overrides the request's own (OpenAI's `max_completion_tokens`)."""
    temperature, top_k, top_p, min_p = fields.temperature, fields.top_k, fields.top_p, fields.min_p
    repeat_penalty, seed, stop = fields.repeat_penalty, fields.seed, fields.stop
    frequency_penalty, presence_penalty = fields.frequency_penalty, fields.presence_penalty
    if max_tokens is None:
        max_tokens = fields.max_tokens
    check_range("temperature", temperature, TEMPERATURE_MIN, TEMPERATURE_MAX)
    check_range("top_k", top_k, TOP_K_MIN, TOP_K_MAX)
    check_range("top_p", top_p, TOP_P_MIN, TOP_P_MAX)
    check_range("min_p", min_p, MIN_P_MIN, MIN_P_MAX)
    check_range("repeat_penalty", repeat_penalty, REPEAT_PENALTY_MIN, REPEAT_PENALTY_MAX)
    check_range("frequency_penalty", frequency_penalty, PENALTY_MIN, PENALTY_MAX)
    check_range("presence_penalty", presence_penalty, PENALTY_MIN, PENALTY_MAX)
    check_range("seed", seed, SEED_MIN, SEED_MAX)
    check_range("max_tokens", max_tokens, MAX_TOKENS_MIN, MAX_TOKENS_MAX)
    stops: tuple[str, ...] | None = None
    if stop is not None:
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        if len(stops) > MAX_STOP_STRINGS:
            raise RequestError(f"`stop` holds {len(stops)} strings; the limit is {MAX_STOP_STRINGS}", param="stop")
        if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise RequestError(f"each `stop` string must have 1 to {MAX_STOP_CHARS} characters", param="stop")
    return base.with_overrides(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, seed=seed,
        max_tokens=max_tokens, stop=stops,
    )
