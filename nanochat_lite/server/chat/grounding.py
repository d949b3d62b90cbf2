"""Answers grounded in the owner's documents: which documents a chat asked for, which of
their chunks go into the prompt (numbered, within the context budget), and the
citations the answer carries.

    selection(True) -> Selection(collection="default")          # None: not asked for
    found = await find(docs, rt, "alice", selection, "what is on page 2?")
    messages, grounded = fit(prompts, messages, params, found)   # in a worker thread
    grounded.metadata() -> {"citations": [{"n": 1, ...}], "documents_mode": "search"}

The user's message is the query of a hybrid search (documents/library.py) over the
chosen documents; when their whole text fits comfortably (at most half of the context
the history leaves, WHOLE_SHARE) it goes in whole instead, in order. The chunks go into
one system message, each as `[n] (name, p. 3) text`; the prompt builder's own token
count decides what fits: room is kept for the history and for the answer (max_tokens,
at most half the context), and the lowest-ranked chunks that do not fit are left out.
The block is message content, so the template renders it as text: a document holding
`<|im_start|>` never becomes a control token.

Another owner's documents are never read: every store call names the owner, and an id
of theirs answers 404 `document_not_found`, as a missing one does.

Not here: parsing, indexing or ranking (documents/), storing the citations (the turn
passes them to the store with the assistant's row), wire formats (frames.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ...documents.service import DocumentService, DocumentsUnavailable
from ...documents.store import DEFAULT_COLLECTION, MAX_COLLECTION_CHARS, ChunkHit, Document, collection_name
from ...generation import SamplingParams
from ..wire import limits
from ..wire.errors import RETRY_STORAGE_S, RequestError

PARAM = "documents"
MAX_DOCUMENT_IDS = 100
SEARCH_K = 8  # chunks retrieved for a prompt; those that fit the budget go in
WHOLE_MAX_CHUNKS = 64  # more chunks than this are never counted for giving whole
WHOLE_SHARE = 0.5  # whole text when it takes at most this share of what the history leaves
ANSWER_SHARE = 0.5  # the answer's room: max_tokens, but at most this share of the context
NO_TOKENIZER_SOURCES = 4  # an engine whose tokens we cannot count (remote) gets this many
INSTRUCTION = ("Answer from the numbered sources below when they hold the answer, and cite each source "
               "you use by its number in brackets, like [1]. If they do not hold the answer, say so.")

Mode = Literal["search", "whole"]


@dataclass(frozen=True)
class Selection:
    """The documents a chat asked for: a collection of the owner's, or ids."""

    collection: str | None = None
    ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Source:
    document_id: str
    name: str
    page: int | None
    text: str
    score: float | None  # the fused search score; None for a document given whole (not ranked)


@dataclass(frozen=True)
class Found:
    """What retrieval gave: the ranked chunks, and the chosen documents' every chunk in
    order when there are few enough to give whole (else None)."""

    ranked: list[Source]
    whole: list[Source] | None


@dataclass(frozen=True)
class Grounded:
    mode: Mode
    sources: list[Source]  # numbered from 1, in the prompt's order

    def citations(self) -> list[dict[str, Any]]:
        return [{"n": n, "document_id": s.document_id, "name": s.name, "page": s.page, "text": s.text,
                 "score": s.score} for n, s in enumerate(self.sources, start=1)]

    def metadata(self) -> dict[str, Any]:
        """The fields the answer's final frame and JSON carry."""
        return {"citations": self.citations(), "documents_mode": self.mode}


