"""The Tokenizer: byte-level BPE that gives the same ids as llama.cpp, fast.

Encoding runs on tiktoken when the vocabulary allows it and falls back to the
pure-Python reference (``_reference``) when it does not; ``Tokenizer.engine`` says
which. tiktoken's BPE ranks *strings* (the rank of ``a+b`` decides when a and b
merge) while llama.cpp ranks the *pairs* of its merge list, so the two agree only on
vocabularies where that difference cannot show. ``_plan_tiktoken`` checks the
conditions under which they provably agree (see its docstring); a file that fails
them is still tokenized correctly, just slowly.

Not handled: adding BOS/EOS (the chat template does that), Unicode normalization.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection, Literal, Mapping, Sequence

from nanochat_lite.tokenizer._gguf import decode_token_text
from nanochat_lite.tokenizer._reference import Pair, ReferenceEncoder
from nanochat_lite.tokenizer._split import Spec, check_spec, fast_pattern, reference_split

if TYPE_CHECKING:
    import tiktoken

Engine = Literal["auto", "tiktoken", "reference"]
AllowedSpecial = Collection[str] | Literal["all"]


class Tokenizer:
    """A byte-level BPE tokenizer.

    Build one with ``Tokenizer.from_gguf(path)``, ``Tokenizer.load(path)`` or
    ``train(...)``. Special tokens in text are plain text unless ``encode`` is told
    otherwise::

        >>> tok = Tokenizer.from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
        >>> tok.encode("<|im_start|>")                                     # doctest: +SKIP
        [44, 108, 306, 79, 3738, 108, 46]
        >>> tok.encode("<|im_start|>", allowed_special={"<|im_start|>"})   # doctest: +SKIP
        [1]
    """

    def __init__(
        self,
        *,
        tokens: Sequence[bytes],
        merges: Sequence[Pair],
        special_tokens: Mapping[str, int],
        split: Spec,
        name: str = "bpe",
        always_special: Collection[str] = (),
        decode_only: Collection[int] = (),
        bos_id: int | None = None,
        eos_id: int | None = None,
        engine: Engine = "auto",
    ) -> None:
        """Low-level constructor; ``tokens[i]`` is what id ``i`` decodes to.

        ``special_tokens`` maps names to ids (their bytes are the UTF-8 name);
        ``always_special`` names are matched in any text, as llama.cpp does for
        user-defined tokens; ``decode_only`` ids are never produced by encoding.
        """
        if engine not in ("auto", "tiktoken", "reference"):
            raise ValueError(f"unknown engine {engine!r} (expected 'auto', 'tiktoken' or 'reference')")
        self.name = name
        self._tokens = list(tokens)
        self._merges = list(merges)
        self._split = check_spec(split)
        n = len(self._tokens)
        for label, value in [*special_tokens.items(), ("bos_id", bos_id), ("eos_id", eos_id)]:
            if value is not None and not 0 <= value < n:
                raise ValueError(f"{label} = {value} is outside the vocabulary (0..{n - 1})")
        unknown = set(always_special) - set(special_tokens)
        if unknown:
            raise ValueError(f"always_special names {sorted(unknown)} are not special tokens")
        self._special = dict(special_tokens)
        self._always = frozenset(always_special)
        self._decode_only = frozenset(decode_only)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self._lookup = _lookup_table(self._tokens, self._special, self._decode_only)
        self._reference = ReferenceEncoder(
            token_ids=self._lookup,
            merges=self._merges,
            split=reference_split(self._split),
            special_tokens=self._special,
        )
        self._enc: tiktoken.Encoding | None = None
        self._remap: list[int] | None = None
        self._first_sentinel: int | None = None
        #: Why tiktoken is not used (None when it is).
        self.slow_reason: str | None = "engine='reference' was asked for"
        if engine != "reference":
            plan = _plan_tiktoken(self._lookup, self._merges, self._special, n)
            if isinstance(plan, str):
                self.slow_reason = plan
                if engine == "tiktoken":
                    raise ValueError(f"tiktoken cannot encode this vocabulary exactly: {plan}")
            else:
                import tiktoken

                self._enc = tiktoken.Encoding(
                    name,
                    pat_str=fast_pattern(self._split),
                    mergeable_ranks=plan.ranks,
                    special_tokens=plan.special,
                )
                self._remap = plan.remap
                self._first_sentinel = plan.first_sentinel
                self.slow_reason = None

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str], *, engine: Engine = "auto") -> Tokenizer:
        """The tokenizer of a GGUF model, giving the ids llama.cpp gives.

        Raises ``ValueError`` (``GGUFError`` is one) for an unreadable file, a model
        other than byte-level BPE, or a pre-tokenizer we cannot reproduce exactly.
        """
        from nanochat_lite.tokenizer._gguf import read_vocab

        v = read_vocab(path)
        return cls(
            tokens=v.tokens,
            merges=v.merges,
            special_tokens=v.special_tokens,
            split=v.split,
            name=v.name,
            always_special=v.always_special,
            decode_only=v.decode_only,
            bos_id=v.bos_id,
            eos_id=v.eos_id,
            engine=engine,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, engine: Engine = "auto") -> Tokenizer:
        """Read a file written by ``save``. Wrong format or version: ``ValueError``."""
        from nanochat_lite.tokenizer._format import read

        return cls(**read(path), engine=engine)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tokenizer as versioned JSON, atomically."""
        from nanochat_lite.tokenizer._format import write

        write(
            path,
            name=self.name,
            tokens=self._tokens,
            merges=self._merges,
            special_tokens=self._special,
            split=self._split,
            always_special=self._always,
            decode_only=self._decode_only,
            bos_id=self.bos_id,
            eos_id=self.eos_id,
        )

    # -- the API --------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        return len(self._tokens)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token name -> id (a copy)."""
        return dict(self._special)

    @property
    def engine(self) -> str:
        """``"tiktoken"`` or ``"reference"`` (pure Python, see ``slow_reason``)."""
        return "reference" if self._enc is None else "tiktoken"

    def encode(self, text: str, *, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Token ids for ``text``, without BOS/EOS.

        Special tokens in ``text`` are encoded as plain text unless named in
        ``allowed_special`` (a collection of names, one name, or ``"all"``). Lone
        surrogates, which have no UTF-8 form, are encoded as U+FFFD.
        """
        allowed = self._allowed(allowed_special)
        if self._enc is None:
            return self._reference.encode(text, allowed)
        if allowed:
            ids = self._enc.encode(text, allowed_special=allowed, disallowed_special=())
        else:
            ids = self._enc.encode_ordinary(text)
        if self._remap is not None:
            remap = self._remap
            return [t for t in map(remap.__getitem__, ids) if t >= 0]
        # Bytes the vocabulary lacks come back as sentinel ids; llama.cpp drops them.
        if self._first_sentinel is not None and ids and max(ids) >= self._first_sentinel:
            limit = self._first_sentinel
            ids = [t for t in ids if t < limit]
        return ids

    def count(self, text: str) -> int:
        """How many tokens ``encode(text)`` gives."""
        return len(self.encode(text))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The bytes the ids stand for; special tokens give their text."""
        tokens = self._tokens
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join([tokens[i] for i in ids])
        except (IndexError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or not 0 <= i < len(tokens))
            raise ValueError(f"token id {bad!r} is not in the vocabulary (0..{len(tokens) - 1})") from None

    def decode(self, ids: Sequence[int]) -> str:
        """``decode_bytes`` as text; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def piece(self, id: int) -> bytes:
        """The bytes of one token (may be part of a UTF-8 character)."""
        return self.decode_bytes([id])

    def piece_text(self, id: int) -> str:
        r"""One token for display: ``' the'``, or ``'\xe4\xbd'`` for a partial character."""
        return self.piece(id).decode("utf-8", errors="backslashreplace")

    def __repr__(self) -> str:
        return f"<Tokenizer {self.name!r} vocab_size={self.vocab_size} engine={self.engine}>"

    def _allowed(self, allowed_special: AllowedSpecial) -> frozenset[str]:
        if not allowed_special:
            return self._always
        if allowed_special == "all":
            return frozenset(self._special)
        names = {allowed_special} if isinstance(allowed_special, str) else set(allowed_special)
        unknown = names - self._special.keys()
        if unknown:
            raise ValueError(
                f"not special tokens of this vocabulary: {sorted(unknown)}; "
                f"known: {sorted(self._special)}"
            )
        return self._always | names


def _lookup_table(tokens: list[bytes], special: Mapping[str, int], decode_only: frozenset[int]) -> dict[bytes, int]:
    """bytes -> id for the encoder's final lookup, as llama.cpp's ``text_to_token``.

    llama.cpp looks a finished piece up by its GPT-2 encoded text among *all* token
    texts, special ones included; so a special token is found under its name read
    back through the byte map (the same bytes for an ASCII name).
    """
    names = {i: name for name, i in special.items()}
    table: dict[bytes, int] = {}
    for i, raw in enumerate(tokens):
        if i in decode_only:
            continue
        key = decode_token_text(names[i]) if i in names else raw
        if key is not None:
            table.setdefault(key, i)
    return table


@dataclass
class _TiktokenPlan:
    ranks: dict[bytes, int]
    special: dict[str, int]
    remap: list[int] | None  # tiktoken id -> our id (-1: drop), when they differ
    first_sentinel: int | None  # without remap: ids >= this are bytes to drop


def _plan_tiktoken(
    lookup: Mapping[bytes, int], merges: Sequence[Pair], special: Mapping[str, int], n_ids: int
) -> _TiktokenPlan | str:
    """tiktoken ranks that give llama.cpp's ids, or the reason there are none.

    llama.cpp merges the listed pair with the lowest rank; tiktoken merges the adjacent
    pair whose *concatenation* has the lowest rank. Give each token the rank of the
    merge that makes it; the two then agree on every input when

    1. every merge that can fire makes a token, and no token is made by two merges;
    2. every such token encodes to itself under llama.cpp's rules.

    Why 2 suffices: tiktoken could only differ by joining adjacent x, y where x+y is a
    token but (x, y) is not its merge. Inside the span x+y, llama.cpp's merges run
    exactly as they would on the text x+y alone (a merge across the span's edge would
    have broken it), so llama.cpp alone would stop at [x, y]; by 2 it does not.
    Bytes the vocabulary lacks become sentinel ranks that ``encode`` filters out.
    """
    merge_ranks: dict[Pair, int] = {}
    for rank, pair in enumerate(merges):
        merge_ranks.setdefault(pair, rank)
    # Which pieces can exist: single bytes, then whatever merges of them make (in any
    # order: a low-rank merge can wait for a part that a later merge makes).
    reachable = {bytes([b]) for b in range(256)}
    made_by: dict[bytes, int] = {}
    grew = True
    while grew:
        grew = False
        for (a, b), rank in merge_ranks.items():
            if a in reachable and b in reachable and (a + b) not in reachable:
                reachable.add(a + b)
                grew = True
    for (a, b), rank in merge_ranks.items():
        if a not in reachable or b not in reachable:
            continue
        s = a + b
        if s not in lookup:
            return f"merge {a!r} + {b!r} makes {s!r}, which is not a token"
        if s in made_by:
            return f"{s!r} is made by two merges (ranks {made_by[s]} and {rank})"
        made_by[s] = rank
    bad = _first_token_not_encoding_to_itself(made_by, merge_ranks)
    if bad is not None:
        return f"token {bad!r} does not encode to itself"

    ids_by_rank = [lookup[s] for s in sorted(made_by, key=made_by.__getitem__)]
    if all(x < y for x, y in zip(ids_by_rank, ids_by_rank[1:])):
        # Our ids already sort like the merge ranks: use them as tiktoken ranks.
        ranks = {s: lookup[s] for s in made_by}
        first_sentinel = max(n_ids, max(ranks.values(), default=0) + 1)
        missing = False
        for b in range(256):
            one = bytes([b])
            if one in lookup:
                ranks[one] = lookup[one]
            else:
                ranks[one] = first_sentinel + b
                missing = True
        return _TiktokenPlan(ranks, dict(special), None, first_sentinel if missing else None)
    # Otherwise number everything ourselves and translate back after encoding.
    remap = [lookup.get(bytes([b]), -1) for b in range(256)]
    ranks = {bytes([b]): b for b in range(256)}
    for s in sorted(made_by, key=made_by.__getitem__):
        ranks[s] = len(remap)
        remap.append(lookup[s])
    tik_special = {}
    for name, i in special.items():
        tik_special[name] = len(remap)
        remap.append(i)
    return _TiktokenPlan(ranks, tik_special, remap, None)


_NEVER = 1 << 62  # rank of a pair that is not a merge


def _first_token_not_encoding_to_itself(made_by: Mapping[bytes, int], merge_ranks: Mapping[Pair, int]) -> bytes | None:
    """The first token s for which llama.cpp's BPE of the bytes of s is not [s], or None.

    Same answer as checking ``_reference.bpe(s) == [s]`` for each token, in a fifth of
    the time, by reusing the work done for the two halves. s = a + b comes out whole
    only if a and b do and no pair straddling the a|b boundary merges first. While
    no such pair merges, the merges inside a run exactly as they do on a alone, and
    likewise for b; so replaying the two recorded runs side by side, always taking the
    lower-ranked next merge (a first on a tie: it is to the left), decides it. A run
    is recorded as one (lowest pair rank, first piece, last piece) per state.
    """
    pair_of = {a + b: (a, b) for (a, b), rank in merge_ranks.items() if made_by.get(a + b) == rank}
    runs: dict[bytes, list[tuple[int, bytes, bytes]]] = {bytes([b]): [(_NEVER, bytes([b]), bytes([b]))] for b in range(256)}
    for s in sorted(made_by, key=len):
        a, b = pair_of[s]
        run_a, run_b = runs[a], runs[b]
        i = j = 0
        run: list[tuple[int, bytes, bytes]] = []
        while True:
            rank_a, first, last_a = run_a[i]
            rank_b, first_b, last = run_b[j]
            cross = merge_ranks.get((last_a, first_b), _NEVER)
            if cross < rank_a and cross <= rank_b:
                if i == len(run_a) - 1 and j == len(run_b) - 1:
                    run.append((cross, first, last))  # the state [a, b]
                    break  # a and b are whole and merge: s comes out whole
                return s  # a straddling pair merged first
            run.append((min(rank_a, rank_b, cross), first, last))
            if rank_a <= rank_b:
                i += 1
            else:
                j += 1
            if i == len(run_a) or j == len(run_b):
                return s  # a or b does not come out whole (only possible if its own check failed)
        run.append((_NEVER, s, s))
        runs[s] = run
    return None
