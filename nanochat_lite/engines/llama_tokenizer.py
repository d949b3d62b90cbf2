"""llama.cpp's own tokenizer behind llama-server's ``/tokenize``, in this process through
xllamacpp: the reference our BPE tokenizer is measured and checked against (the tokenizer
benchmark). Not used to serve: the engine tokenizes with ours.
"""

from __future__ import annotations

import http.client
import json
import secrets
import signal
import threading
from typing import Any
from urllib.parse import urlsplit


class LlamaServerTokenizer:
    """llama.cpp's tokenizer behind llama-server's ``/tokenize``, in-process through xllamacpp.

    One Server on a loopback port with a random API key; ``encode`` sends one request
    per text on a single kept-alive connection. ``close`` (or dropping it) stops the Server.
    """

    def __init__(self, path: str) -> None:
        import xllamacpp as xl

        p = xl.CommonParams()
        p.model.path = path
        p.n_ctx = 512  # tokens; only the tokenizer is used
        p.warmup = False
        p.no_extra_bufts = True
        p.fit_params = False
        p.verbosity = -1
        self._key = secrets.token_hex(16)
        p.api_keys = [self._key]
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._server: Any = xl.Server(p)
        finally:  # the Server installs its own handlers; keep Ctrl-C working for the caller
            if threading.current_thread() is threading.main_thread():  # signal.signal works only there
                for sig, handler in saved.items():
                    if handler is not None:
                        signal.signal(sig, handler)
        url = urlsplit(self._server.listening_address)
        self._conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        self.version = xl.__version__

    def encode(self, text: str) -> list[int]:
        body = json.dumps({"content": text, "add_special": False, "parse_special": False}, ensure_ascii=False)
        headers = {"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"}
        for attempt in (1, 2):
            try:
                self._conn.request("POST", "/tokenize", body.encode("utf-8"), headers)
                resp = self._conn.getresponse()
                payload = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError):
                self._conn.close()  # the server drops idle kept-alive connections; a retry is safe
                if attempt == 2:
                    raise
        if resp.status != 200:
            raise RuntimeError(f"llama-server /tokenize answered {resp.status}: {payload[:300]!r}")
        tokens: list[int] = json.loads(payload)["tokens"]
        return tokens

    def close(self) -> None:
        self._conn.close()
        self._server = None