# -- the request's field ----------------------------------------------------------------
def selection(raw: object) -> Selection | None:
    """The `documents` field: true (the default collection), {"collection": NAME} or a
    list of document ids; absent, null or false: no documents. Anything else is a 400
    naming the field."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return Selection(collection=DEFAULT_COLLECTION)
    if isinstance(raw, dict):
        if set(raw) != {"collection"}:
            raise _bad(f"an object must be {{\"collection\": NAME}} and nothing else, got keys {sorted(raw)[:5]}")
        name = collection_name(raw["collection"])
        if name is None:
            raise _bad(f"the collection must be 1 to {MAX_COLLECTION_CHARS} printable characters, "
                       f"got {str(raw['collection'])[:80]!r}")
        return Selection(collection=name)
    if isinstance(raw, list):
        if not raw:
            raise _bad("the list of document ids is empty; name at least one, or send true for the default "
                       "collection")
        if len(raw) > MAX_DOCUMENT_IDS:
            raise _bad(f"{len(raw)} document ids; at most {MAX_DOCUMENT_IDS} at once (or name a collection)")
        if not all(isinstance(i, str) for i in raw):
            raise _bad("a list must hold document ids (strings)")
        return Selection(ids=tuple(dict.fromkeys(raw)))
    raise _bad(f"expected true, {{\"collection\": NAME}} or a list of document ids, got {type(raw).__name__}")


def _bad(message: str) -> RequestError:
    return RequestError(f"`documents`: {message}", code="invalid_request", param=PARAM)


def document_not_found(doc_id: str) -> RequestError:
    return RequestError(f"no document with id {doc_id[:80]!r}", code="document_not_found", status=404, param=PARAM)


# -- retrieval (off the loop) -----------------------------------------------------------
async def find(docs: DocumentService | None, embedder: Callable[[], Any], embed_lock: Any, owner: str,
               chosen: Selection, query: str) -> Found:
    """The chosen documents' chunks for `query`. `embedder` is the runtime's (awaitable
    factory), `embed_lock` its one-batch-at-a-time lock. Raises RequestError: 404 when
    documents are off on this server or an id is not the owner's."""
    if docs is None:
        raise RequestError("documents are not enabled on this server", code="not_available", status=404,
                           param=PARAM)
    try:
        docs = await docs.opened()  # off the loop, if serve has not opened them yet
    except DocumentsUnavailable as e:
        raise RequestError(f"{e}; retry in a moment", code="storage_unavailable", status=503,
                           retry_after=RETRY_STORAGE_S) from None
    store = docs.library.store
    chosen_docs, whole = await asyncio.to_thread(_read_chosen, docs, owner, chosen)
    if not chosen_docs:
        return Found([], [])
    model = await embedder()
    async with embed_lock:
        vector = (await asyncio.to_thread(model.embed, [query[:limits.MAX_QUERY_CHARS]])).vectors[0]
    only: set[int] | None = None
    if chosen.collection is None:  # ids: their chunks only
        only = {c.id for c in whole} if whole is not None else set(
            await asyncio.to_thread(lambda: [c.id for c in store.document_chunks([d.id for d in chosen_docs],
                                                                                owner=owner)]))
    results = await asyncio.to_thread(docs.library.search, owner, query, vector, SEARCH_K,
                                      collection=chosen.collection, only=only)
    ranked = [Source(r.document_id, r.name, r.page, r.text, r.score) for r in results]
    return Found(ranked, None if whole is None else [Source(c.document_id, c.name, c.page, c.text, None)
                                                     for c in whole])


def _read_chosen(docs: DocumentService, owner: str, chosen: Selection) -> tuple[list[Document], list[ChunkHit] | None]:
    """The owner's chosen documents that are ready, and their chunks when few enough to
    give whole. Blocks."""
    store = docs.library.store
    if chosen.collection is not None:
        found = store.of_owner(owner=owner, collection=chosen.collection)
    else:
        found = []
        for doc_id in chosen.ids:
            well_formed = 0 < len(doc_id) <= limits.MAX_ID_CHARS and doc_id.isprintable()
            doc = store.get(doc_id, owner=owner) if well_formed else None
            if doc is None:  # missing, or another owner's: the same answer
                raise document_not_found(doc_id)
            found.append(doc)
    ready = [d for d in found if d.status == "ready" and d.chunks > 0]
    if not ready or sum(d.chunks for d in ready) > WHOLE_MAX_CHUNKS:
        return ready, None
    if chosen.collection is not None:  # oldest first: a collection reads in the order it was built
        ready.sort(key=lambda d: (d.created_at, d.id))
    return ready, store.document_chunks([d.id for d in ready], owner=owner)


