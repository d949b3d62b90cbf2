"""Request limits: named constants, checked in one place.

Every route turns a body into a typed struct (msgspec does the shape, schemas.py),
then calls `sampling` / `check_message` / `check_conversation` here. A violation
raises `RequestError` (errors.py), which every door turns into its 4xx error shape.

Text is bounded by the context, in tokens: the prompt builder (engines/prompt.py)
refuses a prompt that leaves less than MIN_ANSWER_ROOM tokens for the answer, naming
both numbers (`context_overflow`; `/v1` calls it `context_length_exceeded`). The
character bounds here (`text_chars`) only spare the tokenizer text that cannot fit:
no token stands for more than `token_chars` characters, so a longer text needs more
tokens than the context holds. They never refuse a text that would fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...generation import SamplingParams
from .errors import RequestError

if TYPE_CHECKING:
    from .schemas import Sampling

MAX_BODY_BYTES = 1 << 20  # 1 MiB; larger bodies get 413
MAX_MESSAGES = 500
# Characters one token may stand for, when the model's own vocabulary is not read yet
# (prompt.py then tells its longest token: 81 for SmolLM2). The longest token texts
# of llama.cpp's 20 test vocabularies, measured: GPT-NeoX, MPT, Aquila and Command-R
# 512 (runs of spaces), StarCoder 256, Llama 3, Qwen2 and DeepSeek 128, GPT-2 66,
# Gemma 3 31, Llama 2 16. So 512: a bound no vocabulary we know exceeds; at 4,096
# tokens it is past the body limit, and the body limit (1 MiB, 0.15 s to tokenize
# here) is then the cheap bound until the vocabulary is known.
TOKEN_CHARS_MAX = 512
# History a chat turn hands the prompt builder, in characters per context token: the
# builder tokenizes what it gets on every turn (a binary search over dropped turns),
# so a long conversation is cut here first. Prose runs 3-5 characters a token with
# these vocabularies; 8 keeps every turn that could fit unless the text is mostly
# whitespace or symbols, and the builder then fits the rest by tokens.
HISTORY_CHARS_PER_TOKEN = 8
HISTORY_CHARS_UNKNOWN_CONTEXT = 32_000  # a remote engine that did not say its context
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


def text_chars(n_ctx: int, token_chars: int | None = None) -> int:
    """Characters a text may have and still fit `n_ctx` tokens, when no token stands for
    more than `token_chars` characters (None: TOKEN_CHARS_MAX). Never more than the
    body limit (a body cannot carry more), which is also the bound when the context is
    unknown (`n_ctx` 0: a remote engine that did not say).

        text_chars(4096, 81) -> 331_776; text_chars(4096) -> 1_048_576; text_chars(0) -> 1_048_576
    """
    if n_ctx <= 0:
        return MAX_BODY_BYTES
    return min(n_ctx * (token_chars or TOKEN_CHARS_MAX), MAX_BODY_BYTES)


def history_chars(n_ctx: int) -> int:
    """Characters of history a chat turn hands the prompt builder (see HISTORY_CHARS_PER_TOKEN)."""
    return n_ctx * HISTORY_CHARS_PER_TOKEN if n_ctx > 0 else HISTORY_CHARS_UNKNOWN_CONTEXT


def _too_long(what: str, chars: int, max_chars: int, *, code: str, param: str) -> RequestError:
    return RequestError(
        f"{what} has {chars:,} characters; no more than {max_chars:,} can fit the model's context "
        "(the server counts tokens: send less, or start the server with a larger --ctx-size)",
        code=code, param=param,
    )


def check_chars(text: str, *, max_chars: int, what: str, param: str) -> None:
    """Any text bounded by `max_chars` (text_chars of the context): 400 `message_too_long`."""
    if len(text) > max_chars:
        raise _too_long(what, len(text), max_chars, code="message_too_long", param=param)


def check_message(text: str, *, max_chars: int, name: str = "message") -> None:
    """A chat message: not blank, and bounded by `max_chars`."""
    if not text.strip():
        raise RequestError(f"`{name}` must not be empty", param=name)
    check_chars(text, max_chars=max_chars, what=f"`{name}`", param=name)


def check_system(text: str | None, *, max_chars: int) -> None:
    if text is not None:
        check_chars(text, max_chars=max_chars, what="`system`", param="system")


def check_conversation(messages: Sequence[dict[str, str]], *, max_chars: int) -> None:
    """A conversation sent whole (`/v1/chat/completions`): the prompt builder drops its
    oldest turns to fit, but tokenizes all of it first, so all of it is bounded."""
    if not messages:
        raise RequestError("`messages` must hold at least one message", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise RequestError(
            f"{len(messages)} messages; the limit is {MAX_MESSAGES}", code="too_many_messages", param="messages"
        )
    for i, m in enumerate(messages):
        check_chars(m["content"], max_chars=max_chars, what=f"message {i}", param=f"messages[{i}]")
    total = sum(len(m["content"]) for m in messages)
    if total > max_chars:
        raise _too_long("the conversation", total, max_chars, code="conversation_too_long", param="messages")


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
