"""The cost of the front: a chat answered through Nanochat-Lite with
`--engine openai:URL` against the same chat asked straight from that upstream.

Starts two processes on free loopback ports: an upstream `nanochat-lite serve` with the
model, and a front `serve --engine openai:<upstream>/v1` (no model). Then asks the same
streamed `/v1/chat/completions` alternately of each, one request at a time (so both
see the same machine state), and reports TTFT and decode tokens/s for each path and the
front's added TTFT at the median. Not here: concurrency (the serving benchmarks do that)
and the registration in `nanochat-lite bench` (suite.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import httpx

from .client import SAMPLING, Ask, Sample, http_request, summarize
from .common import Proc, free_port, nanochat_cmd

PROMPTS = ("Tell me about the Moon.", "What is a good name for a cat?", "Explain rain to a child.",
           "Write a haiku about autumn.")


def _body(prompt: str, max_tokens: int) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, **SAMPLING}


def run(*, model: str, threads: int, ctx: int = 4096, rounds: int = 20, max_tokens: int = 32) -> dict[str, Any]:
    """{"direct": summary, "front": summary, "added_ttft_ms_p50": float | None}; a summary
    is client.summarize's (ttft_ms, decode_tok_s, ...). One warm-up request per path first."""
    ask = Ask(count=lambda text: len(text.split()), max_tokens=max_tokens)  # both report usage; unused
    with tempfile.TemporaryDirectory(prefix="nanochat-front-cost-") as tmp:
        up_port, front_port = free_port(), free_port()
        with Proc(nanochat_cmd(up_port, model, threads, ctx, Path(tmp) / "up.sqlite3"), up_port) as up:
            up.wait_ready("/api/health")
            # The front serves the upstream alone: with --model beside --engine the upstream
            # would be one more entry and the local model the default.
            front_cmd = nanochat_cmd(front_port, model, threads, ctx, Path(tmp) / "front.sqlite3")
            at = front_cmd.index("--model")
            del front_cmd[at:at + 2]
            front_cmd += ["--engine", f"openai:{up.url}/v1"]
            with Proc(front_cmd, front_port) as front, httpx.Client() as client:
                front.wait_ready("/api/health")
                samples: dict[str, list[Sample]] = {"direct": [], "front": []}
                for url in (up.url, front.url):  # warm-up: connections, the upstream's slot caches
                    http_request(client, url, _body(PROMPTS[0], 4), ask)
                for i in range(rounds):
                    body = _body(PROMPTS[i % len(PROMPTS)], max_tokens)
                    # Alternate which path goes first: neither always gets the warmer cache.
                    order = (("direct", up.url), ("front", front.url))
                    for name, url in order if i % 2 == 0 else order[::-1]:
                        samples[name].append(http_request(client, url, body, ask))
    direct, via = summarize(samples["direct"]), summarize(samples["front"])
    added = None
    if direct["ttft_ms"].get("n") and via["ttft_ms"].get("n"):
        added = round(via["ttft_ms"]["median"] - direct["ttft_ms"]["median"], 1)
    return {"direct": direct, "front": via, "added_ttft_ms_p50": added, "rounds": rounds, "max_tokens": max_tokens}


def line(result: dict[str, Any]) -> str:
    """One report line: `front cost: TTFT p50 41.2 ms direct, 44.0 ms through the front (+2.8 ms); ...`."""
    d, f = result["direct"], result["front"]
    return (f"front cost: TTFT p50 {d['ttft_ms'].get('median')} ms direct, {f['ttft_ms'].get('median')} ms through "
            f"the front ({result['added_ttft_ms_p50']:+} ms); decode {d['decode_tok_s'].get('median')} tok/s "
            f"direct, {f['decode_tok_s'].get('median')} tok/s through the front ({result['rounds']} requests each)"
            if result["added_ttft_ms_p50"] is not None else
            f"front cost: not measured (direct: {d['errors']} errors, front: {f['errors']} errors)")
