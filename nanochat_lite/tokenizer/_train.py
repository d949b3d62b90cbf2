"""Train a byte-level BPE tokenizer: regex pre-split, then merges of byte pairs.

Ids 0..255 are the single bytes, then one id per merge in the order learned, then
the special tokens. Each step merges the most frequent adjacent pair, counted over
the words of the pre-split text; a tie goes to the pair with the smallest
(left id, right id). That rule makes training deterministic, and it is rustbpe's, so
the Rust trainer (the default) and the pure-Python one here (for small tests and
for reading) learn the same merges; ``tests/tokenizer/test_tokenizer_train.py`` checks it.

Not handled: training on more than fits in memory as distinct words (rustbpe keeps
one count per distinct word), special tokens inside the training text (they are
learned as ordinary text).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Iterable, Iterator, Literal, Sequence

from nanochat_lite.tokenizer._core import Tokenizer
from nanochat_lite.tokenizer._split import GPT4_PATTERN

DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_CHUNK_CHARS = 1 << 16  # a file is fed to the trainer in pieces of about this size


def train(
    texts_or_path: Iterable[str] | str | os.PathLike[str],
    vocab_size: int,
    *,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    pattern: str = GPT4_PATTERN,
    engine: Literal["rustbpe", "python"] = "rustbpe",
    name: str = "trained",
) -> Tokenizer:
    """Learn a tokenizer with ``vocab_size`` ids, special tokens included (fewer only
    if the text runs out of pairs to merge).

    ``texts_or_path`` is a path to a UTF-8 text file (``str`` or ``PathLike``) or an
    iterable of strings; pass ``[text]`` for one string in memory. The same input
    gives the same tokenizer, with either engine.
    """
    specials = list(special_tokens)
    if len(set(specials)) != len(specials) or not all(specials):
        raise ValueError(f"special tokens must be distinct and non-empty, got {specials}")
    n_merges = vocab_size - 256 - len(specials)
    if n_merges < 0:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: 256 byte tokens and "
            f"{len(specials)} special tokens need at least {256 + len(specials)}"
        )
    chunks = _read_chunks(texts_or_path)
    if engine == "rustbpe":
        tokens, pairs = _train_rustbpe(chunks, pattern, n_merges)
    elif engine == "python":
        pairs = train_python(chunks, pattern, n_merges)
        tokens = [bytes([b]) for b in range(256)]
        for left, right in pairs:
            tokens.append(tokens[left] + tokens[right])
    else:
        raise ValueError(f"unknown training engine {engine!r} (expected 'rustbpe' or 'python')")
    merges = [(tokens[left], tokens[right]) for left, right in pairs]
    special_ids = {}
    for s in specials:
        special_ids[s] = len(tokens)
        tokens.append(s.encode("utf-8"))
    return Tokenizer(tokens=tokens, merges=merges, special_tokens=special_ids, split=("regex", pattern), name=name)


def _read_chunks(texts_or_path: Iterable[str] | str | os.PathLike[str]) -> Iterator[str]:
    if isinstance(texts_or_path, (str, os.PathLike)):
        path = os.fspath(texts_or_path)
        if not os.path.isfile(path):
            raise ValueError(f"{path!r}: no such file (to train on text in memory, pass a list of strings)")
        return _file_chunks(path)
    return iter(texts_or_path)


def _file_chunks(path: str) -> Iterator[str]:
    # Cut after a newline so that few words are split at a chunk boundary.
    with open(path, encoding="utf-8") as f:
        buf = ""
        while True:
            block = f.read(_CHUNK_CHARS)
            if not block:
                break
            buf += block
            cut = buf.rfind("\n") + 1
            if cut:
                yield buf[:cut]
                buf = buf[cut:]
        if buf:
            yield buf


def _train_rustbpe(chunks: Iterable[str], pattern: str, n_merges: int) -> tuple[list[bytes], list[tuple[int, int]]]:
    try:
        import rustbpe
    except ImportError:
        raise ValueError("training with engine='rustbpe' needs the rustbpe package (pip install rustbpe)") from None
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(chunks, vocab_size=256 + n_merges, pattern=pattern)
    ranks = {bytes(b): rank for b, rank in trainer.get_mergeable_ranks()}
    tokens = [b"" for _ in range(len(ranks))]
    for b, rank in ranks.items():
        tokens[rank] = b
    # rustbpe reports each token's bytes, not which pair made it; recover the pair by
    # running BPE on the token with only the earlier ranks (as minbpe does).
    pairs = []
    for rank in range(256, len(tokens)):
        parts = _bpe_below(tokens[rank], ranks, rank)
        if len(parts) != 2:
            raise RuntimeError(f"rustbpe token {rank} ({tokens[rank]!r}) is not a merge of two earlier tokens")
        pairs.append((ranks[parts[0]], ranks[parts[1]]))
    return tokens, pairs


def _bpe_below(token: bytes, ranks: dict[bytes, int], limit: int) -> list[bytes]:
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, best_rank = -1, limit
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], limit)
            if r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def train_python(chunks: Iterable[str], pattern: str, n_merges: int) -> list[tuple[int, int]]:
    """The merges (left id, right id) learned from ``chunks``; slow, for small inputs."""
    import regex

    compiled = regex.compile(pattern)
    counts: Counter[str] = Counter()
    for chunk in chunks:
        counts.update(m.group(0) for m in compiled.finditer(chunk))
    words = [list(w.encode("utf-8")) for w in counts]
    freqs = list(counts.values())
    pairs: list[tuple[int, int]] = []
    for step in range(n_merges):
        stats = get_stats(words, freqs)
        if not stats:
            break  # every word is a single token: nothing left to merge
        best = max(stats, key=lambda p: (stats[p], -p[0], -p[1]))
        new_id = 256 + step
        words = [merge(w, best, new_id) if len(w) > 1 else w for w in words]
        pairs.append(best)
    return pairs


def get_stats(words: Sequence[Sequence[int]], freqs: Sequence[int]) -> Counter[tuple[int, int]]:
    """Weighted counts of adjacent pairs: ``get_stats([[1, 2, 3, 1, 2]], [2]) -> {(1, 2): 4, (2, 3): 2, (3, 1): 2}``."""
    stats: Counter[tuple[int, int]] = Counter()
    for w, f in zip(words, freqs):
        for pair in zip(w, w[1:]):
            stats[pair] += f
    return stats


def merge(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each non-overlapping ``pair``, left to right: ``merge([1, 1, 1], (1, 1), 9) -> [9, 1]``."""
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
