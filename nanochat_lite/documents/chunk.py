"""Blocks -> chunks of about 200 of the embedder's word pieces, cut between words.

    spans = minilm_spans(model_dir)                # the embedder's own WordPiece tokenizer
    chunks = chunk_blocks(blocks, spans)           # max_tokens=200, overlap=32

Sizes are counted in the pieces the embedder will see (all-MiniLM-L6-v2's tokenizer.json,
loaded as embeddings.py loads it), not in whitespace words: 200 pieces of English is
about 150 words, of code or non-Latin script far fewer. A chunk's `embed_text` (its
heading, a newline, its text) stays within `max_tokens` pieces, so with the default
200 the embedder (256 with [CLS]/[SEP]) never cuts it.

How it cuts, section by section (a section: consecutive blocks under one heading;
a new heading always starts a new chunk):
- words are runs of non-space characters; a chunk ends after a whole word, never
  inside one. The one exception: a single "word" longer than a whole chunk (a URL, a
  base64 blob) is cut between its pieces, since it could not be embedded otherwise;
- a full chunk ends at the last paragraph end, else sentence end, in its final 40%
  (so chunks stay near the target without cutting sentences), else after the last
  word that fits;
- the next chunk repeats the last words of the previous one, up to `overlap` pieces,
  from the first sentence start among them if there is one;
- a chunk's page is the page of its first word; its heading is its section's.

Pure and deterministic: the same blocks and tokenizer give the same chunks.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate, groupby
from pathlib import Path

import numpy as np

from .blocks import Block

DEFAULT_MAX_TOKENS = 200
DEFAULT_OVERLAP = 32
_CUT_WINDOW = 0.4  # a chunk may end early at a paragraph or sentence end in its last 40%
_BLOCK_SEPARATOR = "\n\n"
_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?:;][\"')\]]*(?=\s|\Z)")  # at a word's end
_PARAGRAPH_GAP = re.compile(r"\n[^\S\n]*\n")  # two newlines with only other spaces between
_SURROGATES = re.compile("[\ud800-\udfff]")

# texts -> for each text, the (start, end) character offsets of its pieces, in order.
SpanTokenizer = Callable[[list[str]], list[list[tuple[int, int]]]]


@dataclass(frozen=True)
class Chunk:
    text: str  # a slice of the section's text: whole words, paragraph breaks kept
    page: int | None  # the page of its first word (PDFs), else None
    heading: str | None
    tokens: int  # word pieces in `text`, without [CLS]/[SEP]
    position: int  # 0-based order in the document

    @property
    def embed_text(self) -> str:
        """What to embed and to index for full text: the heading gives the chunk its context."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


