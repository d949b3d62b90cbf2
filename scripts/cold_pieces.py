#!/usr/bin/env python3
"""Where `serve`'s cold start goes, piece by piece (issue #24 item 1): each piece timed
alone in a fresh interpreter (`time.perf_counter()` around the import or the call; the
interpreter itself by wall clock), median (min-max) of --runs, alternating pieces so a
burst of load hits all alike. Only worth reading on a quiet machine: the load average
is printed before and after.

    .venv/bin/python scripts/cold_pieces.py [--runs 5] [--model PATH]

Pieces: the interpreter; the start-up commands (`nanochat_lite.commands.boot`); the web
stack (`nanochat_lite.server.app` with uvicorn); what the web stack no longer imports
on the way to the first token (numpy, the document vectors' half); `Engine(...)` with
serve's defaults (xllamacpp's `Server()`, the internal API's first calls, the prompt
builder); and `Server()` alone, with the KV cache's size and type varied.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PIECES = {
    "commands.boot": "import nanochat_lite.commands.boot",
    "web stack (server.app + uvicorn)": "import uvicorn, nanochat_lite.server.app",
    "numpy (deferred now)": "import numpy",
}
ENGINE = ("from nanochat_lite.engines.local import Engine\n"
          "Engine({model!r}, n_ctx=4096, kv_size={kv}, parallel=10, threads=os.cpu_count(), kv_type={kv_type!r})")


def timed(code: str) -> float:
    """Milliseconds `code` takes in a fresh interpreter, measured inside it."""
    script = ("import time, os\nt = time.perf_counter()\n" + code +
              "\nprint(json.dumps((time.perf_counter() - t) * 1000))")
    out = subprocess.run([sys.executable, "-c", "import json\n" + script], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    return float(out.strip().splitlines()[-1])


def interpreter() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return (time.perf_counter() - t) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    if args.model is None:
        from nanochat_lite import models
        from nanochat_lite.config import default_home

        args.model = str(models.model_path(default_home(os.environ), models.lookup("smollm2-135m-instruct")))
    pieces = {"the interpreter (python -c pass, wall)": interpreter}
    pieces.update({name: (lambda code=code: timed(code)) for name, code in PIECES.items()})
    for kv, kv_type in ((8192, "f16"), (8192, "q8_0"), (4096, "f16")):
        label = f"Engine(...) with KV {kv} tokens {kv_type}" + (" (serve's default)" if (kv, kv_type) == (8192, "f16")
                                                               else "")
        pieces[label] = lambda kv=kv, kv_type=kv_type: timed(ENGINE.format(model=args.model, kv=kv, kv_type=kv_type))
    print(f"load average before: {os.getloadavg()}")
    samples: dict[str, list[float]] = {name: [] for name in pieces}
    for _ in range(args.runs):
        for name, fn in pieces.items():
            samples[name].append(fn())
    print(f"load average after: {os.getloadavg()}")
    print("| piece | ms, median (min–max) |\n|---|---|")
    for name, values in samples.items():
        print(f"| {name} | {statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f}) |")
    print(json.dumps(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
