"""`POST /api/tokenize` and `POST /api/detokenize`, with the project's own BPE
tokenizer (the same ids as llama.cpp's for the served model).

    POST /api/tokenize   {"text": "Hello world", "with_pieces": true}
      -> {"tokens": [{"id": 19556, "text": "Hello"}, {"id": 905, "text": " world"}], "count": 2}
    POST /api/detokenize {"tokens": [19556, 905]}  -> {"text": "Hello world"}

`special: true` lets special-token text (`<|im_start|>`) become control tokens; by
default it is tokenized as the plain text it is.

The answer is bounded by what was asked: at most OUTPUT_FACTOR times the request's bytes
(and never less than OUTPUT_FLOOR_BYTES). With pieces, a token of one byte costs ~25
bytes of JSON, so 1 MB of such text answered 11.5 MB: past the bound it is a 413
`output_too_large` that says how to ask (less text, or `with_pieces: false`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ..chat.runtime import Runtime
from ..wire.errors import RequestError, api_error
from ..wire.http import json_response, read_body
from ..wire.limits import MAX_BODY_BYTES
from ..wire.schemas import decode

_encoder = msgspec.json.Encoder()
MAX_DETOKENIZE_IDS = 100_000
OUTPUT_FACTOR = 4  # answer bytes per request byte, at most
OUTPUT_FLOOR_BYTES = 64 * 1024  # small requests may always see every piece


class TokenizeRequest(msgspec.Struct, kw_only=True):
    text: str
    with_pieces: bool = True
    special: bool = False


class DetokenizeRequest(msgspec.Struct, kw_only=True):
    tokens: list[int]


async def tokenize(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        raw = await read_body(request)
        req = decode(raw, TokenizeRequest)
        tok = await rt.tokenizer()

        def run() -> dict[str, Any]:
            ids = tok.encode(req.text, allowed_special="all" if req.special else ())
            if req.with_pieces:
                return {"tokens": [{"id": i, "text": tok.piece_text(i)} for i in ids], "count": len(ids)}
            return {"tokens": ids, "count": len(ids)}

        # Encoding ~1 MiB takes ~0.2 s: off the event loop.
        body = await asyncio.to_thread(run) if len(req.text) > 10_000 else run()
        out = _encoder.encode(body)
        bound = max(OUTPUT_FACTOR * len(raw), OUTPUT_FLOOR_BYTES)
        if len(out) > bound:
            hint = "send less text or `with_pieces: false`" if req.with_pieces else "send less text"
            raise RequestError(f"the answer would be {len(out):,} bytes for a {len(raw):,}-byte request "
                               f"({body['count']:,} tokens); the limit is {bound:,} ({OUTPUT_FACTOR}x the "
                               f"request, at least {OUTPUT_FLOOR_BYTES:,}): {hint}",
                               code="output_too_large", status=413, param="text")
    except RequestError as e:
        return api_error(e)
    return Response(out, media_type="application/json")


async def detokenize(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        req = decode(await read_body(request), DetokenizeRequest)
        if len(req.tokens) > MAX_DETOKENIZE_IDS:
            raise RequestError(f"{len(req.tokens):,} token ids; the limit is {MAX_DETOKENIZE_IDS:,}",
                               param="tokens")
        tok = await rt.tokenizer()
        try:
            text = tok.decode(req.tokens)
        except ValueError as e:
            raise RequestError(str(e), code="invalid_token", param="tokens") from None
        if len(text) > MAX_BODY_BYTES:
            raise RequestError("the decoded text is larger than 1 MiB", param="tokens")
    except RequestError as e:
        return api_error(e)
    return json_response({"text": text})
