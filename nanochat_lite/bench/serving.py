"""Cold start and single-stream decode speed, side by side in one run.

Cold start: process start -> ready -> first streamed token, for nanochat-lite and every
peer given or installed (serial baseline, llama-server, llama_cpp.server) on the same
GGUF and thread count, alternating, median of N. Every peer gets the same OpenAI-style
streaming request; "ready" is the peer's own readiness route (`peers.py`).

Decode: tokens/s between the first and last streamed token of a long answer through
nanochat-lite's /api/chat, against llama-bench's `-p 0 -n 128` text-generation figure
(decoding alone, no server, no sampling) when a binary is given, and against
llama-cpp-python's own `Llama.generate` loop on the same prompt when that package is
installed (in a child process: a native build that crashes is reported in its row, and
ours still runs), alternating round by round.

    python -m nanochat_lite.bench.serving [--runs 5] [--threads 2] [--llama-server PATH] [--llama-bench PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from . import isolate
from . import peers as _peers
from .common import fmt, machine, settle_nanochat, stream_openai, summary
from .peers import NANO, Peer, PeerOptions, llama_bench_tg, nanochat, serving_peers

FIRST_MESSAGES = [{"role": "user", "content": "Hello! Who are you?"}]
LONG_PROMPT = "Write the numbers from 1 to 500, separated by commas."
LLAMA_BENCH_TG = 128  # llama-bench -n: its usual tg128


def cold_start(peers: list[Peer], absent: dict[str, str], runs: int,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {p.name: {"health_s": [], "first_token_s": []} for p in peers}
    absent = dict(absent)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            for peer in peers:
                if peer.name in absent:  # it crashed or failed in an earlier run
                    continue
                extra = {"n_predict": 4} if peer.n_predict else {}
                try:
                    with peer.start(Path(tmp)) as p:
                        health = p.wait_ready(peer.ready_path)
                        try:
                            first = stream_openai(p.url, FIRST_MESSAGES, max_tokens=4, **extra)["first"] - p.t0
                        except Exception as e:  # a peer that dies mid-answer: say by what
                            signum = p.crashed()
                            raise isolate.PeerCrashed(signum, p.log_text()[-1500:]) if signum else e
                except Exception as e:
                    if peer.name == NANO:
                        raise
                    absent[peer.name] = isolate.row_text(e)  # the other peers' runs go on
                    del results[peer.name]
                    log(f"  run {i + 1}/{runs} {peer.name:<31} {absent[peer.name]}")
                    continue
                results[peer.name]["health_s"].append(health)
                results[peer.name]["first_token_s"].append(first)
                log(f"  run {i + 1}/{runs} {peer.name:<31} ready {health * 1000:7.0f} ms   "
                    f"first token {first * 1000:7.0f} ms")
    out: dict[str, Any] = {name: {k: summary([v * 1000 for v in vals], 0) for k, vals in r.items()}
                           for name, r in results.items()}
    out.update(absent)
    ratios = {}
    for name in results:
        if name != NANO:
            ratios[f"{NANO} / {name}"] = {
                "first_token": round(out[NANO]["first_token_s"]["median"] / out[name]["first_token_s"]["median"], 3),
                "health": round(out[NANO]["health_s"]["median"] / out[name]["health_s"]["median"], 3)}
            log(f"  ratio {NANO} / {name}: first token {ratios[f'{NANO} / {name}']['first_token']:.2f}×")
    out["ratios"] = ratios
    out["peer_order"] = list(results)
    return out


def _prompt_tokens(llm: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt as nanochat-lite builds it: the GGUF's template rendered in our sandbox;
    template text may hold control tokens, message text may not."""
    from ..engines.template import ChatTemplate

    template = ChatTemplate(llm.metadata.get("tokenizer.chat_template"))
    ids: list[int] = []
    for part in template.render_parts(messages):
        ids += llm.tokenize(part.text.encode("utf-8"), add_bos=False, special=not part.is_content)
    return ids


