"""Embeddings: `POST /v1/embeddings` (OpenAI-compatible) and `POST /api/embeddings`
(the project's `{success, data}` style), served by the in-process MiniLM engine.

The engine loads on first use (then stays); requests are embedded one at a time in a
worker thread, so numpy's threads never fight each other or the event loop.

`/v1/embeddings` also takes token ids (`[12, 34]`, or a list of such lists), as
OpenAI's API does: ids of the embedding model's own WordPiece vocabulary
(`vocab.txt`), checked against its size. They are mapped back to their pieces and
joined (`##` pieces glue to the one before), and that text is embedded: BERT's
tokenizer splits it back into the same pieces. [CLS]/[SEP]/[PAD] in the input are
dropped (the embedder adds [CLS] and [SEP] itself).
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any, Literal, Union

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ..chat.runtime import Runtime
from ..wire.errors import RequestError, api_error, openai_error
from ..wire.http import json_response, read_body
from ..wire.limits import MAX_PROMPT_TOKENS
from ..wire.schemas import decode

MAX_INPUTS = 256
# Its own bound, not the chat model's context: MiniLM reads only its first 256 WordPiece
# pieces (~1,000-1,500 characters of English) and ignores the rest, so more text only
# costs tokenizing. 8,000 characters leaves room for dense text (code, numbers).
MAX_INPUT_CHARS = 8_000
MAX_INPUT_TOKENS = MAX_PROMPT_TOKENS  # token ids in one input (the model reads its first 256 pieces)


class OAIEmbeddingRequest(msgspec.Struct, kw_only=True):
    # str | list[str] | list[int] | list[list[int]]: msgspec cannot tell list types
    # apart in a union; `_inputs` checks the shape.
    input: Any
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    input: Union[str, list[str]]


def _texts(value: str | list[str]) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise RequestError("`input` must hold at least one string", param="input")
    if len(texts) > MAX_INPUTS:
        raise RequestError(f"`input` holds {len(texts)} strings; the limit is {MAX_INPUTS}", param="input")
    for i, t in enumerate(texts):
        if len(t) > MAX_INPUT_CHARS:
            raise RequestError(f"input {i} has {len(t):,} characters; the limit is {MAX_INPUT_CHARS:,}",
                               param=f"input[{i}]")
    return texts


_SKIP_PIECES = frozenset({"[CLS]", "[SEP]", "[PAD]"})
_vocabs: dict[str, list[str]] = {}  # model folder -> its pieces, by id


def _is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _inputs(value: Any) -> list[str] | list[list[int]]:
    """`input` as texts or as lists of token ids; raises RequestError for other shapes."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(_is_id(x) for x in value):
        return [value]
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return value  # an empty list is refused by _texts
    if isinstance(value, list) and all(isinstance(x, list) and x and all(_is_id(t) for t in x) for x in value):
        return value
    raise RequestError("`input` must be a string, a list of strings, a list of token ids or a list of lists "
                       "of token ids (none of them empty)", param="input")


def _vocabulary(embedder: Any) -> list[str]:
    """The embedding model's vocab.txt, or a 422 naming the model (never its folder):
    without it, token ids cannot be turned back into text."""
    model_dir = getattr(embedder, "model_dir", None)
    name = getattr(embedder, "model_name", "the embedding model")
    key = str(model_dir)
    vocab = _vocabs.get(key)
    if vocab is None:
        try:
            if model_dir is None:
                raise FileNotFoundError
            vocab = (Path(model_dir) / "vocab.txt").read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            raise RequestError(f"token-id input is not available with the embedding model {name!r}: it has no "
                               "readable vocabulary (vocab.txt); send the input as text",
                               code="token_ids_unsupported", status=422, param="input") from None
        _vocabs[key] = vocab
    return vocab


def ids_to_text(ids: list[list[int]], vocab: list[str]) -> list[str]:
    """Token ids of the embedding model's vocabulary -> texts it tokenizes back into them.

    With vocab [..., "em"=1, "##bed"=2, "it"=3]: [[1, 2, 3]] -> ["embed it"]
    """
    out = []
    for n, seq in enumerate(ids):
        if len(seq) > MAX_INPUT_TOKENS:
            raise RequestError(f"input {n} has {len(seq):,} token ids; the limit is {MAX_INPUT_TOKENS:,}",
                               param=f"input[{n}]")
        words: list[str] = []
        for t in seq:
            if not 0 <= t < len(vocab):
                raise RequestError(f"input {n}: token id {t} is outside the embedding model's vocabulary "
                                   f"(0..{len(vocab) - 1})", param=f"input[{n}]")
            piece = vocab[t]
            if piece in _SKIP_PIECES:
                continue
            if piece.startswith("##") and words:
                words[-1] += piece[2:]
            else:
                words.append(piece)
        out.append(" ".join(words))
    return out


async def _embed(rt: Runtime, texts: list[str]) -> tuple[Any, Any]:
    embedder = await rt.embedder()
    async with rt.embed_lock:
        return embedder, await asyncio.to_thread(embedder.embed, texts)


async def openai_embeddings(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        body = await read_body(request)
        req = decode(body, OAIEmbeddingRequest)
        inputs = _inputs(req.input)
        if inputs and not isinstance(inputs[0], str):
            if len(inputs) > MAX_INPUTS:
                raise RequestError(f"`input` holds {len(inputs)} token lists; the limit is {MAX_INPUTS}",
                                   param="input")
            embedder = await rt.embedder()
            vocab = await asyncio.to_thread(_vocabulary, embedder)
            texts = ids_to_text(inputs, vocab)
        else:
            texts = _texts(inputs)  # type: ignore[arg-type]
        embedder, result = await _embed(rt, texts)
    except RequestError as e:
        return openai_error(e)
    data = []
    for i, vec in enumerate(result.vectors):
        emb: Any = (base64.b64encode(vec.astype("<f4").tobytes()).decode() if req.encoding_format == "base64"
                    else vec.tolist())
        data.append({"object": "embedding", "index": i, "embedding": emb, "truncated": result.truncated[i]})
    tokens = sum(result.token_counts)
    return json_response({"object": "list", "data": data, "model": embedder.model_name,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def api_embeddings(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        req = decode(await read_body(request), EmbeddingRequest)
        embedder, result = await _embed(rt, _texts(req.input))
    except RequestError as e:
        return api_error(e)
    tokens = sum(result.token_counts)
    return json_response({"success": True, "data": {
        "embeddings": result.vectors.tolist(), "model": embedder.model_name, "dimensions": embedder.dim,
        "truncated": result.truncated, "usage": {"promptTokens": tokens, "totalTokens": tokens}}})
