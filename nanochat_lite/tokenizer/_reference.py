"""A pure-Python BPE encoder that follows llama.cpp step by step. Slow; meant to be read.

It is the definition the fast path (tiktoken) is checked against, and the fallback
for a vocabulary tiktoken cannot express. What it does, in order:

1. Lone surrogates become U+FFFD (tiktoken does the same; they have no UTF-8 form).
2. Allowed special tokens are cut out of the text, longest token first
   (``tokenizer_st_partition`` in ``llama-vocab.cpp``).
3. Each remaining fragment is split into words (``_split``).
4. Inside each word, starting from single bytes, the adjacent pair with the lowest
   merge rank is merged until no listed merge applies; ties go to the leftmost pair.
   Only pairs in the merge list merge, whatever the vocabulary holds.
5. Each final piece becomes its token id. A piece that is not a token (a byte the
   vocabulary lacks, or a merge result outside it) is handled like llama.cpp: every
   byte of it that is itself a printable ASCII token is kept, the rest dropped.
"""

from __future__ import annotations

from typing import Callable, Collection, Mapping, Sequence

Pair = tuple[bytes, bytes]


def bpe(word: bytes, merge_ranks: Mapping[Pair, int]) -> list[bytes]:
    """Merge the bytes of ``word`` by rank: ``bpe(b"aab", {(b"a", b"a"): 0}) -> [b"aa", b"b"]``."""
    parts = [word[i : i + 1] for i in range(len(word))]
    while len(parts) > 1:
        best = None
        best_rank = None
        for i in range(len(parts) - 1):
            rank = merge_ranks.get((parts[i], parts[i + 1]))
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = i, rank
        if best is None:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


class ReferenceEncoder:
    """Encode text exactly the way llama.cpp's BPE tokenizer does, in plain Python."""

    def __init__(
        self,
        *,
        token_ids: Mapping[bytes, int],
        merges: Sequence[Pair],
        split: Callable[[str], list[str]],
        special_tokens: Mapping[str, int],
    ) -> None:
        self.token_ids = token_ids
        # The first occurrence of a duplicated merge wins, as in llama.cpp's emplace().
        self.merge_ranks: dict[Pair, int] = {}
        for rank, pair in enumerate(merges):
            self.merge_ranks.setdefault(pair, rank)
        self.split = split
        self.special_tokens = special_tokens

    def encode(self, text: str, allowed_special: Collection[str] = ()) -> list[int]:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids: list[int] = []
        for fragment in self._partition(text, allowed_special):
            if isinstance(fragment, int):
                ids.append(fragment)
                continue
            for word in self.split(fragment):
                for piece in bpe(word.encode("utf-8"), self.merge_ranks):
                    ids += self._piece_ids(piece)
        return ids

    def _piece_ids(self, piece: bytes) -> list[int]:
        token = self.token_ids.get(piece)
        if token is not None:
            return [token]
        # llama.cpp looks each byte of the piece's GPT-2 *encoded* text up as a token
        # text. Only printable ASCII encodes to one byte, itself; anything else misses.
        out = []
        for b in piece:
            if 0x21 <= b <= 0x7E and bytes([b]) in self.token_ids:
                out.append(self.token_ids[bytes([b])])
        return out

    def _partition(self, text: str, allowed: Collection[str]) -> list[str | int]:
        fragments: list[str | int] = [text] if text else []
        for name in sorted(allowed, key=len, reverse=True):
            token = self.special_tokens[name]
            out: list[str | int] = []
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    continue
                pieces = frag.split(name)
                for i, piece in enumerate(pieces):
                    if i:
                        out.append(token)
                    if piece:
                        out.append(piece)
            fragments = out
        return fragments