# -- the prompt (in the worker thread that builds it) -------------------------------------
def label(n: int, source: Source) -> str:
    """label(3, Source(name="atlas.pdf", page=2, ...)) -> "[3] (atlas.pdf, p. 2)"."""
    where = source.name if source.page is None else f"{source.name}, p. {source.page}"
    return f"[{n}] ({where})"


def block(sources: Sequence[Source]) -> str:
    """The system-side text that holds the sources, numbered from 1."""
    return INSTRUCTION + "\n\nSources:\n\n" + "\n\n".join(entry(n, s) for n, s in enumerate(sources, start=1))


def entry(n: int, source: Source) -> str:
    return f"{label(n, source)} {source.text.strip()}"


def with_block(messages: Sequence[dict[str, str]], sources: Sequence[Source]) -> list[dict[str, str]]:
    """The messages with the sources in the system message (after its own text)."""
    out = [dict(m) for m in messages]
    if not sources:
        return out
    text = block(sources)
    if out and out[0]["role"] == "system":
        out[0]["content"] = out[0]["content"] + "\n\n" + text
    else:
        out.insert(0, {"role": "system", "content": text})
    return out


def fit(prompts: Any, messages: Sequence[dict[str, str]], params: SamplingParams,
        found: Found) -> tuple[list[dict[str, str]], Grounded]:
    """The messages with as many sources as the context holds, and what went in.

    `prompts` counts tokens (`prompt_tokens(messages)`, `tokenize(text)`, `n_ctx`: the
    prompt builder); an engine that cannot count them here (a remote one) gets the
    NO_TOKENIZER_SOURCES best chunks. Raises what the builder raises (a history that
    does not fit, a refused template): the caller's prompt build reports it."""
    count: Callable[[Sequence[dict[str, str]]], list[int]] | None = getattr(prompts, "prompt_tokens", None)
    tokenize: Callable[[str], list[int]] | None = getattr(prompts, "tokenize", None)
    n_ctx = int(getattr(prompts, "n_ctx", 0) or 0)
    if count is None or tokenize is None or n_ctx <= 0:
        chosen = found.ranked[:NO_TOKENIZER_SOURCES]
        return with_block(messages, chosen), Grounded("search", chosen)
    base = len(count(messages))
    room = min(params.max_tokens, int(n_ctx * ANSWER_SHARE))
    left = n_ctx - base  # what the history leaves
    if found.whole:
        whole = len(count(with_block(messages, found.whole))) - base
        if whole <= left * WHOLE_SHARE and base + whole + room <= n_ctx:
            return with_block(messages, found.whole), Grounded("whole", list(found.whole))
    # Each source's own tokens pick the candidates (greedy, best first: a lower one that
    # fits may follow one that does not); the whole prompt's count then has the last word.
    overhead = len(count(with_block(messages, found.ranked[:1]))) - base if found.ranked else 0
    if found.ranked:
        overhead -= len(tokenize(entry(1, found.ranked[0])))
    budget = left - room - max(overhead, 0)
    chosen, used = [], 0
    for s in found.ranked:
        cost = len(tokenize(entry(len(chosen) + 1, s))) + 2  # + the blank line
        if used + cost <= budget:
            chosen.append(s)
            used += cost
    while chosen and len(count(with_block(messages, chosen))) + room > n_ctx:
        chosen.pop()  # the lowest-ranked goes first
    return with_block(messages, chosen), Grounded("search", chosen)


class Fitter:
    """A prompt builder's `prepare` with the found sources fitted in (`fit`); after it
    ran, `grounded` says what went in. For `turns.build`, which reports its errors."""

    def __init__(self, prompts: Any, found: Found) -> None:
        self.prompts = prompts
        self.found = found
        self.grounded: Grounded | None = None

    def prepare(self, messages: Sequence[dict[str, str]], params: SamplingParams) -> Any:
        fitted, self.grounded = fit(self.prompts, messages, params, self.found)
        return self.prompts.prepare(fitted, params)

    def metadata(self) -> dict[str, Any]:
        return self.grounded.metadata() if self.grounded is not None else {}


def last_user_text(messages: Sequence[dict[str, str]]) -> str:
    """The query of a stateless conversation (`/v1`): its last user message's text."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
