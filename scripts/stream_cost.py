#!/usr/bin/env python3
"""Server CPU per streamed token, by door: what each token costs the server's process on top of
generating it (issue #24: on 2 cores every microsecond here is taken from llama.cpp's threads).

    .venv/bin/python scripts/stream_cost.py [--tokens 2000] [--gap-ms 2] [--rounds 3]

Starts the real app on uvicorn in a child process with the test suite's fake engine
(tests/fakes.py), which emits `--tokens` deltas `--gap-ms` apart so that each token wakes the
event loop alone, as real decode does; then streams one answer per door from this process:
/api/chat (SSE), /v1/chat/completions (SSE) and the WebSocket. The figure is the child's
utime + stime (/proc/PID/stat) across the request divided by the tokens received; the fake
engine's own sleep-and-emit is in every door's figure alike. CPU time, not wall time, so a
busy machine changes it little. Median of `--rounds`, doors alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def serve(port: int, tokens: int, gap_s: float, db: str) -> None:
    """The child: the app with a fake engine whose deltas come `gap_s` apart."""
    sys.path.insert(0, str(TESTS))
    import uvicorn
    from fakes import FakeEngine, attach_fake  # type: ignore[import-not-found]

    from nanochat_lite.history import ConversationStore
    from nanochat_lite.server import Runtime, create_app

    class Spaced(FakeEngine):  # type: ignore[misc]
        def run(self, prep, params, *, emit, cancel=None, slot=-1):  # type: ignore[no-untyped-def]
            def spaced(ev):  # type: ignore[no-untyped-def]
                time.sleep(gap_s)
                emit(ev)
            return super().run(prep, params, emit=spaced, cancel=cancel, slot=slot)

    rt = Runtime(store=ConversationStore(db), model_name="fake", resume_window_s=0)
    attach_fake(rt, Spaced(reply=[" tok"] * tokens, n_ctx=1 << 20))
    uvicorn.run(create_app(rt), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def measure(tokens: int, gap_s: float, rounds: int) -> dict[str, float]:
    import httpx
    from websockets.sync.client import connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--tokens", str(tokens),
                                  "--gap-ms", str(gap_s * 1000), "--db", os.path.join(tmp, "db.sqlite3")])
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start")
                time.sleep(0.05)

            def api_chat() -> int:
                body = {"message": "hi", "stream": True, "max_tokens": tokens}
                with httpx.stream("POST", url + "/api/chat", json=body, timeout=120) as r:
                    return sum(1 for line in r.iter_lines() if line.startswith("data: ") and '"token"' in line)

            def v1() -> int:
                body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                        "max_tokens": tokens}
                with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
                    return sum(1 for line in r.iter_lines() if line.startswith("data: ") and '"content"' in line)

            def ws() -> int:
                n = 0
                with connect(url.replace("http", "ws", 1) + "/ws") as c:
                    c.send(json.dumps({"type": "chat", "message": "hi", "max_tokens": tokens}))
                    while (frame := json.loads(c.recv())).get("type") not in ("done", "error"):
                        n += frame.get("type") == "token"
                return n

            tick = os.sysconf("SC_CLK_TCK")

            def cpu_s() -> float:
                fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / tick

            per_token: dict[str, list[float]] = {}
            for _ in range(rounds):
                for name, door in (("/api/chat SSE", api_chat), ("/v1/chat/completions SSE", v1), ("WebSocket", ws)):
                    before = cpu_s()
                    n = door()
                    per_token.setdefault(name, []).append((cpu_s() - before) / max(n, 1) * 1e6)
                    print(f"  {name:26s} {n} tokens, {per_token[name][-1]:.0f} us of server CPU per token",
                          flush=True)
        finally:
            child.terminate()
            child.wait(timeout=30)
    return {name: statistics.median(xs) for name, xs in per_token.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--gap-ms", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.tokens, args.gap_ms / 1000, args.db)
        return 0
    result = measure(args.tokens, args.gap_ms / 1000, args.rounds)
    print(f"server CPU per streamed token, median of {args.rounds} (us): "
          + ", ".join(f"{k} {v:.0f}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
