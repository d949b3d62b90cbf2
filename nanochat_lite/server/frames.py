"""The wire shapes of an answer, built in one place for every door.

Our API (`/api/chat` JSON and SSE, `/ws`) speaks in frames:
`start` → `token`… → `done` (or `error`, see errors.py). OpenAI's (`/v1/*`) has its own
`usage` object. Every door takes its usage and timings from here, so they agree.

Casing rule for our API: the fields of the original contract keep their camelCase
(`promptTokens`, `completionTokens`, `totalTokens`, `processingTime`, and `tokens`,
`message`, `model`); every field added since is snake_case (`conversation_id`,
`finish_reason`, `ttft_ms`, `tokens_per_second`, ...). Units are in the names:
`*_ms` are milliseconds.

Not here: reading events (turns.py) or writing bytes (http.py, ws.py).
"""

from __future__ import annotations

from typing import Any

from ..engine import Done


def usage(done: Done) -> dict[str, int]:
    return {"promptTokens": done.prompt_tokens, "completionTokens": done.completion_tokens,
            "totalTokens": done.total_tokens}


def timings(done: Done) -> dict[str, float]:
    return {"ttft_ms": round(done.ttft_ms, 2), "total_ms": round(done.total_ms, 2),
            "tokens_per_second": round(done.decode_tokens_per_s, 2)}


def start_frame(conversation_id: str, model: str) -> dict[str, Any]:
    return {"type": "start", "conversation_id": conversation_id, "model": model}


def token_frame(text: str) -> dict[str, Any]:
    return {"type": "token", "text": text}


def done_frame(done: Done, *, conversation_id: str, model: str, processing_ms: float) -> dict[str, Any]:
    return {"type": "done", "conversation_id": conversation_id, "model": model, "message": done.text,
            "finish_reason": done.finish_reason, "usage": usage(done), "timings": timings(done),
            "processingTime": round(processing_ms, 2)}


def chat_data(done: Done, *, conversation_id: str, model: str, processing_ms: float) -> dict[str, Any]:
    """The `data` of a non-streamed `/api/chat` answer (the original contract, plus ours)."""
    return {"message": done.text, "tokens": done.completion_tokens, "processingTime": round(processing_ms, 2),
            "model": model, "conversation_id": conversation_id, "finish_reason": done.finish_reason,
            "usage": usage(done), "timings": timings(done)}


# -- OpenAI's ------------------------------------------------------------------------

def openai_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def openai_finish_reason(done: Done) -> str:
    """OpenAI knows "stop" and "length"; a cancelled answer stopped."""
    return "length" if done.finish_reason == "length" else "stop"
