"""A chat turn's first-token time idle, and while a big document is being indexed.

    .venv/bin/python scripts/docs_ttft.py [--pages 300] [--turns 8]

Starts `nanochat-lite serve` on a free port with a throwaway database, measures the
time to the first token of short streamed /api/chat turns (one at a time) with nothing
else running, then uploads a document of `--pages` pages of prose (text, one page a
form feed) and measures the same turns while it is embedded, and finally how fast the
document was indexed (pages/s, chunks/s). Prints the load average at each phase: on a
shared machine the figures mean little without it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SENTENCES = [
    "The committee reviewed the annual budget and asked for a clearer account of travel costs.",
    "Rivers carry sediment to the sea, where it settles into deltas over thousands of years.",
    "A compiler turns source code into machine instructions, checking types along the way.",
    "Bees communicate the direction of flowers to the hive through a waggle dance.",
    "The library extended its opening hours during the examination period in spring.",
]


def _document(pages: int) -> bytes:
    words_per_page = 350
    out = []
    for p in range(pages):
        text, i = [], p
        while sum(len(s.split()) for s in text) < words_per_page:
            text.append(f"Page {p + 1}, note {i}: " + SENTENCES[i % len(SENTENCES)])
            i += 1
        out.append(f"Chapter {p + 1}\n=========\n\n" + " ".join(text))
    return "\n\n".join(out).encode()


def _ttft(url: str) -> float:
    started = time.perf_counter()
    with httpx.stream("POST", url + "/api/chat", json={"message": "Name a colour.", "stream": True, "max_tokens": 4,
                                                       "temperature": 0}, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:]).get("type") == "token":
                return (time.perf_counter() - started) * 1000
    raise RuntimeError("no token came")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--turns", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        proc = subprocess.Popen([sys.executable, "-m", "nanochat_lite", "serve", "--port", "0", "--port-file",
                                 str(port_file), "--db", str(Path(tmp) / "h.db"), "--threads", "2"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = _wait_ready(port_file, proc)
            _ttft(url)  # warm: the first turn pays for the cache
            httpx.post(url + "/api/documents/search", json={"query": "warm the embedder"}, timeout=120)
            print(_load())
            idle = [_ttft(url) for _ in range(args.turns)]
            print(f"idle:            TTFT p50 {statistics.median(idle):.0f} ms, max {max(idle):.0f} ms "
                  f"({args.turns} turns)")
            data = _document(args.pages)
            started = time.perf_counter()
            r = httpx.post(url + "/api/documents", files={"file": ("big.txt", data)}, timeout=300)
            r.raise_for_status()
            doc_id = r.json()["data"]["id"]
            accepted = time.perf_counter() - started
            busy = []
            while _state(url, doc_id) == "indexing" and len(busy) < args.turns:
                busy.append(_ttft(url))
            print(_load())
            print(f"while indexing:  TTFT p50 {statistics.median(busy):.0f} ms, max {max(busy):.0f} ms "
                  f"({len(busy)} turns)")
            while (state := _state(url, doc_id)) == "indexing":
                time.sleep(0.2)
            total = time.perf_counter() - started
            doc = httpx.get(f"{url}/api/documents/{doc_id}").json()["data"]["document"]
            print(f"indexed {args.pages} pages ({len(data) / 1e6:.1f} MB, {doc['chunks']} chunks) -> {state} in "
                  f"{total:.1f} s ({accepted:.1f} s to parse and accept): {args.pages / total:.1f} pages/s, "
                  f"{doc['chunks'] / total:.1f} chunks/s, embedding batch 16")
            print(_load())
        finally:
            proc.terminate()
            proc.wait(30)
    return 0


def _state(url: str, doc_id: str) -> str:
    return str(httpx.get(f"{url}/api/documents/{doc_id}").json()["data"]["document"]["status"])


def _wait_ready(port_file: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        if port_file.exists():
            url = f"http://127.0.0.1:{int(port_file.read_text())}"
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise RuntimeError("the server did not get ready")


if __name__ == "__main__":
    sys.exit(main())
