"""Who a client is, behind a proxy and without one (issue #20, item 5): X-Forwarded-For is
believed only from the proxies named by `--forwarded-allow-ips`. Real servers with the real
model, the shipped nginx config (tests/nginxproc.py), and the per-client cap on generations
(`--max-client-generations 1`) as the observable: a second generation of the *same* client
is refused with 429 while its first one streams; another client's is served.

Clients come from different loopback addresses (127.0.0.2, 127.0.0.3: all of 127/8 is this
machine), so nginx sees two real clients."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from nginxproc import Nginx, nginx_binary
from serverproc import ServerProc

# An answer that outlasts the checks made while it streams (each test also checks it still runs).
# (The burst test's blocker: without a repeat penalty the model keeps counting; with the
# default one and "one number per line" it once stopped within seconds on a quiet machine.)
LONG = {"message": "Write the numbers from 1 to 2000, separated by commas.", "max_tokens": 4000,
        "temperature": 0, "repeat_penalty": 1.0, "stream": True}


@contextmanager
def holding(url: str, source: str, headers: dict[str, str] | None = None) -> Iterator[None]:
    """One streaming generation from `source`, held open for the block; it must still be
    generating at the end, else the refusals seen inside prove nothing."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=120) as c:
        with c.stream("POST", url + "/api/chat", json=LONG, headers=headers or {}) as r:
            assert r.status_code == 200, r.read()
            lines = r.iter_lines()
            while '"type":"token"' not in next(lines).replace(" ", ""):
                pass  # up to its first token: the generation holds its place now
            yield
            generating = httpx.get(url + "/api/stats", timeout=30).json()["requests"]["generating"]
            assert generating >= 1, "the held generation ended inside the block: the refusals prove nothing"


def second(url: str, source: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"message": "hi", "max_tokens": 4}
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=120) as c:
        return c.post(url + "/api/chat", json=body, headers=headers or {})


def test_a_spoofed_forwarded_for_does_not_change_who_a_direct_client_is(tmp_path: Path, chat_model_path) -> None:
    with ServerProc(tmp_path, "--max-client-generations", "1") as server:
        with holding(server.url, "127.0.0.2", {"X-Forwarded-For": "10.0.0.1"}):
            for spoof in ("10.0.0.2", "10.0.0.3, 10.0.0.4", "127.0.0.3"):
                r = second(server.url, "127.0.0.2", {"X-Forwarded-For": spoof})
                assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_generations", (spoof, r.text)
            # another real client is another client
            assert second(server.url, "127.0.0.3").status_code == 200


def test_behind_the_shipped_nginx_config_each_real_client_has_its_own_cap(tmp_path: Path, chat_model_path) -> None:
    nginx_binary()  # a missing nginx fails the run (tests/nginxproc.py)
    with ServerProc(tmp_path, "--max-client-generations", "1", "--forwarded-allow-ips", "127.0.0.1") as server:
        nginx = Nginx(tmp_path / "nginx", [f"127.0.0.1:{server.port}"]).start()
        try:
            with holding(nginx.url, "127.0.0.2"):
                r = second(nginx.url, "127.0.0.2")
                assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_generations", r.text
                # nginx appends the real address to a forged header: the forgery changes nothing
                r = second(nginx.url, "127.0.0.2", {"X-Forwarded-For": "10.9.9.9"})
                assert r.status_code == 429, r.text
                assert second(nginx.url, "127.0.0.3").status_code == 200
        finally:
            nginx.stop()


@pytest.mark.parametrize("flag", [None, "127.0.0.1"])
def test_websocket_frames_over_the_apps_limit_are_refused_by_the_server_itself(tmp_path: Path, chat_model_path,
                                                                               flag: str | None) -> None:
    """One frame limit: uvicorn's is the app's (1 MiB), not its own 16 MiB/4 MiB default."""
    import websockets.sync.client as wsc
    from websockets.exceptions import ConnectionClosed

    from nanochat_lite.server.wire.limits import MAX_WS_FRAME_BYTES

    args = ["--forwarded-allow-ips", flag] if flag else []
    with ServerProc(tmp_path, *args) as server:
        with wsc.connect(server.ws_url, max_size=None) as ws:
            ws.send('{"type": "ping"}')
            assert '"pong"' in ws.recv(timeout=30)
            ws.send('{"type": "ping", "pad": "' + "x" * MAX_WS_FRAME_BYTES + '"}')
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
