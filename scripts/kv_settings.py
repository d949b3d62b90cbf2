#!/usr/bin/env python3
"""What the KV cache's type and flash attention cost and save here (issue #24 item 3).

For each setting, in a fresh process: the engine's load time, its idle RSS, then the
engine's own timings (llama.cpp's `/completion` on the internal listener: prompt and
decode tokens per second) for a ~400-token prompt and 200 generated tokens, median of
--runs. The engine is nanochat-lite's own (engines/local.Engine, the same parameters as
`serve`), with only the KV cache's type and flash attention changed.

    .venv/bin/python scripts/kv_settings.py [--runs 3] [--model PATH] [--kv-size 8192]

Speed figures are only worth reading on a quiet machine (llama.cpp's threads spin): the
script prints the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {  # name: (cache_type_k, cache_type_v, flash_attn_type); ggml types: f16 1, q8_0 8
    "f16, flash attention auto (today)": (1, 1, -1),
    "f16, flash attention off": (1, 1, 0),
    "f16, flash attention on": (1, 1, 1),
    "q8_0 K+V, flash attention on": (8, 8, 1),
}
N_PREDICT = int(os.environ.get("KV_SETTINGS_N_PREDICT", "200"))
PROMPT = ("The history of the bicycle is long. " * 50).strip()


def child(setting: str, model: str, kv_size: int) -> dict[str, float]:
    import xllamacpp

    from nanochat_lite.engines.local import Engine

    k, v, fa = SETTINGS[setting]
    real = xllamacpp.Server

    def server(p: xllamacpp.CommonParams) -> xllamacpp.Server:
        p.cache_type_k, p.cache_type_v, p.flash_attn_type = k, v, fa
        return real(p)

    xllamacpp.Server = server  # type: ignore[misc]
    t0 = time.perf_counter()
    engine = Engine(model, n_ctx=kv_size // 2, kv_size=kv_size, parallel=10, threads=os.cpu_count())
    load_ms = (time.perf_counter() - t0) * 1000
    rss_mb = _rss_mb()
    out = engine._api.call("POST", "/completion", {"prompt": PROMPT, "n_predict": N_PREDICT, "temperature": 0,
                                                   "ignore_eos": True, "cache_prompt": False})
    timings = out["timings"]
    engine.close()
    return {"load_ms": load_ms, "idle_rss_mb": rss_mb, "prompt_tokens": timings["prompt_n"],
            "prompt_tok_s": timings["prompt_per_second"], "decode_tok_s": timings["predicted_per_second"],
            "rss_after_mb": _rss_mb()}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", default=None, help="a GGUF (default: the pulled SmolLM2-135M)")
    ap.add_argument("--kv-size", type=int, default=8192)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model is None:
        from nanochat_lite import models
        from nanochat_lite.config import default_home

        args.model = str(models.model_path(default_home(os.environ), models.lookup("smollm2-135m-instruct")))
    if args.child:
        print(json.dumps(child(args.child, args.model, args.kv_size)))
        return 0
    print(f"load average before: {os.getloadavg()}")
    results: dict[str, list[dict[str, float]]] = {s: [] for s in SETTINGS}
    for _ in range(args.runs):
        for setting in SETTINGS:  # alternating, so a burst of load hits every setting alike
            proc = subprocess.run([sys.executable, __file__, "--child", setting, "--model", args.model,
                                   "--kv-size", str(args.kv_size)], capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                print(f"{setting}: failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
                continue
            results[setting].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"load average after: {os.getloadavg()}")
    print(f"KV cache {args.kv_size} tokens shared by 10 slots; median of {args.runs}\n")
    print("| setting | load ms | idle RSS MB | prompt tok/s | decode tok/s |")
    print("|---|---|---|---|---|")
    for setting, runs in results.items():
        if not runs:
            continue
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(f"| {setting} | {med['load_ms']:.0f} | {med['idle_rss_mb']:.0f} | {med['prompt_tok_s']:.0f} "
              f"| {med['decode_tok_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
