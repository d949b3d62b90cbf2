"""A TCP proxy that drops its connections on command, for cutting a browser off its
server for real: the page's socket dies the way a dropped network connection or a
killed proxy kills it, not through a hook in the page's code.

It listens on a free loopback port and forwards each connection to the server's port,
on an asyncio loop in a thread of its own. `cut()` resets every connection it carries
(both sides, at once, RST instead of FIN, so nothing in flight is delivered);
`cut_websocket_after(n)` does the same once `n` more bytes went from the server to a
WebSocket client, which cuts at an arbitrary byte, often in the middle of a frame.
New connections are accepted again at once, so the page's reconnect gets through.

Not handled: TLS, delays or throttling, half-open connections (a cut always resets).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from dataclasses import dataclass, field


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    websocket: bool = False
    tasks: list[asyncio.Task] = field(default_factory=list)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER 0: close() sends RST, as a dropped connection looks to the peer.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class CutProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0  # bound in __enter__, on port 0: no port picked in advance to lose
        self.url = ""
        self.cuts = 0  # connections reset so far
        self._links: set[_Link] = set()
        self._armed: int | None = None  # bytes to WebSocket clients before the next cut
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cut-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> "CutProxy":
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()
            for link in list(self._links):
                self._drop(link)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.gather(*tasks, return_exceptions=True)

        self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def cut(self) -> int:
        """Reset every connection now; returns how many there were."""

        async def cut() -> int:
            links = list(self._links)
            for link in links:
                self._drop(link)
            return len(links)

        return self._call(cut())

    def cut_websocket_after(self, n: int) -> None:
        """Reset every connection once `n` more bytes went from the server to a WebSocket client."""

        async def arm() -> None:
            self._armed = n

        self._call(arm())

    def disarm(self) -> None:
        """Forget a cut_websocket_after() that has not happened."""

        async def disarm() -> None:
            self._armed = None

        self._call(disarm())

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _drop(self, link: _Link) -> None:
        if link in self._links:
            self._links.discard(link)
            self.cuts += 1
        for w in (link.client, link.upstream):
            if not w.transport.is_closing():
                _reset(w)
        for t in link.tasks:
            t.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            _reset(writer)  # the server is down: the client sees a refused connection
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [asyncio.create_task(self._pump(link, reader, up_writer, to_client=False)),
                      asyncio.create_task(self._pump(link, up_reader, writer, to_client=True))]

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    to_client: bool) -> None:
        first = True
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if first and not to_client:
                    link.websocket = b"upgrade: websocket" in data[:4096].lower()
                first = False
                if to_client and link.websocket and self._armed is not None:
                    if len(data) >= self._armed:
                        writer.write(data[:self._armed])
                        self._armed = None
                        await writer.drain()
                        for other in list(self._links):
                            self._drop(other)
                        return
                    self._armed -= len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if link in self._links:
                # One side closed normally: pass the close on, as a proxy does.
                self._links.discard(link)
                for w in (link.client, link.upstream):
                    if not w.transport.is_closing():
                        w.close()
