"""Turn a GGUF file's tokenizer metadata into raw-byte tokens and merges.

GGUF stores a GPT-2 style vocabulary as *text*: every byte is shown as a printable
character (``bytes_to_unicode``; a space is ``Ġ``, a newline ``Ċ``), and merges are
``"left right"`` strings in rank order. We undo that mapping so everything downstream
works on bytes.

Only ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE) is read; SentencePiece,
WordPiece and the rest raise ``ValueError``. So does a pre-tokenizer we cannot
reproduce exactly (see ``_split.SUPPORTED_GGUF_PRE``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from nanochat_lite import gguf
from nanochat_lite.tokenizer._split import Spec, check_spec

# tokenizer.ggml.token_type values (llama.h, enum llama_token_type). UNUSED (5) is read
# like NORMAL: llama.cpp still finds such a token by its text when encoding.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6


@lru_cache(maxsize=1)
def byte_encoder() -> dict[int, str]:
    """GPT-2's byte -> printable character map: ``byte_encoder()[0x20] -> 'Ġ'``."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


@lru_cache(maxsize=1)
def _to_latin1() -> dict[int, int]:
    # str.translate table: GPT-2 character -> the Latin-1 character of its byte; the
    # Latin-1 characters that are *not* GPT-2 characters go to U+FFFF so that the
    # following encode("latin-1") fails on them.
    table = {ord(c): b for b, c in byte_encoder().items()}
    for b in range(256):
        table.setdefault(b, 0xFFFF)
    return table


def decode_token_text(text: str) -> bytes | None:
    """``'Ġthe'`` -> ``b' the'``; None if a character is outside the byte map."""
    try:
        return text.translate(_to_latin1()).encode("latin-1")
    except UnicodeEncodeError:
        return None


@dataclass
class GGUFVocab:
    """What a Tokenizer needs from a GGUF file, with token texts turned into bytes."""

    name: str
    tokens: list[bytes]  # id -> the bytes it decodes to (special tokens: their UTF-8 text)
    merges: list[tuple[bytes, bytes]]  # in rank order; merges of unknown characters dropped
    special_tokens: dict[str, int]  # control, user-defined and unknown-type tokens
    always_special: frozenset[str]  # user-defined: llama.cpp matches them in any text
    split: Spec
    bos_id: int | None = None
    eos_id: int | None = None
    # Ids whose text is not GPT-2 encoded bytes: no text can produce them, they only decode.
    decode_only: frozenset[int] = frozenset()


def read_vocab(path: str | os.PathLike[str]) -> GGUFVocab:
    """Read the tokenizer of a GGUF file. Raises ``gguf.GGUFError`` or ``ValueError``."""
    info = gguf.read(path)
    md = info.metadata
    where = info.path
    model = md.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(
            f"{where}: tokenizer.ggml.model is {model!r}; nanochat-lite's tokenizer reads "
            f"byte-level BPE ('gpt2') vocabularies only"
        )
    pre = md.get("tokenizer.ggml.pre")
    if not pre:
        raise ValueError(
            f"{where}: no tokenizer.ggml.pre; llama.cpp would fall back to its 'default' "
            f"splitter, which nanochat-lite does not reproduce"
        )
    try:
        split = check_spec(("llama.cpp", str(pre)))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None

    texts = md.get("tokenizer.ggml.tokens")
    if not isinstance(texts, list) or not texts:
        raise ValueError(f"{where}: no tokenizer.ggml.tokens list")
    types = md.get("tokenizer.ggml.token_type") or [NORMAL] * len(texts)
    if len(types) < len(texts):
        raise ValueError(f"{where}: {len(types)} token types for {len(texts)} tokens")

    tokens: list[bytes] = []
    special: dict[str, int] = {}
    always: set[str] = set()
    decode_only: set[int] = set()
    seen: set[str] = set()
    for i, text in enumerate(texts):
        if not text:
            text = f"[EMPTY_{i}]"  # llama.cpp renames empty tokens the same way
        if text in seen:
            raise ValueError(f"{where}: token text {text!r} appears twice; llama.cpp refuses such a vocabulary too")
        seen.add(text)
        ttype = types[i]
        if ttype == BYTE:
            raise ValueError(f"{where}: token {i} ({text!r}) has type BYTE, which a 'gpt2' vocabulary should not use")
        if ttype in (CONTROL, USER_DEFINED, UNKNOWN):
            special[text] = i
            if ttype == USER_DEFINED:
                always.add(text)
            tokens.append(text.encode("utf-8"))
            continue
        raw = decode_token_text(text)
        if raw is None:
            decode_only.add(i)
            raw = text.encode("utf-8")
        tokens.append(raw)

    merges: list[tuple[bytes, bytes]] = []
    for line in md.get("tokenizer.ggml.merges") or []:
        cut = line.find(" ", 1)  # as llama.cpp: the first space after the first character
        if cut < 0:
            continue
        left, right = decode_token_text(line[:cut]), decode_token_text(line[cut + 1 :])
        if left is None or right is None:
            continue  # a merge of characters no text can produce never fires
        merges.append((left, right))

    def token_id(key: str) -> int | None:
        value = md.get(key)
        return value if isinstance(value, int) and 0 <= value < len(texts) else None

    return GGUFVocab(
        name=str(md.get("general.name") or os.path.basename(where)),
        tokens=tokens,
        merges=merges,
        special_tokens=special,
        always_special=frozenset(always),
        split=split,
        bos_id=token_id("tokenizer.ggml.bos_token_id"),
        eos_id=token_id("tokenizer.ggml.eos_token_id"),
        decode_only=frozenset(decode_only),
    )
