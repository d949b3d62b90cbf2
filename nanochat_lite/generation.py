"""The engine's value types: what goes into a generation and what comes out.

Every engine (the local llama.cpp one, the remote OpenAI-compatible one, the fakes in
the tests), the scheduler and the server speak these; none of them needs to import an
engine to do so. Stdlib only: importing this module costs nothing at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


class EngineError(Exception):
    """A request the engine cannot serve; `code` is a stable machine-readable name."""

    code = "engine_error"


class TemplateRefused(EngineError):
    """The model's chat template cannot render this conversation (message says why)."""

    code = "template_error"


class NoChatTemplate(EngineError):
    """The model has no chat template (a base model), so a conversation cannot become
    its prompt; raw text prompts still work (message says how to give it one)."""

    code = "no_chat_template"


class ContextOverflow(EngineError):
    code = "context_overflow"

    def __init__(self, message: str, *, n_prompt_tokens: int | None = None, n_ctx: int | None = None) -> None:
        super().__init__(message)
        self.n_prompt_tokens = n_prompt_tokens  # tokens the prompt needs
        self.n_ctx = n_ctx  # tokens one conversation's context holds


class ModelLoadError(EngineError):
    code = "model_load_error"


@dataclass(frozen=True)
class SamplingParams:
    # Defaults chosen for a 135M chat model: without a repeat penalty it loops on
    # its own phrases; a low temperature keeps it on topic. llama.cpp's server engine
    # counts the prompt's last 64 tokens in the penalty window, so 1.1 (fine with
    # llama-cpp-python's loop) pushed the model away from words the user had just
    # said: asked "What is my name?" after "My name is Zorblax." it answered
    # "Zorba-Lux" at 1.1 and "Zorblax" at 1.05.
    temperature: float = 0.6
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.05
    repeat_penalty: float = 1.05
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    # Per-request constraints and extras, passed to llama.cpp as they are:
    json_schema: Any = None  # a JSON Schema (dict[str, Any]) the answer must match; None: free text
    n_probs: int = 0  # > 0: each Delta carries its tokens' logprobs with this many alternatives
    logit_bias: tuple[tuple[int, float | bool], ...] = ()  # (token id, bias); False bans the token

    def with_overrides(self, **kw: Any) -> "SamplingParams":
        """A copy with the fields given (None: keep this one's)."""
        changes: dict[str, Any] = {k: v for k, v in kw.items() if v is not None}
        return replace(self, **changes)


@dataclass
class Delta:
    text: str
    # With SamplingParams.n_probs > 0: one entry per token whose text this delta
    # completes, {"id", "token", "bytes", "logprob", "top_logprobs": [{"id", "token",
    # "bytes", "logprob"}, ...]} (llama.cpp's shape). A token held back for a possible
    # stop string rides with the delta that finally sends its text.
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Done:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    dropped_messages: int  # oldest turns left out to fit the context
    ttft_ms: float  # generation start -> first token (includes prompt evaluation)
    total_ms: float
    decode_tokens_per_s: float
    seed: int
    cached_tokens: int = 0  # prompt tokens the slot's cache already held
    stats: dict[str, Any] = field(default_factory=dict[str, Any])
    logprobs: list[dict[str, Any]] | None = None  # every Delta's logprobs, in order (n_probs > 0)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Prepared:
    """A conversation turned into the prompt's token ids, fitted to the context."""

    tokens: list[int]
    dropped: int  # oldest turns left out
    max_new: int  # tokens the answer may have


# Answers need room: a prompt is only accepted when this many tokens (or max_tokens,
# if smaller) are left for the answer.
MIN_ANSWER_ROOM = 64
