"""``nanochat-lite tokenizer``: train a tokenizer, or show how text is tokenized.

    nanochat-lite tokenizer train corpus.txt --vocab-size 4096 -o tok.json
    nanochat-lite tokenizer encode "Hello, world" [--model PATH|NAME | --tokenizer tok.json]

Imported only when the command is named (or for --help); the tokenizer package itself
(and tiktoken under it) only when the command runs. The tokenizer is `nanochat_lite.tokenizer`;
this module only parses and prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tokenizer`` and its sub-commands on the main CLI's subparsers."""
    p = subparsers.add_parser("tokenizer", help="train a BPE tokenizer or tokenize text")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="learn a byte-level BPE tokenizer from a UTF-8 text file")
    t.add_argument("corpus", help="a UTF-8 text file")
    t.add_argument("--vocab-size", type=int, required=True, help="number of ids, special tokens included")
    t.add_argument("-o", "--output", required=True, help="where to write the tokenizer (JSON)")
    t.add_argument("--special", action="append", metavar="TOKEN",
                   help="a special token (repeatable; default: <|endoftext|> <|im_start|> <|im_end|>)")
    t.add_argument("--engine", choices=("rustbpe", "python"), default="rustbpe",
                   help="trainer (default rustbpe; python is slow, for small corpora)")

    e = sub.add_parser("encode", help="show the tokens of a text")
    e.add_argument("text", help="the text to encode")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--model", help="a .gguf file or a known model name (default: the default chat model)")
    src.add_argument("--tokenizer", help="a tokenizer file written by `tokenizer train`")
    e.add_argument("--allow-special", action="store_true", help="read special tokens in the text as such")
    e.add_argument("--ids", action="store_true", help="print only the ids, space-separated")
    return p


def run(args: argparse.Namespace, config: Config) -> int:
    """Run the sub-command; returns the exit status (2: a problem the user can fix)."""
    try:
        if args.tokenizer_command == "train":
            return _train(args)
        return _encode(args, config)
    except (ValueError, OSError) as e:
        print(f"nanochat-lite tokenizer: {e}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from nanochat_lite.tokenizer import train
    from nanochat_lite.tokenizer._train import DEFAULT_SPECIAL_TOKENS

    specials = tuple(args.special) if args.special else DEFAULT_SPECIAL_TOKENS
    start = time.perf_counter()
    tok = train(args.corpus, args.vocab_size, special_tokens=specials, engine=args.engine,
                name=os.path.splitext(os.path.basename(args.output))[0])
    seconds = time.perf_counter() - start
    tok.save(args.output)
    size = os.path.getsize(args.corpus)
    print(f"trained {tok.vocab_size} ids on {size / 1e6:.1f} MB in {seconds:.1f} s "
          f"({args.engine}); wrote {args.output}")
    return 0


def _encode(args: argparse.Namespace, config: Config) -> int:
    from nanochat_lite.tokenizer import Tokenizer

    if args.tokenizer:
        tok = Tokenizer.load(args.tokenizer)
    else:
        tok = Tokenizer.from_gguf(_model_path(args.model, config))
    ids = tok.encode(args.text, allowed_special="all" if args.allow_special else ())
    if args.ids:
        print(" ".join(map(str, ids)))
        return 0
    print(f"{len(ids)} tokens ({tok.name}, {tok.engine})")
    for i in ids:
        print(f"{i:>8}  {tok.piece_text(i)!r}")
    return 0


def _model_path(spec: str | None, config: Config) -> str:
    from pathlib import Path

    from nanochat_lite import models

    spec = spec or config.model  # the main CLI's environment (NANOCHAT_LITE_MODEL) or default
    if spec and Path(spec).expanduser().is_file():
        return str(Path(spec).expanduser())
    name = spec or models.DEFAULT_CHAT
    if name not in models.KNOWN:
        raise ValueError(f"--model {spec!r} is neither a file nor a known model ({', '.join(sorted(models.KNOWN))})")
    try:
        return str(models.ensure(config.home, name, progress=lambda s: print(s, file=sys.stderr)))
    except models.ModelError as e:
        raise ValueError(str(e)) from None
