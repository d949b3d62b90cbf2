"""The wire shapes of an answer, built in one place for every door.

Our API (`/api/chat` JSON and SSE, `/ws`) speaks in frames:
`start` → `token`… → `done` (or `error`, see errors.py). OpenAI's (`/v1/*`) has its own
`usage` object. Every door takes its usage and timings from here, so they agree.

Casing rule for our API: the fields of the original contract keep their camelCase
(`promptTokens`, `completionTokens`, `totalTokens`, `processingTime`, and `tokens`,
`message`, `model`); every field added since is snake_case (`conversation_id`,
`finish_reason`, `ttft_ms`, `tokens_per_second`, ...). Units are in the names:
`*_ms` are milliseconds.

Resumable answers (answers.py, docs/protocol.md): an answer's frames are numbered —
`start` is `seq` 0, each `token` the next, the final `done` or `error` the last — and
`start`, `done`, `error` and `snapshot` name the `answer_id`. `progress` frames carry no
seq and are never replayed.

Not here: reading events (turns.py, answers.py) or writing bytes (http.py, ws.py).
"""

from __future__ import annotations

from typing import Any

from ...generation import Done


def usage(done: Done) -> dict[str, int]:
    return {"promptTokens": done.prompt_tokens, "completionTokens": done.completion_tokens,
            "totalTokens": done.total_tokens}


def timings(done: Done) -> dict[str, float]:
    return {"ttft_ms": round(done.ttft_ms, 2), "total_ms": round(done.total_ms, 2),
            "tokens_per_second": round(done.decode_tokens_per_s, 2)}


def start_frame(conversation_id: str, model: str, *, answer_id: str | None = None,
                client_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "start", "conversation_id": conversation_id, "model": model}
    if answer_id is not None:
        frame.update(seq=0, answer_id=answer_id, events_url=events_url(answer_id))
    if client_id is not None:
        frame["client_id"] = client_id
    return frame


def token_frame(text: str, seq: int | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "token", "text": text}
    if seq is not None:
        frame["seq"] = seq
    return frame


def done_frame(done: Done, *, conversation_id: str, model: str, processing_ms: float,
               answer_id: str | None = None, seq: int | None = None, status: str | None = None) -> dict[str, Any]:
    frame = {"type": "done", "conversation_id": conversation_id, "model": model, "message": done.text,
             "finish_reason": done.finish_reason, "usage": usage(done), "timings": timings(done),
             "processingTime": round(processing_ms, 2)}
    if answer_id is not None:
        frame.update(answer_id=answer_id, seq=seq, status=status)
    return frame


def events_url(answer_id: str) -> str:
    """Where an SSE client resumes the answer (with Last-Event-ID)."""
    return f"/api/answers/{answer_id}/events"


def progress_frame() -> dict[str, Any]:
    """Sent while the prompt is read (before the first token); keeps proxies from closing."""
    return {"type": "progress", "phase": "prompt"}


def snapshot_frame(answer_id: str, seq: int, text: str) -> dict[str, Any]:
    """The answer's text up to `seq`, standing in for events no longer buffered: the
    client replaces its text with it, then applies the events after `seq`."""
    return {"type": "snapshot", "answer_id": answer_id, "seq": seq, "text": text}


def replayed_done_frame(*, answer_id: str, conversation_id: str, model: str | None, text: str, status: str,
                        seq: int, prompt_tokens: int | None, completion_tokens: int | None,
                        ttft_ms: float | None, duration_ms: float | None) -> dict[str, Any]:
    """A finished answer's `done`, rebuilt from the store (`replayed`: the client replaces
    its text with `message`)."""
    pt, ct = prompt_tokens or 0, completion_tokens or 0
    finish = {"complete": "stop", "stopped": "cancelled"}.get(status, status)
    return {"type": "done", "conversation_id": conversation_id, "model": model, "message": text,
            "finish_reason": finish, "status": status,
            "usage": {"promptTokens": pt, "completionTokens": ct, "totalTokens": pt + ct},
            "timings": {"ttft_ms": ttft_ms, "total_ms": duration_ms},
            "answer_id": answer_id, "seq": seq, "replayed": True}


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
