"""llama.cpp's own tokenizer as a test reference, through xllamacpp.

xllamacpp runs llama.cpp's server (llama-server) inside this process. ``LlamaRef``
starts one on a loopback port, behind a random API key, and asks its ``/tokenize``
and ``/detokenize``: the ids are libllama's, not a re-implementation's.

    with LlamaRef(path) as llama:
        llama.tokenize("Hi <|im_start|>", special=True)   # -> [..., 1]
        llama.tokenize_all(lines)                         # one list of ids per text

llama-server loads weights as well as the vocabulary (there is no vocab-only mode),
so a tensor-less GGUF is refused. ``write_model(path, metadata)`` writes the
``tokenizer.*`` keys of ``metadata`` into a one-layer llama with zero weights, which
it accepts; tokenization reads only the vocabulary, so the ids are the same as for a
full model with that vocabulary.

Not handled: ``add_special`` (BOS) is always off, as everywhere in these tests.
"""

from __future__ import annotations

import http.client
import json
import math
import secrets
import signal
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from tokenizer_corpus import write_gguf

WORKERS = 3  # client threads in tokenize_all; the machine has 2 cores
HTTP_THREADS = WORKERS + 3  # server side: each kept-alive connection holds one of these
N_CTX = 512  # tokens; the slot is never used, only the tokenizer


class LlamaRef:
    """An in-process llama-server on ``model_path``, used only for its tokenizer."""

    def __init__(self, model_path: str | Path, *, n_ctx: int = N_CTX) -> None:
        import xllamacpp as xl  # imported here: starting a Server is the only reason to

        p = xl.CommonParams()
        p.model.path = str(model_path)
        p.n_ctx = n_ctx
        p.warmup = False
        p.no_extra_bufts = True
        p.fit_params = False
        p.verbosity = -1
        p.n_threads_http = HTTP_THREADS
        self._key = secrets.token_hex(16)
        p.api_keys = [self._key]
        # The Server installs its own SIGINT/SIGTERM handlers; put Python's back so
        # Ctrl-C still stops pytest (the Server stops when it is dropped).
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._server: Any = xl.Server(p)
        except RuntimeError as e:
            raise RuntimeError(f"xllamacpp's llama-server did not start on {model_path}; it refuses a GGUF "
                               "without tensors: write test vocabularies with write_model") from e
        finally:
            if threading.current_thread() is threading.main_thread():
                for s, handler in saved.items():
                    if handler is not None:
                        signal.signal(s, handler)
        url = urlsplit(self._server.listening_address)
        if url.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise RuntimeError(f"llama-server listens on {self._server.listening_address}, not on loopback")
        self._host, self._port = url.hostname, url.port
        self._local = threading.local()  # one HTTPConnection per thread
        self._conns: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        # Long-lived workers: a kept-alive connection holds a server thread until it closes.
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="llama-ref")

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        """llama.cpp's ids for ``text``, no BOS; ``special`` lets "<|im_start|>" be a control token
        (``Llama.tokenize(text.encode(), add_bos=False, special=special)`` in llama-cpp-python)."""
        r = self._post("/tokenize", {"content": text, "add_special": False, "parse_special": special})
        return r["tokens"]

    def tokenize_all(self, texts: Iterable[str], special: bool = False) -> list[list[int]]:
        """``[tokenize(t, special) for t in texts]``, on ``WORKERS`` threads (HTTP latency, not CPU, is the cost)."""
        return list(self._pool.map(lambda t: self.tokenize(t, special), texts))

    def detokenize(self, ids: list[int]) -> str:
        return self._post("/detokenize", {"tokens": ids})["content"]

    def close(self) -> None:
        self._pool.shutdown()
        with self._lock:
            for c in self._conns:
                c.close()
            self._conns.clear()
        self._server = None  # the last reference: llama-server stops

    def __enter__(self) -> LlamaRef:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self._host, self._port, timeout=60)
            with self._lock:
                self._conns.append(conn)
        return conn

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._server is None:
            raise RuntimeError("this LlamaRef is closed")
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")  # strict: a lone surrogate raises here
        headers = {"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"}
        conn = self._conn()
        for attempt in (1, 2):
            try:
                conn.request("POST", route, data, headers)
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError):
                # The server closes kept-alive connections after a few idle seconds;
                # both routes are pure functions, so sending again is safe.
                conn.close()
                if attempt == 2:
                    raise
        if resp.status != 200:
            raise RuntimeError(f"llama-server {route} answered {resp.status}: {payload[:300]!r}")
        return json.loads(payload)


# A one-layer llama small enough to write in a few milliseconds (sizes in elements).
_TINY = {"general.architecture": "llama", "llama.block_count": 1, "llama.context_length": N_CTX,
         "llama.embedding_length": 16, "llama.feed_forward_length": 32, "llama.attention.head_count": 2,
         "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 8, "llama.rope.freq_base": 10000.0,
         "llama.attention.layer_norm_rms_epsilon": 1e-5}
_ALIGN = 32  # GGUF's default general.alignment, bytes
_F32 = 0  # ggml_type


def write_model(path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``metadata``'s ``tokenizer.*`` keys as a tiny llama GGUF that llama-server loads.

    Other keys are replaced by ``_TINY``'s; the weights are F32 zeros, and the output
    matrix is the embedding's (tied), e.g. 16 × 49,152 floats = 3 MB for SmolLM2's vocabulary.
    """
    md = {k: v for k, v in metadata.items() if k.startswith("tokenizer.")}
    n_vocab = len(md["tokenizer.ggml.tokens"])
    d, ff = _TINY["llama.embedding_length"], _TINY["llama.feed_forward_length"]
    shapes = {"token_embd.weight": (d, n_vocab), "output_norm.weight": (d,),  # ggml order: ne0 first
              "blk.0.attn_norm.weight": (d,), "blk.0.attn_q.weight": (d, d), "blk.0.attn_k.weight": (d, d),
              "blk.0.attn_v.weight": (d, d), "blk.0.attn_output.weight": (d, d), "blk.0.ffn_norm.weight": (d,),
              "blk.0.ffn_gate.weight": (d, ff), "blk.0.ffn_up.weight": (d, ff), "blk.0.ffn_down.weight": (ff, d)}
    path = Path(path)
    write_gguf(path, {**_TINY, **md})  # header, metadata, no tensors yet
    infos, offset, sizes = [], 0, []
    for name, shape in shapes.items():
        raw = name.encode()
        infos.append(struct.pack(f"<Q{len(raw)}sI{len(shape)}QIQ", len(raw), raw, len(shape), *shape, _F32, offset))
        size = 4 * math.prod(shape)
        sizes.append(size)
        offset += -(-size // _ALIGN) * _ALIGN
    with open(path, "r+b") as f:
        f.seek(8)  # b"GGUF", uint32 version, then uint64 tensor count
        f.write(struct.pack("<Q", len(shapes)))
        f.seek(0, 2)
        f.write(b"".join(infos))
        f.write(b"\0" * (-f.tell() % _ALIGN))
        for size in sizes:
            f.write(b"\0" * (-(-size // _ALIGN) * _ALIGN))
    return path
