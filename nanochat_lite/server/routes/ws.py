"""`WS /ws`: chat over a WebSocket with JSON frames.

Client frames: `{"type": "chat", "message", ...sampling, "conversation_id"?, "system"?,
"client_id"?}`, `{"type": "resume", "answer_id", "after"}`, `{"type": "stop"}`,
`{"type": "ping"}`.
Server frames: `start` (seq 0: `answer_id`, `conversation_id`, `model`, `client_id`?),
`token` (`text`, `seq`), `progress` (no seq, while the prompt is read), `snapshot`
(`seq`, `text`: replaces the client's text after a gap), `done` (`message`,
`finish_reason`, `status`, `usage`, `timings`, `processingTime`, `seq`; `replayed` when
rebuilt from the store), `error` (`code`, `message`; `seq` when it ends an answer),
`pong`. docs/protocol.md has the whole protocol.

One answer followed per socket at a time; a malformed frame gets an error frame and
the socket stays open. Closing the socket without a stop leaves the answer running
for the resume window (answers.py); `stop` ends it within one token. At a graceful
shutdown the socket gets an `error` frame `server_shutdown`, then close code 1012.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..guards import connlimits
from ..chat import turns
from ..chat.answers import Answer
from .chat import check_answer_id, key_name
from ..wire.errors import RequestError, error_frame
from ..wire.limits import MAX_WS_FRAME_BYTES
from ..chat.runtime import Runtime
from ..wire.schemas import WSChat, WSFrame, WSResume, decode

_enc = msgspec.json.Encoder()
CLOSE_SERVICE_RESTART = 1012  # WebSocket close code: the server is restarting


async def websocket_chat(ws: WebSocket) -> None:
    rt: Runtime = ws.app.state.runtime
    await ws.accept()
    send_lock = asyncio.Lock()
    current: asyncio.Task[None] | None = None
    following: Answer | None = None
    stop_event = threading.Event()  # a stop before the answer exists (prompt being built)
    kn = key_name(ws)
    told_shutdown = False

    async def send(obj: dict[str, Any]) -> None:
        nonlocal told_shutdown
        async with send_lock:
            await ws.send_text(_enc.encode(obj).decode())
        if obj.get("code") == "server_shutdown":
            told_shutdown = True

    async def error(code: str, message: str) -> None:
        await send(error_frame(RequestError(message, code=code)))

    async def on_shutdown() -> None:
        """Graceful shutdown: a final frame (unless the answer sent one), then 1012."""
        with contextlib.suppress(Exception):
            if not told_shutdown:
                await send(error_frame(turns.shutting_down()))
            await ws.close(code=CLOSE_SERVICE_RESTART)

    async def relay(a: Answer | None, replayed: list[dict[str, Any]], after: int) -> None:
        nonlocal following
        following = a
        for frame in replayed:
            await send(frame)
        if a is not None:
            async for frame in rt.answers.follow(a, after):
                await send(frame)

    async def run_chat(req: WSChat, stop_event: threading.Event) -> None:
        try:
            opened = await turns.open_chat(rt, req, key_name=kn, stop=stop_event)
            await relay(opened.answer, opened.replayed, -1)
        except RequestError as e:
            with contextlib.suppress(Exception):
                await send(error_frame(e))
        except (WebSocketDisconnect, RuntimeError):
            pass  # socket closed while sending; the answer waits for a resume

    async def run_resume(r: WSResume) -> None:
        try:
            if rt.answers.closing:
                raise turns.shutting_down()
            check_answer_id(r.answer_id)
            a = rt.answers.find(r.answer_id, kn)
            if a is None:
                await relay(None, await rt.answers.replay(r.answer_id, r.after), r.after)
            else:
                await relay(a, [], r.after)
        except RequestError as e:
            with contextlib.suppress(Exception):
                await send(error_frame(e))
        except (WebSocketDisconnect, RuntimeError):
            pass

    rt.answers.sockets.add(on_shutdown)
    try:
        if rt.answers.closing:
            await on_shutdown()
            return
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
                await error(e.code, e.message + ' (frames are JSON objects with a "type": chat, resume, stop or ping)')
                continue
            if kind == "ping":
                await send({"type": "pong"})
            elif kind == "stop":
                # The engine ends within one token and the reply's "done" frame says
                # finish_reason "cancelled" (status "stopped").
                if following is not None and not following.finished:
                    following.stop()
                else:
                    stop_event.set()
            elif kind in ("chat", "resume"):
                if current is not None and not current.done():
                    await error("busy", "a reply is still being generated; send {\"type\": \"stop\"} first")
                    continue
                try:
                    chat = decode(raw_bytes, WSChat) if kind == "chat" else None
                    resume = decode(raw_bytes, WSResume) if kind == "resume" else None
                except RequestError as e:
                    await error(e.code, e.message)
                    continue
                following = None
                if chat is not None:
                    # The per-client cap on generations and the key's token quota, as the
                    # HTTP doors have them in the middleware (connlimits.py).
                    refused = connlimits.begin_generation(ws.scope)
                    if refused is not None:
                        await error(*refused)
                        continue
                    stop_event = threading.Event()
                    current = asyncio.create_task(run_chat(chat, stop_event))
                    current.add_done_callback(lambda _task: connlimits.end_generation(ws.scope))
                elif resume is not None:
                    current = asyncio.create_task(run_resume(resume))
            else:
                await error("unknown_type", f"unknown frame type {kind!r}; expected chat, resume, stop or ping")
    except WebSocketDisconnect:
        pass
    finally:
        rt.answers.sockets.discard(on_shutdown)
        if current is not None and not current.done():
            # Stops following; the answer itself runs on for the resume window.
            current.cancel()
            with contextlib.suppress(BaseException):
                await current
