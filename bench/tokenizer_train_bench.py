"""Tokenizer training time: nanochat-lite's train() next to rustbpe called directly.

    .venv/bin/python bench/tokenizer_train_bench.py [--quick] [--json]

Vocabulary 4,096 on 10 MB of generated mixed text (2 MB with --quick). rustbpe uses
all CPUs (rayon); so does train(), which runs rustbpe and then checks the result.
"""

from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 MB instead of 10 MB")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()

    from nanochat_lite.tokenizer.bench import run_train

    r = run_train(args.quick)
    if args.json:
        json.dump(r, sys.stdout, indent=2)
        print()
        return 0
    print(f"vocab {r['vocab_size']:,} on {r['corpus_bytes'] / 2**20:.0f} MB, {r['cpu_threads']} CPUs")
    print(f"{'nanochat-lite train()':<24}{r['train_seconds']:>8.2f} s")
    print(f"{'rustbpe directly':<24}{r['rustbpe_seconds']:>8.2f} s")
    print(f"same vocabulary: {'yes' if r['same_vocabulary'] else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
