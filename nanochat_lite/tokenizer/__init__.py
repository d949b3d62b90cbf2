"""Byte-level BPE tokenization that gives the same ids as llama.cpp.

This is the public API; everything else in the package is private.

    >>> from nanochat_lite.tokenizer import Tokenizer
    >>> tok = Tokenizer.from_gguf(path)                # doctest: +SKIP
    >>> tok.decode(tok.encode("Hello")) == "Hello"     # doctest: +SKIP
    True
"""

from nanochat_lite.tokenizer._core import Tokenizer
from nanochat_lite.tokenizer._split import GPT4_PATTERN
from nanochat_lite.tokenizer._train import train

__all__ = ["GPT4_PATTERN", "Tokenizer", "train"]
