"""`WS /ws`: chat over a WebSocket with JSON frames.

Client frames: `{"type": "chat", "message", ...sampling, "conversation_id"?, "system"?}`,
`{"type": "stop"}`, `{"type": "ping"}`.
Server frames: `{"type": "start", "conversation_id"}`, `{"type": "token", "text"}`,
`{"type": "done", "conversation_id", "message", "finish_reason", "usage", "timings", "processingTime"}`,
`{"type": "error", "code", "message"}`, `{"type": "pong"}`.

One generation per socket at a time; a malformed frame gets an error frame and the
socket stays open. Closing the socket stops its generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import turns
from .errors import RequestError, error_frame
from .limits import MAX_WS_FRAME_BYTES
from .runtime import Runtime
from .schemas import WSChat, WSFrame, decode

_enc = msgspec.json.Encoder()


async def websocket_chat(ws: WebSocket) -> None:
    rt: Runtime = ws.app.state.runtime
    await ws.accept()
    send_lock = asyncio.Lock()
    current: asyncio.Task | None = None
    stop_event = threading.Event()

    async def send(obj: dict) -> None:
        async with send_lock:
            await ws.send_text(_enc.encode(obj).decode())

    async def error(code: str, message: str) -> None:
        await send(error_frame(RequestError(message, code=code)))

    async def run_chat(req: WSChat, stop_event: threading.Event) -> None:
        try:
            turn = await turns.begin_turn(rt, req, stop_event)
            async for frame in turns.turn_frames(rt, turn):
                await send(frame)
        except RequestError as e:
            with contextlib.suppress(Exception):
                await send(error_frame(e))
        except (WebSocketDisconnect, RuntimeError):
            pass  # socket closed while sending; the generation is cancelled by the caller

    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            raw = msg.get("text")
            if raw is None:
                raw_bytes = msg.get("bytes") or b""
            else:
                raw_bytes = raw.encode("utf-8", "surrogatepass")
            if len(raw_bytes) > MAX_WS_FRAME_BYTES:
                await error("frame_too_large", f"frames are limited to {MAX_WS_FRAME_BYTES:,} bytes")
                continue
            try:
                kind = decode(raw_bytes, WSFrame).type
            except RequestError as e:
                await error(e.code, e.message + ' (frames are JSON objects with a "type": chat, stop or ping)')
                continue
            if kind == "ping":
                await send({"type": "pong"})
            elif kind == "stop":
                # The engine ends within one token and the reply's "done" frame says
                # finish_reason "cancelled".
                stop_event.set()
            elif kind == "chat":
                if current is not None and not current.done():
                    await error("busy", "a reply is still being generated; send {\"type\": \"stop\"} first")
                    continue
                try:
                    req = decode(raw_bytes, WSChat)
                except RequestError as e:
                    await error(e.code, e.message)
                    continue
                stop_event = threading.Event()
                current = asyncio.create_task(run_chat(req, stop_event))
            else:
                await error("unknown_type", f"unknown frame type {kind!r}; expected chat, stop or ping")
    except WebSocketDisconnect:
        pass
    finally:
        if current is not None and not current.done():
            current.cancel()
            with contextlib.suppress(BaseException):
                await current
