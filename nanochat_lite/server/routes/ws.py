"""`WS /ws`: chat over a WebSocket with JSON frames.

Client frames: `{"type": "chat", "message", ...sampling, "conversation_id"?, "system"?,
"client_id"?}`, `{"type": "resume", "answer_id", "after"}`, `{"type": "stop"}`,
`{"type": "ping"}`, `{"type": "watch_document", "id"}` (a document's indexing: the
same `progress`/`ready`/`error` frames as its SSE events, each with `document_id`).
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
import enum
import threading
from typing import Any, Literal

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from ...documents.events import document_frames
from ...documents.service import DocumentService
from ...documents.store import Document
from ...history import StorageUnavailable
from ..chat import turns
from ..chat.answers import Answer, check_answer_id
from ..chat.runtime import Runtime
from ..guards import connlimits
from ..guards.security import identity
from ..wire.errors import RequestError, error_frame
from ..wire.limits import MAX_ID_CHARS, MAX_WS_FRAME_BYTES
from ..wire.schemas import WSChat, WSFrame, WSResume, decode

_enc = msgspec.json.Encoder()
CLOSE_SERVICE_RESTART = 1012  # WebSocket close code: the server is restarting
MAX_WATCHES = 16  # documents one socket follows at once (a page uploading several files)
PROGRESS_EVERY_S = 0.5  # as the SSE stream (routes/documents.py): the API promises a frame a second


class WSWatchDocument(msgspec.Struct, kw_only=True):
    type: Literal["watch_document"]
    id: str


class TurnState(enum.Enum):
    """Where a socket's one turn stands (derived, never stored: see `Connection.state`)."""

    IDLE = "idle"  # nothing running: a chat or resume frame starts a turn
    OPENING = "opening"  # a chat is being stored and queued: a stop ends it before it starts
    FOLLOWING = "following"  # an answer's frames are relayed: a stop ends it within one token


