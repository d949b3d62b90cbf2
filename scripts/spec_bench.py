#!/usr/bin/env python3
"""Draft-free speculative decoding against none, on chat, code and JSON answers (#24 item 6).

Each mode of `serve --speculative` gets a fresh engine in its own process (the same settings
as `serve`: engines/local.Engine from Config's defaults), the modes alternating, --rounds
times, so a burst of load from elsewhere hits every mode alike. Each process answers the
same three questions at temperature 0 and with the default sampling (a fixed seed):

  chat  "Explain why the sky is blue." (the commonest answer: prose, few repeats)
  code  a Python class whose methods repeat the same identifiers
  json  a list of 10 objects with the same keys, constrained by a JSON Schema (the grammar
        path of `response_format` / `json_schema`)

It prints decode tokens/s (llama.cpp's own timings: generated tokens over generation time),
the median over rounds and its ratio to `off`, the share of drafted tokens the model kept
(llama.cpp's draft_n_accepted / draft_n), and whether every temperature-0 answer equals
off's, token for token (it must: a draft is kept only where the model would have chosen it).

    .venv/bin/python scripts/spec_bench.py [--rounds 3] [--modes off,ngram-simple] [--max-tokens 200]

Speed figures are only worth reading on a quiet machine (llama.cpp's threads spin): the load
average is printed at the start and the end. About 4 minutes on 2 quiet cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

KINDS: dict[str, tuple[str, Any]] = {  # kind: (question, JSON Schema or None)
    "chat": ("Explain why the sky is blue.", None),
    "code": ("Write a Python class ShoppingCart with the methods add_item(item_name, price), "
             "remove_item(item_name), get_price(item_name) and total_price(); every method uses "
             "self.items, a dict from item_name to price.", None),
    "json": ("Give 10 people as JSON: name, age, city and email of each.",
             {"type": "array", "minItems": 10, "maxItems": 10,
              "items": {"type": "object", "additionalProperties": False,
                        "required": ["name", "age", "city", "email"],
                        "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                       "city": {"type": "string"}, "email": {"type": "string"}}}}),
}
SAMPLINGS = ("greedy", "default")  # temperature 0; SamplingParams' defaults (0.6, top-k 40 ...)
SEED = 1234


def child(mode: str, max_tokens: int, threads: int | None, ngram: int | None,
          draft: int | None) -> list[dict[str, Any]]:
    from nanochat_lite import models
    from nanochat_lite.config import Config
    from nanochat_lite.engines import local
    from nanochat_lite.generation import SamplingParams

    if ngram:  # exploring other lookups than the engine's (not offered by `serve`)
        local.SPEC_NGRAM = ngram
    if draft:
        local.SPEC_DRAFT = draft
    c = Config.from_env()
    c.threads = threads or c.threads
    path = models.model_path(c.home, models.lookup(c.model))
    engine = local.Engine(path, n_ctx=c.ctx_size, parallel=c.parallel, kv_size=c.kv_size, threads=c.threads,
                          batch=c.batch_size, kv_type=c.kv_type, speculative=mode)
    out = []
    for kind, (question, schema) in KINDS.items():
        for sampling in SAMPLINGS:
            params = SamplingParams(max_tokens=max_tokens, seed=SEED, json_schema=schema)
            if sampling == "greedy":
                params = params.with_overrides(temperature=0.0)
            prep = engine.prompts.prepare([{"role": "user", "content": question}], params)
            texts: list[str] = []
            timings: dict[str, Any] = {}

            def on_chunk(chunk: dict[str, Any]) -> bool:
                choices = chunk.get("choices") or ()
                if choices and choices[0].get("text"):
                    texts.append(choices[0]["text"])
                timings.update(chunk.get("timings") or {})
                return False

            # The body `Engine.run` sends; read directly for llama.cpp's draft counts, which Done omits.
            engine._complete(local._request_body(prep, params, SEED, -1), on_chunk)
            out.append({"kind": kind, "sampling": sampling, "text": "".join(texts),
                        "tokens": timings.get("predicted_n", 0), "tok_s": timings.get("predicted_per_second", 0.0),
                        "drafted": timings.get("draft_n", 0), "accepted": timings.get("draft_n_accepted", 0)})
    engine.close()
    return out


def main() -> int:
    from nanochat_lite.engines.local import SPECULATIVE_MODES

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default=",".join(SPECULATIVE_MODES), help="comma-separated, off first")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, help="the engine's threads (default: serve's, one per core)")
    ap.add_argument("--ngram", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--draft", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.max_tokens, args.threads, args.ngram, args.draft)))
        return 0
    modes = args.modes.split(",")
    if modes[0] != "off" or any(m not in SPECULATIVE_MODES for m in modes):
        ap.error(f"--modes: off first, then any of {', '.join(SPECULATIVE_MODES[1:])}")
    extra = [arg for flag, value in (("--threads", args.threads), ("--ngram", args.ngram), ("--draft", args.draft))
             if value for arg in (flag, str(value))]
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    t0 = time.monotonic()
    runs: dict[str, list[list[dict[str, Any]]]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:  # alternating, and not always off first
            t_child = time.monotonic()
            proc = subprocess.run([sys.executable, __file__, "--child", mode, "--max-tokens", str(args.max_tokens),
                                   *extra], capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                print(f"{mode}: the engine process failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
                continue
            runs[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  round {r + 1}, {mode}: {time.monotonic() - t_child:.0f} s", file=sys.stderr, flush=True)
    print(f"load average at end:   {' '.join(f'{x:.2f}' for x in os.getloadavg())}  "
          f"({time.monotonic() - t0:.0f} s, {args.rounds} rounds)\n")
    report(runs, modes)
    return 0


def report(runs: dict[str, list[list[dict[str, Any]]]], modes: list[str]) -> None:
    """One row per kind and sampling: off's median tok/s, then each mode's median tok/s,
    ratio to off and share of drafted tokens kept; then the temperature-0 answers' check."""
    def cell(mode: str, kind: str, sampling: str) -> list[dict[str, Any]]:
        return [a for run in runs[mode] for a in run if a["kind"] == kind and a["sampling"] == sampling]

    print("| kind | sampling | off tok/s | " + " | ".join(f"{m} tok/s (× off, kept)" for m in modes[1:]) + " |")
    print("|---|---|---|" + "---|" * (len(modes) - 1))
    for kind in KINDS:
        for sampling in SAMPLINGS:
            base = cell("off", kind, sampling)
            off = statistics.median(a["tok_s"] for a in base) if base else float("nan")
            row = [kind, sampling, f"{off:.1f}"]
            for mode in modes[1:]:
                got = cell(mode, kind, sampling)
                if not got:
                    row.append("failed")
                    continue
                speed = statistics.median(a["tok_s"] for a in got)
                drafted = sum(a["drafted"] for a in got)
                kept = f"{100 * sum(a['accepted'] for a in got) / drafted:.0f}%" if drafted else "no drafts"
                row.append(f"{speed:.1f} ({speed / off:.2f}×, {kept})")
            print("| " + " | ".join(row) + " |")
    print()
    for mode in modes[1:]:
        for kind in KINDS:
            expected = {a["text"] for a in cell("off", kind, "greedy")}
            got = [a["text"] for a in cell(mode, kind, "greedy")]
            if len(expected) != 1:
                print(f"temperature 0, {kind}: off itself answered {len(expected)} different ways")
            same = sum(text in expected for text in got)
            verdict = "identical" if same == len(got) and got else f"DIFFERENT in {len(got) - same} of {len(got)}"
            print(f"temperature 0, {kind}, {mode} vs off: {verdict}")


if __name__ == "__main__":
    sys.exit(main())
