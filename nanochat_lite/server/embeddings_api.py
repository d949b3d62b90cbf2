"""Embeddings: `POST /v1/embeddings` (OpenAI-compatible) and `POST /api/embeddings`
(the project's `{success, data}` style), served by the in-process MiniLM engine.

The engine loads on first use (then stays); requests are embedded one at a time in a
worker thread, so numpy's threads never fight each other or the event loop.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Literal, Union

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from .http import api_error, json_response, openai_error, read_body
from .limits import MAX_MESSAGE_CHARS, RequestError
from .runtime import Runtime
from .schemas import decode

MAX_INPUTS = 256
MAX_INPUT_CHARS = MAX_MESSAGE_CHARS


class OAIEmbeddingRequest(msgspec.Struct, kw_only=True):
    input: Union[str, list[str]]
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


async def _embed(rt: Runtime, texts: list[str]) -> tuple[Any, Any]:
    embedder = await rt.embedder()
    async with rt.embed_lock:
        return embedder, await asyncio.to_thread(embedder.embed, texts)


async def openai_embeddings(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        body = await read_body(request)
        try:
            req = decode(body, OAIEmbeddingRequest)
        except RequestError as e:
            if b"input" in body and e.code == "invalid_request" and "$.input" in e.message:
                e.message += " (token-id arrays are not supported: send strings)"
            raise
        embedder, result = await _embed(rt, _texts(req.input))
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
