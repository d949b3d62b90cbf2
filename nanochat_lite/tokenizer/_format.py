"""The tokenizer file: versioned JSON that a person can read and diff.

    {
      "format": "nanochat-lite-bpe",
      "version": 1,
      "name": "my-tokenizer",
      "split": {"kind": "regex", "pattern": "'(?i:[sdmt]|ll|ve|re)|..."},
      "tokens": ["00", "01", ..., "7468", "20746865"],   # id -> bytes, hex
      "merges": [["74", "68"], ["20", "7468"], ...],     # byte pairs, hex, rank order
      "special_tokens": {"<|endoftext|>": 4093},
      "always_special": [], "decode_only": [], "bos_id": null, "eos_id": null
    }

``split.kind`` is ``"regex"`` (the pattern is used as written) or ``"llama.cpp"``
with ``"name"`` (a GGUF pre-tokenizer, e.g. ``"smollm"``). Nothing in the file is
executed: it is parsed as JSON and every field is type-checked.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Collection, Mapping, Sequence

from nanochat_lite.tokenizer._split import Spec

FORMAT = "nanochat-lite-bpe"
VERSION = 1


def write(
    path: str | os.PathLike[str],
    *,
    name: str,
    tokens: Sequence[bytes],
    merges: Sequence[tuple[bytes, bytes]],
    special_tokens: Mapping[str, int],
    split: Spec,
    always_special: Collection[str],
    decode_only: Collection[int],
    bos_id: int | None,
    eos_id: int | None,
) -> None:
    """Write the file atomically: a temp file in the same folder, then ``os.replace``."""
    kind, value = split
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "split": {"kind": kind, "pattern" if kind == "regex" else "name": value},
        "special_tokens": dict(special_tokens),
        "always_special": sorted(always_special),
        "decode_only": sorted(decode_only),
        "bos_id": bos_id,
        "eos_id": eos_id,
        "tokens": [t.hex() for t in tokens],
        "merges": [[a.hex(), b.hex()] for a, b in merges],
    }
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tokenizer-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            # One token / merge per line keeps the file greppable and diffable.
            head = {k: v for k, v in doc.items() if k not in ("tokens", "merges")}
            f.write(json.dumps(head, indent=1, ensure_ascii=False)[:-2])
            for key in ("tokens", "merges"):
                items = doc[key]
                f.write(f',\n "{key}": [\n')
                f.write(",\n".join("  " + json.dumps(item) for item in items))
                f.write("\n ]")
            f.write("\n}\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a tokenizer file into ``Tokenizer`` keyword arguments."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a nanochat-lite tokenizer file (not JSON: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path}: expected a nanochat-lite tokenizer file (format {FORMAT!r}), got format {got!r}")
    version = doc.get("version")
    if version != VERSION:
        raise ValueError(
            f"{path}: tokenizer file version {version!r}; this nanochat-lite reads version {VERSION} "
            f"(re-train or re-save it with a matching nanochat-lite)"
        )
    try:
        split = doc["split"]
        kind = split["kind"]
        value = split["pattern"] if kind == "regex" else split["name"]
        tokens = [bytes.fromhex(t) for t in doc["tokens"]]
        merges = [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in doc["merges"]]
        special = {str(k): _int(v) for k, v in doc["special_tokens"].items()}
        return {
            "name": str(doc.get("name", os.path.basename(path))),
            "tokens": tokens,
            "merges": merges,
            "special_tokens": special,
            "split": (str(kind), str(value)),
            "always_special": [str(s) for s in doc.get("always_special", [])],
            "decode_only": [_int(i) for i in doc.get("decode_only", [])],
            "bos_id": _opt_int(doc.get("bos_id")),
            "eos_id": _opt_int(doc.get("eos_id")),
        }
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: malformed tokenizer file ({type(e).__name__}: {e})") from None


def _int(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"expected an integer, got {v!r}")
    return v


def _opt_int(v: object) -> int | None:
    return None if v is None else _int(v)