def minilm_spans(model_dir: Path) -> SpanTokenizer:
    """The embedder's tokenizer (model_dir/tokenizer.json) as a SpanTokenizer, set up as
    embeddings.py sets it up: no truncation, no padding; counted without [CLS]/[SEP]."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def spans(texts: list[str]) -> list[list[tuple[int, int]]]:
        encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
        return [list(e.offsets) for e in encodings]

    return spans


def chunk_blocks(blocks: Sequence[Block], spans: SpanTokenizer, *, max_tokens: int = DEFAULT_MAX_TOKENS,
                 overlap: int = DEFAULT_OVERLAP) -> list[Chunk]:
    """Chunks of at most `max_tokens` pieces (heading included), in document order."""
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be at least 8, got {max_tokens}")
    if not 0 <= overlap <= max_tokens // 2:
        raise ValueError(f"overlap must be between 0 and max_tokens/2 ({max_tokens // 2}), got {overlap}")
    sections = [(heading, list(run)) for heading, run in groupby(blocks, key=lambda b: b.heading)]
    block_texts = [_SURROGATES.sub("\ufffd", b.text) for _, run in sections for b in run]
    headings = [h or "" for h, _ in sections]
    # One batch, block by block: the tokenizer spreads a batch over its threads, not one
    # long text. WordPiece never joins across whitespace, so a block's pieces are the same
    # alone as inside its section.
    all_spans = spans(block_texts + headings)
    chunks: list[Chunk] = []
    b = 0
    for (heading, run), heading_spans in zip(sections, all_spans[len(block_texts):]):
        texts = block_texts[b : b + len(run)]
        offsets = list(accumulate((len(t) + len(_BLOCK_SEPARATOR) for t in texts[:-1]), initial=0))
        piece_starts = np.concatenate([np.asarray([a for a, _ in all_spans[b + i]], np.int64) + offsets[i]
                                       for i in range(len(run))])
        b += len(run)
        text = _BLOCK_SEPARATOR.join(texts)
        pages = [block.page for block in run]
        # A long heading takes at most a quarter of the budget (it is repeated in every chunk).
        budget = max_tokens - min(len(heading_spans), max_tokens // 4)
        for start, end, tokens in _cut(text, piece_starts, budget, min(overlap, budget // 2)):
            page = pages[bisect.bisect_right(offsets, start) - 1]
            chunks.append(Chunk(text[start:end], page, heading, tokens, len(chunks)))
    return chunks


def _words(text: str, piece_starts: np.ndarray, budget: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Whitespace words as (starts, ends, pieces, break after) lists; a word over `budget`
    pieces is split between pieces. Break after a word: 2 a paragraph ends, 1 a sentence
    does, 0 neither. Array work: a 300-page PDF has ~150k words and ~250k pieces."""
    found = [m.span() for m in _WORD.finditer(text)]
    if not found:
        return [], [], [], []
    starts = np.fromiter((a for a, _ in found), np.int64, len(found))
    ends = np.fromiter((z for _, z in found), np.int64, len(found))
    owner = np.searchsorted(starts, piece_starts, side="right") - 1  # the word each piece starts in
    inside = (owner >= 0) & (piece_starts < ends[np.maximum(owner, 0)])
    counts = np.bincount(owner[inside], minlength=len(found))
    breaks = np.zeros(len(found), np.int64)
    stops = np.fromiter((m.end() for m in _SENTENCE_END.finditer(text)), np.int64)
    at = np.minimum(np.searchsorted(ends, stops), len(found) - 1)
    breaks[at[ends[at] == stops]] = 1
    gaps = np.fromiter((m.start() for m in _PARAGRAPH_GAP.finditer(text)), np.int64)
    before = np.searchsorted(ends, gaps, side="right") - 1  # the last word ending before the gap
    breaks[before[before >= 0]] = 2
    breaks[-1] = 2
    out = (starts.tolist(), ends.tolist(), counts.tolist(), breaks.tolist())
    giants = np.flatnonzero(counts > budget)
    if giants.size == 0:
        return out
    words: list[tuple[int, int, int, int]] = []
    owned = owner[inside]
    inside_starts = piece_starts[inside]
    for i, word in enumerate(zip(*out)):
        if counts[i] <= budget:
            words.append(word)
            continue
        cuts = np.sort(inside_starts[owned == i])[budget::budget].tolist()  # `budget` pieces a part
        bounds = [word[0], *cuts, word[1]]
        for j in range(len(bounds) - 1):
            last = j == len(bounds) - 2
            words.append((bounds[j], bounds[j + 1], word[2] - budget * j if last else budget, word[3] if last else 0))
    ws, we, wc, wb = (list(column) for column in zip(*words))
    return ws, we, wc, wb


def _cut(text: str, piece_starts: np.ndarray, budget: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, end, pieces) of each chunk of one section's text."""
    starts, ends, tokens, breaks = _words(text, piece_starts, budget)
    cum = list(accumulate(tokens, initial=0))  # cum[j] - cum[i]: pieces of words i..j-1
    out = []
    s = 0
    while s < len(tokens):
        e = bisect.bisect_right(cum, cum[s] + budget) - 1  # the most words that fit
        if e < len(tokens):  # full: prefer to end at a paragraph, else a sentence, late in the chunk
            e = _best_end(cum, breaks, s, e, budget)
        out.append((starts[s], ends[e - 1], cum[e] - cum[s]))
        if e >= len(tokens):
            break
        s = _overlap_start(cum, breaks, s, e, overlap)
    return out


def _overlap_start(cum: list[int], breaks: list[int], s: int, e: int, overlap: int) -> int:
    """Where the chunk after words s..e-1 starts: its last words, up to `overlap` pieces,
    from a sentence start when one lies among them; always after s (progress)."""
    back = e
    while back - 1 > s and cum[e] - cum[back - 1] <= overlap:
        back -= 1
    for i in range(back, e):  # the earliest sentence start that still repeats a word
        if breaks[i - 1]:
            return i
    return back


def _best_end(cum: list[int], breaks: list[int], s: int, e: int, budget: int) -> int:
    """The end (exclusive) in s+1..e after the strongest break once 60% of the budget is in."""
    floor = (1 - _CUT_WINDOW) * budget
    best, best_break = e, 0
    for i in range(s, e):
        if cum[i + 1] - cum[s] >= floor and breaks[i] > 0 and breaks[i] >= best_break:
            best, best_break = i + 1, breaks[i]
    return best
