"""One error vocabulary for every door: `RequestError`, and its two wire shapes.

Routes, the WebSocket, SSE streams and the app's exception handlers all raise or
turn a `RequestError` into one of:

- ours (`/api/*`, `/ws`): `{"success": false, "error": {"code", "message"}}`, and as a
  stream frame `{"type": "error", "code", "message"}`;
- OpenAI's (`/v1/*`): `{"error": {"message", "type", "param", "code"}}`, the type
  taken from the HTTP status by one table (what the `openai` client maps to its
  exception classes).

The HTTP status is the error's own, except that a full queue (`server_busy`, 503 on
our API) is a 429 on OpenAI's: that is the status its clients retry with backoff.
Not here: what is an error (limits.py and the routes decide that).
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

# HTTP status -> OpenAI's error type. Unlisted 4xx are invalid_request_error, 5xx server_error.
OPENAI_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

# Retry-After, in seconds, by kind of refusal: one number per kind, wherever it is refused.
RETRY_BUSY_S = 2  # server_busy and the load limits: the queue, the embedding line, per-client caps
RETRY_SHUTDOWN_S = 2  # server_shutdown: another replica (or this one, restarted) answers by then
RETRY_STORAGE_S = 2  # storage_unavailable: a locked database, or PostgreSQL reconnecting
RETRY_LOADING_S = 1  # loading: the model is being loaded (well under a second for the default one)

OVERFLOW = "context_length_exceeded"  # OpenAI's code for a prompt past the context

_encoder = msgspec.json.Encoder()


class RequestError(Exception):
    """A request that cannot be served: a client mistake (4xx) or the server's state
    (503: loading, busy, storage). It carries a stable `code` for programs and a
    `message` for people that says what to do."""

    def __init__(self, message: str, *, code: str = "invalid_request", status: int = 400,
                 param: str | None = None, retry_after: int | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.param = param
        # seconds, sent as Retry-After; every 503 says when to come back (the kinds above
        # name their own; an engine's 503, a queue timeout among them, the busy default).
        self.retry_after = RETRY_BUSY_S if retry_after is None and status == 503 else retry_after
        self.extra = extra  # more fields for OpenAI's error body (n_prompt_tokens, n_ctx)


# -- ours ---------------------------------------------------------------------------

def api_body(e: RequestError) -> dict[str, Any]:
    return {"success": False, "error": {"code": e.code, "message": e.message}}


def error_frame(e: RequestError) -> dict[str, Any]:
    """The last frame of a stream that failed (SSE on /api/chat, the WebSocket)."""
    return {"type": "error", "code": e.code, "message": e.message}


# -- OpenAI's -----------------------------------------------------------------------

def openai_status(e: RequestError) -> int:
    return 429 if e.code == "server_busy" else e.status


def openai_type(status: int) -> str:
    """openai_type(404) -> "not_found_error"; openai_type(503) -> "server_error"."""
    if status >= 500:
        return "server_error"
    return OPENAI_TYPES.get(status, "invalid_request_error")


def openai_body(e: RequestError) -> dict[str, Any]:
    error: dict[str, Any] = {"message": e.message, "type": openai_type(openai_status(e)), "param": e.param,
                             "code": e.code}
    if e.extra:
        error.update(e.extra)
    return {"error": error}


# -- responses ----------------------------------------------------------------------

def _headers(e: RequestError, headers: dict[str, str] | None) -> dict[str, str] | None:
    if e.retry_after is not None:
        headers = {**(headers or {}), "Retry-After": str(e.retry_after)}
    return headers


def api_error(e: RequestError, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(api_body(e)), status_code=e.status, media_type="application/json",
                    headers=_headers(e, headers))


def openai_error(e: RequestError, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(openai_body(e)), status_code=openai_status(e), media_type="application/json",
                    headers=_headers(e, headers))


def error_response(e: RequestError, path: str, headers: dict[str, str] | None = None) -> Response:
    """The error in the shape of the door `path` belongs to."""
    return openai_error(e, headers) if is_openai_path(path) else api_error(e, headers)


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")