def _raw_generate_tps(llm: Any, tokens: list[int], n: int) -> float:
    first = last = None
    count = 0
    for _tok in llm.generate(tokens, temp=0.0, repeat_penalty=1.0, top_k=40, top_p=0.9, min_p=0.05):
        now = time.perf_counter()
        first = first or now
        last = now
        count += 1
        if count >= n:
            break
    return (count - 1) / (last - first)


def llama_cpp_python_decoder(model: str, ctx: int, threads: int, prompt: str
                             ) -> tuple[dict[str, Any], Callable[[dict[str, Any]], dict[str, float]]]:
    """In a child process (isolate.Worker): llama-cpp-python's model on `prompt`; each
    request {"n": N} answers {"tok_s": its own generate loop's tokens/s over N tokens}."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, n_ctx=ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    tokens = _prompt_tokens(llm, [{"role": "user", "content": prompt}])
    return {"version": llama_cpp.__version__}, lambda req: {"tok_s": _raw_generate_tps(llm, tokens, int(req["n"]))}


def _server_tps(url: str, n: int) -> tuple[float, int]:
    body = {"message": LONG_PROMPT, "stream": True, "temperature": 0, "repeat_penalty": 1.0, "max_tokens": n}
    first = last = None
    tokens = 0
    with httpx.Client(timeout=300) as c, c.stream("POST", url + "/api/chat", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            ev = json.loads(line[6:])
            if ev["type"] == "token":
                now = time.perf_counter()
                first = first or now
                last = now
            elif ev["type"] == "done":
                tokens = ev["usage"]["completionTokens"]
            elif ev["type"] == "error":
                raise RuntimeError(f"/api/chat: {ev}")
    if tokens < 2 or first is None or last is None or last <= first:
        raise RuntimeError(f"/api/chat streamed {tokens} tokens: too few to time")
    # Deltas can merge tokens (a multi-byte character); rate by the server's token count.
    return (tokens - 1) / (last - first), tokens


class _RawPeer:
    """llama-cpp-python's generate loop in a child process, or why there is none: a row
    that says "not installed", "crashed (signal 11)" or "failed: ..." instead of figures."""

    def __init__(self, enabled: bool, factory: Callable[..., Any] | str, init: dict[str, Any],
                 log: Callable[[str], None]) -> None:
        self.worker: isolate.Worker | None = None
        self.why = "not installed (pip install llama-cpp-python)"
        self.lost = False  # it was there and went: its figures so far are dropped
        self.log = log
        if enabled:
            try:
                self.worker = isolate.Worker(factory, **init)
            except isolate.PeerFailed as e:
                self._lost(e)

    def tps(self, n: int) -> float | None:
        """Tokens/s over `n` tokens; None once the peer is gone."""
        if self.worker is None:
            return None
        try:
            return float(self.worker.call({"n": n})["tok_s"])
        except isolate.PeerFailed as e:
            self._lost(e)
            return None

    def _lost(self, e: isolate.PeerFailed) -> None:
        self.why, self.lost = isolate.row_text(e), True
        self.log(f"  llama-cpp-python: {self.why}" + (f"; its last words: {e.stderr_tail[-300:]}"
                                                       if isinstance(e, isolate.PeerCrashed) and e.stderr_tail else ""))
        self.close()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def decode_speed(model_path: Path, threads: int, ctx: int, runs: int, n_tokens: int = 256, *,
                 serve_args: tuple[str, ...] = (), llama_bench: Path | None = None,
                 llama_cpp_python: bool = True, raw_peer: Callable[..., Any] | str = llama_cpp_python_decoder,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """nanochat-lite's tokens/s beside llama-cpp-python's own loop (in a child process:
    a native build that crashes is its row, "crashed (signal N)", and ours still runs) and
    llama-bench's tg128, alternating round by round. `raw_peer` is the child's factory."""
    raw_peer_ = _RawPeer(llama_cpp_python and _peers.have_llama_cpp_python(), raw_peer,
                         {"model": str(model_path), "ctx": ctx, "threads": threads, "prompt": LONG_PROMPT}, log)
    ours: list[float] = []
    raw: list[float] = []
    bench: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            peer = nanochat(model_path, threads, ctx, serve_args)
            with peer.start(Path(tmp)) as p:
                p.wait_ready(peer.ready_path)
                settle_nanochat(p.url)
                _server_tps(p.url, 16)  # warm up
                raw_peer_.tps(16)
                for i in range(runs):
                    tps, got = _server_tps(p.url, n_tokens)
                    ours.append(tps)
                    line = f"  run {i + 1}/{runs} nanochat-lite /api/chat {tps:6.1f} tok/s ({got} tokens)"
                    theirs = raw_peer_.tps(got)
                    if theirs is not None:
                        raw.append(theirs)
                        line += f"   llama-cpp-python generate {theirs:6.1f} tok/s"
                    if llama_bench is not None:
                        bench.append(llama_bench_tg(llama_bench, model_path, threads, LLAMA_BENCH_TG))
                        line += f"   llama-bench tg{LLAMA_BENCH_TG} {bench[-1]:6.1f} tok/s"
                    log(line)
    finally:
        raw_peer_.close()
    out: dict[str, Any] = {NANO: summary(ours)}
    raw_name, bench_name = "llama-cpp-python generate", f"llama-bench tg{LLAMA_BENCH_TG}"
    # A peer that crashed part-way keeps no figures: its row says what happened.
    out[raw_name] = summary(raw) if raw and not raw_peer_.lost else raw_peer_.why
    out[bench_name] = summary(bench) if bench else "not given (--llama-bench PATH)"
    if isinstance(out[raw_name], dict):
        out["ratio_llama_cpp_python"] = round(out[NANO]["median"] / out[raw_name]["median"], 3)
    if bench:
        out["ratio_llama_bench"] = round(out[NANO]["median"] / out[bench_name]["median"], 3)
    for key, label in (("ratio_llama_cpp_python", raw_name), ("ratio_llama_bench", bench_name)):
        if key in out:
            log(f"  ratio {NANO} / {label}: {out[key]:.3f}×")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ctx", type=int, default=2048, help="context size for every server (llama_cpp.server's default)")
    ap.add_argument("--model", help="GGUF path (default: the pulled default model)")
    ap.add_argument("--llama-server", type=Path, help="a llama-server binary to compare cold start with")
    ap.add_argument("--llama-bench", type=Path, help="a llama-bench binary to compare decode speed with")
    ap.add_argument("--serve-args", default="", help="extra `nanochat-lite serve` flags, one quoted string")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--skip-decode", action="store_true")
    args = ap.parse_args(argv)
    from .. import models
    from ..config import Config

    model_path = Path(args.model) if args.model else models.ensure(Config.from_env().home, models.DEFAULT_CHAT)
    opts = PeerOptions(llama_server=args.llama_server, llama_bench=args.llama_bench,
                       serve_args=tuple(shlex.split(args.serve_args)))
    info = machine()
    print(f"# Serving benchmark — {info['date']} — {info['cpu']}, {info['cores']} cores, "
          f"{args.threads} threads, ctx {args.ctx}, load average at start {info['load_average']:.2f}")
    print(f"Model: {model_path}")
    print(f"\nCold start (median of {args.runs}, alternating; ms from process start):")
    peers, absent = serving_peers(opts, model_path, args.threads, args.ctx)
    cs = cold_start(peers, absent, args.runs)
    for name in cs["peer_order"]:
        print(f"  {name:<31} ready: {fmt(cs[name]['health_s'], ' ms'):<24} "
              f"first token: {fmt(cs[name]['first_token_s'], ' ms')}")
    for name, why in cs.items():
        if isinstance(why, str):  # not given, not installed, crashed
            print(f"  {name:<31} {why}")
    results: dict[str, Any] = {"machine": info, "threads": args.threads, "ctx": args.ctx, "cold_start": cs}
    if not args.skip_decode:
        print(f"\nDecode speed (median of {args.runs}, tokens/s between first and last streamed token):")
        results["decode"] = decode_speed(model_path, args.threads, args.ctx, args.runs,
                                         serve_args=opts.serve_args, llama_bench=opts.llama_bench)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
