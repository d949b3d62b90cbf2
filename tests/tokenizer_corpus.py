"""Test helpers for the tokenizer: the corpus, and GGUF files made to order.

``lines(n_bytes, seed)`` -> deterministic lines (each ending in "\\n") of many scripts,
code, emoji, numbers, white space and odd code points; ``generate`` joins them. The
generator lives in the package because ``nanochat-lite bench`` uses the same text.
``write_gguf`` writes a tensor-less GGUF that llama.cpp opens with ``vocab_only``.
"""

from __future__ import annotations

import struct
from typing import Any

from nanochat_lite.tokenizer._corpus import EMOJI, ODD, PROSE, generate, lines

__all__ = ["EMOJI", "LLAMA_KEYS", "ODD", "PROSE", "generate", "lines", "write_gguf"]

# Keys llama.cpp needs to open a vocab-only model; values from the default chat model.
LLAMA_KEYS = ("general.architecture", "llama.block_count", "llama.context_length",
              "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
              "llama.attention.head_count_kv", "llama.rope.freq_base",
              "llama.attention.layer_norm_rms_epsilon", "llama.rope.dimension_count")


def write_gguf(path: Any, metadata: dict[str, Any]) -> None:
    """Write a GGUF v3 file with ``metadata`` and no tensors (enough for vocab_only).

    Types: str -> string, bool -> bool, int -> uint32 (``*token_type*`` arrays -> int32),
    float -> float32, list[str] -> string array, list[int] -> int32 array.
    """

    def string(s: str) -> bytes:
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def value(v: Any) -> bytes:
        if isinstance(v, bool):
            return struct.pack("<I?", 7, v)
        if isinstance(v, int):
            return struct.pack("<II", 4, v)
        if isinstance(v, float):
            return struct.pack("<If", 6, v)
        if isinstance(v, str):
            return struct.pack("<I", 8) + string(v)
        if v and isinstance(v[0], str):
            return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(map(string, v))
        return struct.pack("<IIQ", 9, 5, len(v)) + struct.pack(f"<{len(v)}i", *v)

    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata)))
        for key, v in metadata.items():
            f.write(string(key) + value(v))
