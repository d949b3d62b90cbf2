"""Pre-tokenizers: how text is cut into words before BPE runs inside each word.

Two kinds of pre-tokenizer exist:

* ``("llama.cpp", name)`` — a GGUF file's ``tokenizer.ggml.pre``. We support the names
  whose llama.cpp splitter we reproduce exactly (``SUPPORTED_GGUF_PRE``): the GPT-2
  splitter, and the same with every number character split off first (``smollm`` and
  its siblings). Any other name raises ``ValueError``: a near miss would tokenize
  prompts differently from the model's own tokenizer, silently.
* ``("regex", pattern)`` — a tokenizer we trained; the pattern is used as written.

For each kind this module gives the single regex tiktoken runs (``fast_pattern``) and a
plain-Python splitter that mirrors llama.cpp's code step by step (``reference_split``).
The tests hold the two against each other and against llama.cpp.

Not handled: the other llama.cpp splitters (llama3, qwen2, deepseek, ...); Unicode
normalization (none of the supported kinds normalizes).
"""

from __future__ import annotations

from typing import Callable

from nanochat_lite.tokenizer import _unicode as U

# GPT-4's split pattern (tiktoken cl100k_base); rustbpe's default too.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

# llama.cpp (llama-vocab.cpp) maps these tokenizer.ggml.pre names to the regex list
# ["\p{N}", GPT-2 pattern] ...
_DIGITS_THEN_GPT2 = frozenset(
    {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b", "mellum2"}
)
# ... and these to the GPT-2 pattern alone.
_GPT2 = frozenset(
    {
        "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
        "a.x-4.0", "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe",
        "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4",
    }
)
SUPPORTED_GGUF_PRE = _DIGITS_THEN_GPT2 | _GPT2

Spec = tuple[str, str]  # ("llama.cpp", pre name) or ("regex", pattern)


def check_spec(spec: Spec) -> Spec:
    """Return ``spec`` if we can split exactly like it, else raise ``ValueError``."""
    kind, value = spec
    if kind == "regex":
        return spec
    if kind == "llama.cpp":
        if value in SUPPORTED_GGUF_PRE:
            return spec
        raise ValueError(
            f"pre-tokenizer {value!r} is not supported: nanochat-lite only reproduces "
            f"llama.cpp's splitters exactly for {', '.join(sorted(SUPPORTED_GGUF_PRE))}"
        )
    raise ValueError(f"unknown pre-tokenizer kind {kind!r} (expected 'llama.cpp' or 'regex')")


def fast_pattern(spec: Spec) -> str:
    r"""The one regex tiktoken should split with to match ``spec`` exactly.

    llama.cpp runs its regexes one after another, each inside the pieces the last one
    left. For ``smollm`` the first, ``\p{N}``, leaves every number character alone
    and the text between them as pieces; the GPT-2 splitter then sees each piece as a
    whole text, so a run of spaces just before a digit is at "end of text". In one
    regex: numbers match alone, ``\p{N}`` drops out of the GPT-2 number branch, and the
    look-ahead of ``\s+(?!\S)`` treats a digit like the end of text. The classes are
    spelled out from llama.cpp's own Unicode tables (see ``_unicode``).

    The rest is for speed and changes no match. tiktoken's regex engine runs a pattern
    with a look-ahead on a slow backtracking machine, but hands each run of plain
    alternatives to a fast engine; so the plain alternatives come first, as one group
    (those that cannot start on the same character may swap places: letters, the most
    common, go first), and white space that runs to the end of the text, the most
    common case of the look-ahead branch, is matched there without one. Finally
    ``\s+(?!\S)|\s+`` is written as the equivalent ``\s(?:\s*(?!\S))?``.
    """
    kind, value = check_spec(spec)
    if kind == "regex":
        return value
    L = U.regex_class(U.LETTER)
    N = U.regex_class(U.NUMBER)
    S = U.regex_class(U.WHITESPACE)
    contractions = "'s|'t|'re|'ve|'m|'ll|'d"
    if value in _DIGITS_THEN_GPT2:
        return f"(?: ?[{L}]+|[{N}]|{contractions}| ?[^{S}{L}{N}]+|[{S}]+\\z)|[{S}](?:[{S}]*(?![^{S}{N}]))?"
    return f"(?: ?[{L}]+| ?[{N}]+|{contractions}| ?[^{S}{L}{N}]+|[{S}]+\\z)|[{S}](?:[{S}]*(?![^{S}]))?"


def reference_split(spec: Spec) -> Callable[[str], list[str]]:
    """A slow, readable splitter for ``spec``: ``split("it's 42") -> ["it", "'s", " ", "4", "2"]``."""
    kind, value = check_spec(spec)
    if kind == "regex":
        import regex  # tiktoken depends on it; only the reference path needs it

        compiled = regex.compile(value)
        return lambda text: [m.group(0) for m in compiled.finditer(text)]
    if value in _DIGITS_THEN_GPT2:
        return _split_digits_then_gpt2
    return _split_gpt2


def _split_digits_then_gpt2(text: str) -> list[str]:
    """llama.cpp's ``\\p{N}`` pass, then its GPT-2 splitter inside each piece."""
    words: list[str] = []
    start = 0
    for i, ch in enumerate(text):
        if ord(ch) in U.NUMBERS:
            words += _split_gpt2(text[start:i])
            words.append(ch)
            start = i + 1
    words += _split_gpt2(text[start:])
    return words


def _split_gpt2(text: str) -> list[str]:
    """A transcription of ``unicode_regex_split_custom_gpt2`` (llama.cpp ``unicode.cpp``).

    Regex: ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``
    with llama.cpp's character classes, where "past the end" is none of them.
    """
    n = len(text)
    cps = [ord(c) for c in text]

    def cls(pos: int) -> str:  # "L", "N", "S" (white space), "P" (anything else), "" past the end
        if pos >= n:
            return ""
        cp = cps[pos]
        if cp in U.SPACES:
            return "S"
        if cp in U.LETTERS:
            return "L"
        if cp in U.NUMBERS:
            return "N"
        return "P"

    words: list[str] = []
    pos = 0
    while pos < n:
        start = pos
        ch = text[pos]
        if ch == "'" and pos + 1 < n:
            if text[pos + 1] in "stmd":
                words.append(text[pos : pos + 2])
                pos += 2
                continue
            if pos + 2 < n and text[pos + 1 : pos + 3] in ("re", "ve", "ll"):
                words.append(text[pos : pos + 3])
                pos += 3
                continue
        # ' ?' belongs to the letter, number or "other" run that follows the space.
        kind = cls(pos + 1) if ch == " " else cls(pos)
        if kind in ("L", "N", "P"):
            pos += 1 if ch == " " else 0
            while cls(pos) == kind:
                pos += 1
            words.append(text[start:pos])
            continue
        run = 0
        while cls(pos + run) == "S":
            run += 1
        if run > 1 and pos + run < n:  # \s+(?!\S): leave the last space to the next word
            pos += run - 1
        else:  # \s+
            pos += run
        words.append(text[start:pos])
    return words
