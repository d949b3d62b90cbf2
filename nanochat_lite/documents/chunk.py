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
from itertools import groupby
from pathlib import Path

from .blocks import Block

DEFAULT_MAX_TOKENS = 200
DEFAULT_OVERLAP = 32
_CUT_WINDOW = 0.4  # a chunk may end early at a paragraph or sentence end in its last 40%
_BLOCK_SEPARATOR = "\n\n"
_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?:;][\"')\]]*$")
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
    texts = [_SURROGATES.sub("\ufffd", _BLOCK_SEPARATOR.join(b.text for b in run)) for _, run in sections]
    headings = [h or "" for h, _ in sections]
    all_spans = spans(texts + headings)  # one batch: the tokenizer runs in parallel over it
    chunks: list[Chunk] = []
    for (heading, run), text, text_spans, heading_spans in zip(sections, texts, all_spans, all_spans[len(texts):]):
        # A long heading takes at most a quarter of the budget (it is repeated in every chunk).
        budget = max_tokens - min(len(heading_spans), max_tokens // 4)
        offsets, pages = _block_pages(run)
        for start, end, tokens in _cut(text, text_spans, budget, min(overlap, budget // 2)):
            page = pages[bisect.bisect_right(offsets, start) - 1]
            chunks.append(Chunk(text[start:end], page, heading, tokens, len(chunks)))
    return chunks


def _block_pages(run: list[Block]) -> tuple[list[int], list[int | None]]:
    """Where each block starts in the section's text (ascending), and its page."""
    offsets = []
    offset = 0
    for block in run:
        offsets.append(offset)
        offset += len(block.text) + len(_BLOCK_SEPARATOR)
    return offsets, [block.page for block in run]


@dataclass(frozen=True)
class _Word:
    start: int  # character offsets in the section's text
    end: int
    tokens: int
    break_after: int  # 2: a paragraph ends after it, 1: a sentence does, 0: neither


def _words(text: str, spans: list[tuple[int, int]], budget: int) -> list[_Word]:
    """Whitespace words with their piece counts; a word over `budget` pieces is split."""
    found = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    starts = [s for s, _ in found]
    counts = [0] * len(found)
    piece_starts: list[list[int]] = [[] for _ in found]
    for a, _ in spans:
        i = bisect.bisect_right(starts, a) - 1
        if i >= 0 and a < found[i][1]:
            counts[i] += 1
            piece_starts[i].append(a)
    words = []
    for i, (start, end) in enumerate(found):
        gap = text[end : found[i + 1][0]] if i + 1 < len(found) else "\n\n"
        brk = 2 if gap.count("\n") >= 2 else 1 if _SENTENCE_END.search(text[start:end]) else 0
        if counts[i] <= budget:
            words.append(_Word(start, end, counts[i], brk))
            continue
        cuts = piece_starts[i][budget::budget]  # split between pieces, `budget` pieces a part
        bounds = [start, *cuts, end]
        for j in range(len(bounds) - 1):
            last = j == len(bounds) - 2
            tokens = counts[i] - budget * j if last else budget
            words.append(_Word(bounds[j], bounds[j + 1], tokens, brk if last else 0))
    return words


def _cut(text: str, spans: list[tuple[int, int]], budget: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, end, pieces) of each chunk of one section's text."""
    words = _words(text, spans, budget)
    out = []
    s = 0
    while s < len(words):
        total = 0
        e = s
        while e < len(words) and total + words[e].tokens <= budget:
            total += words[e].tokens
            e += 1
        if e < len(words):  # full: prefer to end at a paragraph, else a sentence, late in the chunk
            e = _best_end(words, s, e, budget)
        out.append((words[s].start, words[e - 1].end, sum(w.tokens for w in words[s:e])))
        if e >= len(words):
            break
        s = _overlap_start(words, s, e, overlap)
    return out


def _overlap_start(words: list[_Word], s: int, e: int, overlap: int) -> int:
    """Where the chunk after words[s:e] starts: its last words, up to `overlap` pieces,
    from a sentence start when one lies among them; always after s (progress)."""
    back = e
    carried = 0
    while back - 1 > s and carried + words[back - 1].tokens <= overlap:
        back -= 1
        carried += words[back].tokens
    for i in range(back, e):  # the earliest sentence start that still repeats a word
        if words[i - 1].break_after:
            return i
    return back


def _best_end(words: list[_Word], s: int, e: int, budget: int) -> int:
    """The end (exclusive) among words[s+1:e+1] with the strongest break in the window."""
    floor = (1 - _CUT_WINDOW) * budget
    best, best_break = e, 0
    total = 0
    for i in range(s, e):
        total += words[i].tokens
        if total >= floor and words[i].break_after > 0 and words[i].break_after >= best_break:
            best, best_break = i + 1, words[i].break_after
    return best