class Connection:
    """One WebSocket: its one turn at a time, the answer it follows, and the frames it sends.

    A chat or resume frame starts a task (`current`); frames are sent under one lock so
    the task and the receive loop never interleave half-frames.
    """

    def __init__(self, ws: WebSocket, rt: Runtime) -> None:
        self.ws = ws
        self.rt = rt
        self.who = identity(ws)  # the owner of its turns: only its own answers can be resumed
        self.current: asyncio.Task[None] | None = None
        self.following: Answer | None = None
        self.stop_event = threading.Event()  # a stop before the answer exists (prompt being built)
        self.told_shutdown = False
        self.watches: set[asyncio.Task[None]] = set()  # documents followed, beside the one turn
        self._send_lock = asyncio.Lock()

    @property
    def state(self) -> TurnState:
        if self.current is None or self.current.done():
            return TurnState.IDLE
        return TurnState.OPENING if self.following is None else TurnState.FOLLOWING

    async def send(self, obj: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_text(_enc.encode(obj).decode())
        if obj.get("code") == "server_shutdown":
            self.told_shutdown = True

    async def error(self, code: str, message: str) -> None:
        await self.send(error_frame(RequestError(message, code=code)))

    async def on_shutdown(self) -> None:
        """Graceful shutdown: a final frame (unless the answer sent one), then 1012."""
        with contextlib.suppress(Exception):
            if not self.told_shutdown:
                await self.send(error_frame(turns.shutting_down()))
            await self.ws.close(code=CLOSE_SERVICE_RESTART)

    # -- frames from the client ----------------------------------------------------------
    async def receive_loop(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            raw = msg.get("text")
            raw_bytes = (msg.get("bytes") or b"") if raw is None else raw.encode("utf-8", "surrogatepass")
            if len(raw_bytes) > MAX_WS_FRAME_BYTES:
                await self.error("frame_too_large", f"frames are limited to {MAX_WS_FRAME_BYTES:,} bytes")
                continue
            try:
                kind = decode(raw_bytes, WSFrame).type
            except RequestError as e:
                await self.error(e.code, e.message + ' (frames are JSON objects with a "type": chat, resume, '
                                 "stop or ping)")
                continue
            if kind == "ping":
                await self.send({"type": "pong"})
            elif kind == "stop":
                self.stop()
            elif kind in ("chat", "resume"):
                await self.start(kind, raw_bytes)
            elif kind == "watch_document":
                await self.watch(raw_bytes)
            else:
                await self.error("unknown_type", f"unknown frame type {kind!r}; expected chat, resume, stop, ping "
                                 "or watch_document")

    def stop(self) -> None:
        """The engine ends within one token and the reply's "done" frame says
        finish_reason "cancelled" (status "stopped")."""
        if self.following is not None and not self.following.finished:
            self.following.stop()
        else:
            self.stop_event.set()

    async def start(self, kind: str, raw_bytes: bytes) -> None:
        if self.state is not TurnState.IDLE:
            await self.error("busy", "a reply is still being generated; send {\"type\": \"stop\"} first")
            return
        try:
            chat = decode(raw_bytes, WSChat) if kind == "chat" else None
            resume = decode(raw_bytes, WSResume) if kind == "resume" else None
        except RequestError as e:
            await self.error(e.code, e.message)
            return
        self.following = None
        if chat is not None:
            # The per-client cap on generations, as the HTTP doors have it in the
            # middleware (connlimits.py); the token quota is reserved in the turn.
            refused = connlimits.begin_generation(self.ws.scope)
            if refused is not None:
                await self.error(*refused)
                return
            self.stop_event = threading.Event()
            self.current = asyncio.create_task(self._chat(chat, self.stop_event))
            self.current.add_done_callback(lambda _task: connlimits.end_generation(self.ws.scope))
        elif resume is not None:
            self.current = asyncio.create_task(self._resume(resume))

    # -- one turn ------------------------------------------------------------------------
    async def _relay(self, a: Answer | None, replayed: list[dict[str, Any]], after: int) -> None:
        self.following = a
        for frame in replayed:
            await self.send(frame)
        if a is not None:
            async for frame in self.rt.answers.follow(a, after):
                await self.send(frame)

    async def _chat(self, req: WSChat, stop_event: threading.Event) -> None:
        try:
            opened = await turns.open_chat(self.rt, req, who=self.who, stop=stop_event, waiting=self.send)
            await self._relay(opened.answer, opened.replayed, -1)
        except RequestError as e:
            with contextlib.suppress(Exception):
                await self.send(error_frame(e))
        except (WebSocketDisconnect, RuntimeError):
            pass  # socket closed while sending; the answer waits for a resume

    async def _resume(self, r: WSResume) -> None:
        answers = self.rt.answers
        try:
            if answers.closing:
                raise turns.shutting_down()
            check_answer_id(r.answer_id)
            a = answers.find(r.answer_id, self.who.owner)
            if a is None:  # not in memory (or another owner's): the store, which knows only the owner's
                await self._relay(None, await answers.replay(r.answer_id, r.after, owner=self.who.owner), r.after)
            else:
                await self._relay(a, [], r.after)
        except RequestError as e:
            with contextlib.suppress(Exception):
                await self.send(error_frame(e))
        except (WebSocketDisconnect, RuntimeError):
            pass

    # -- a document's indexing -------------------------------------------------------------
    async def watch(self, raw_bytes: bytes) -> None:
        """Follow a document's indexing beside the turn (documents.document_frames, as the
        SSE stream has them). Another owner's id is `document_not_found`, like a missing one."""
        try:
            doc_id = decode(raw_bytes, WSWatchDocument).id
        except RequestError as e:
            await self.error(e.code, e.message)
            return
        frame: dict[str, Any] | None = None
        svc = self.rt.documents
        if not isinstance(svc, DocumentService):
            frame = error_frame(RequestError("documents are not enabled on this server", code="not_available"))
        elif len(self.watches) >= MAX_WATCHES:
            frame = error_frame(RequestError(f"this socket already follows {MAX_WATCHES} documents; wait for one "
                                             "to finish", code="too_many_watches"))
        else:
            valid = 0 < len(doc_id) <= MAX_ID_CHARS and doc_id.isprintable()  # else no such id: not a store query
            try:
                await svc.opened()  # the first document request may come before serve opened them
                doc = await asyncio.to_thread(svc.library.store.get, doc_id, owner=self.who.owner) if valid else None
            except StorageUnavailable as e:  # DocumentsUnavailable, or a database that is down
                await self.send({**error_frame(_store_down(e)), "document_id": doc_id})
                return
            if doc is None:
                frame = error_frame(RequestError(f"no document with id {doc_id[:80]!r}", code="document_not_found"))
            else:
                task = asyncio.create_task(self._watch(svc, doc))
                self.watches.add(task)
                task.add_done_callback(self.watches.discard)
        if frame is not None:
            await self.send({**frame, "document_id": doc_id})

    async def _watch(self, svc: DocumentService, doc: Document) -> None:
        me = asyncio.current_task()
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the socket closed: stop following
            try:
                async for frame in document_frames(svc, doc, self.who.owner, every_s=PROGRESS_EVERY_S):
                    if frame["type"] != "progress" and me is not None:
                        # Free before the client hears the end: a watch it sends right after is not refused.
                        self.watches.discard(me)
                    await self.send({**frame, "document_id": doc.id})
            except StorageUnavailable as e:  # another replica's document, followed through a store now down
                if me is not None:
                    self.watches.discard(me)
                await self.send({**error_frame(_store_down(e)), "document_id": doc.id})

    async def leave(self) -> None:
        """The socket is gone: stop following (the answer runs on for the resume window)."""
        for task in list(self.watches):
            task.cancel()
        if self.current is not None and not self.current.done():
            self.current.cancel()
            with contextlib.suppress(BaseException):
                await self.current


def _store_down(e: StorageUnavailable) -> RequestError:
    """A watch the store cannot answer now: the page asks again (the indexing goes on)."""
    return RequestError(f"{e}; watch again in a moment", code="storage_unavailable", status=503)


async def websocket_chat(ws: WebSocket) -> None:
    rt: Runtime = ws.app.state.runtime
    await ws.accept()
    conn = Connection(ws, rt)
    rt.answers.sockets.add(conn.on_shutdown)
    try:
        if rt.answers.closing:
            await conn.on_shutdown()
            return
        await conn.receive_loop()
    except WebSocketDisconnect:
        pass
    finally:
        rt.answers.sockets.discard(conn.on_shutdown)
        await conn.leave()
