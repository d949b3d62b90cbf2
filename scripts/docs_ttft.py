"""A chat turn's first-token time idle, and while a big PDF is being indexed; ingest speed.

    .venv/bin/python scripts/docs_ttft.py [--pages 300] [--turns 8] [--threads 2]

A thin wrapper: the measurement is `nanochat_lite.bench.docs_ingest` (a real server on a
free port, a PDF of Python's documentation from `bench.bookmake`), also run by
`nanochat-lite bench --sections documents`, which prints it beside the previous figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from nanochat_lite import models
from nanochat_lite.bench import docs_ingest
from nanochat_lite.bench.suite import CTX
from nanochat_lite.config import default_home


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    home = default_home(os.environ)
    model = models.ensure(home, models.DEFAULT_CHAT)
    r = docs_ingest.run(model, args.threads, CTX, home, pages=args.pages, turns=args.turns)
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
