"""Tokenizer speed: nanochat-lite vs llama.cpp vs Hugging Face tokenizers (one thread).

    .venv/bin/python bench/tokenizer_bench.py [--quick] [--json] [--model PATH]

Prints a table (or JSON with --json). The work is in nanochat_lite.tokenizer.bench.run,
which `nanochat-lite bench` reuses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# One thread everywhere, before any native library starts its pool.
for var in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
    os.environ.setdefault(var, "1" if var != "TOKENIZERS_PARALLELISM" else "false")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="less text, fewer repeats")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--model", help="a .gguf file (default: the default chat model)")
    args = ap.parse_args()

    from nanochat_lite.tokenizer.bench import run

    result = run(args.quick, model_path=args.model)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(f"model {result['model']}: {result['text_bytes'] / 1e6:.2f} MB of mixed text in "
          f"{result['lines']:,} lines; chat message {result['chat_message_words']} words = "
          f"{result['chat_message_tokens']} tokens; 1 thread")
    print(f"{'tokenizer':<28}{'encode MB/s':>12}{'chat msg/s':>12}{'ours is x':>16}  ids equal ours")
    for name, r in result["results"].items():
        ratio = "" if name == "nanochat-lite" else f"{r['our_speedup_encode']:.1f} / {r['our_speedup_chat']:.1f}"
        equal = "yes" if r["ids_equal"] else f"NO ({r['mismatched_lines']} lines differ)"
        print(f"{name:<28}{r['encode_mb_s']:>12.2f}{r['chat_per_s']:>12,.0f}{ratio:>16}  {equal}   [{r['note']}]")
    print("'ours is x' = our encode speed / theirs, our chat rate / theirs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
