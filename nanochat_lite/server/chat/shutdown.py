"""Graceful shutdown (SIGTERM, SIGINT): answers end, are stored, and clients are told.

uvicorn on a signal stops listening, closes idle connections, waits
`timeout_graceful_shutdown` for the others, then cancels what is left — an answer
streaming at that moment would be cut with no final event, and its text lost. Here:

1. The signal handler marks the runtime closing at once: every request from then on
   gets 503 `server_shutdown` (`ShutdownGate`), a WebSocket a final error frame and
   close code 1012.
2. Before uvicorn's own shutdown, `Answers.drain()` cancels every generation (each
   ends within one token), stores each partial answer as `interrupted`, ends SSE
   streams with an `error` event `server_shutdown` and WebSockets with an error frame,
   then close 1012.
3. uvicorn then closes the (now finished) connections. The signal is not raised again
   afterwards (uvicorn would, to let the default handler kill the process): the
   process exits with status 0.

Not here: the answers' own logic (answers.py); the CLI's start-up (commands/boot.py builds
`GracefulServer` instead of `uvicorn.Server`).
"""

from __future__ import annotations

import socket
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from ..wire.errors import error_response
from .runtime import Runtime
from .turns import shutting_down


class GracefulServer(uvicorn.Server):
    """A uvicorn server that drains the runtime's answers before closing connections."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.runtime.answers.closing = True  # from now on: 503 server_shutdown
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.runtime.answers.drain()
        await super().shutdown(sockets)
        # A graceful stop is a normal exit: do not re-raise the signal afterwards.
        self._captured_signals.clear()


class ShutdownGate:
    """Outermost ASGI layer: once shutting down, HTTP requests get 503 `server_shutdown`
    (in the shape of their door) and WebSockets are refused before the handshake."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.runtime.answers.closing or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1012})
            return
        response = error_response(shutting_down(), scope["path"], headers={"Connection": "close"})
        await response(scope, receive, send)
