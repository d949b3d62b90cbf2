"""`GET /openapi.json`: an OpenAPI 3.1 description of every route, from the app's own
route table and the msgspec structs the routes decode their bodies with.

Request bodies come from those structs (`msgspec.json.schema_components`), so the
document cannot drift from what the server accepts; bounds checked in `limits.py`
(lengths, ranges) are described in words, not in the schemas. The error shapes are
exact; success bodies are described in words (the routes build them as dicts).
A route that this module does not know (an `extra_routes` entry) is still listed,
with a generic description.

Imported on the first request for `/openapi.json`, not at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from starlette.routing import Mount, Route, WebSocketRoute

from ... import __version__
from ..guards.security import needs_key
from ..wire.limits import MAX_BODY_BYTES, MAX_ID_CHARS, MAX_PAGE, MAX_QUERY_CHARS
from ..wire.schemas import ChatRequest, OAIChatRequest, WSChat
from .conversations import RenameRequest
from .documents import MAX_K, SearchRequest
from .embeddings import EmbeddingRequest, OAIEmbeddingRequest
from .tokenize import DetokenizeRequest, TokenizeRequest

REF = "#/components/schemas/{name}"


class ApiErrorDetail(msgspec.Struct):
    code: str
    message: str


class ApiError(msgspec.Struct):
    """An error of the project's API: `{"success": false, "error": {"code", "message"}}`."""

    success: Literal[False]
    error: ApiErrorDetail


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(msgspec.Struct):
    """An error in OpenAI's shape (every `/v1` route)."""

    error: OpenAIErrorDetail


@dataclass(frozen=True)
class _Op:
    summary: str
    ok: str  # what a 200 holds
    body: type | None = None
    openai: bool = False  # OpenAI's error shape
    generates: bool = False  # may answer 503 (loading, busy) or, on /v1, 429
    stream: bool = False  # `"stream": true` answers text/event-stream
    query: tuple[tuple[str, dict[str, Any], str], ...] = ()  # (name, schema, description)
    errors: dict[int, str] = field(default_factory=dict)
    content_type: str = "application/json"


_NO_DOCUMENT = "no such document, or another owner's (document_not_found)"
# The chat doors' `documents` field (checked by server/chat/grounding.py).
_DOCUMENTS: dict[str, Any] = {
    "description": "Ground the answer in your documents: true (your `default` collection), "
                   "{\"collection\": NAME}, or a list of document ids (another key's id: 404 "
                   "document_not_found). The answer then carries `citations` and `documents_mode`.",
    "anyOf": [{"type": "boolean"}, {"type": "null"},
              {"type": "object", "properties": {"collection": {"type": "string", "minLength": 1, "maxLength": 64}},
               "required": ["collection"], "additionalProperties": False},
              {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 100}],
}
_LIMIT = ("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "page size (default 20)")
_OWNER = ("owner", {"type": "string"}, "an admin key's read of another owner's conversations (a key's name, or * "
          "for every owner); other keys may name only themselves (403)")
_OPS: dict[tuple[str, str], _Op] = {
    ("get", "/"): _Op("The chat page", "the HTML page", content_type="text/html"),
    ("get", "/health"): _Op("Health (alias of /api/health)", "`{status: ok, model, uptime, ...}`",
                            errors={503: "the model is loading or failed to load"}),
    ("get", "/api/health"): _Op("Health", "`{status: ok, model, uptime, startup_ms, generating, queued, slots}`",
                                errors={503: "the model is loading or failed to load"}),
    ("get", "/api/stats"): _Op("Serving statistics", "counters, latency percentiles, tokens, memory, engine"),
    ("post", "/api/chat"): _Op("One chat turn, stored in a conversation",
                               "`{success: true, data: {message, conversation_id, usage, timings, ...}}`; with "
                               "`stream: true`, server-sent events start, token..., done (or error). With "
                               "`documents`, the answer (data, done) also holds `citations: [{n, document_id, "
                               "name, page, text, score}]` and `documents_mode: search | whole`",
                               body=ChatRequest, generates=True, stream=True,
                               errors={404: "no such conversation, or `documents` names a document that is not "
                                            "yours (document_not_found)"}),
    ("post", "/v1/chat/completions"): _Op("Chat completion (OpenAI-compatible, stateless)",
                                          "a `chat.completion`; with `stream: true`, `chat.completion.chunk` "
                                          "events ending in `data: [DONE]`. With our `documents` extension, "
                                          "`citations` and `documents_mode` beside `choices` (the last chunk "
                                          "when streamed)",
                                          body=OAIChatRequest, openai=True, generates=True, stream=True,
                                          errors={404: "`documents` names a document that is not yours "
                                                       "(document_not_found)"}),
    ("get", "/v1/models"): _Op("The served model (OpenAI-compatible)", "`{object: list, data: [model]}`",
                               openai=True),
    ("get", "/api/conversations"): _Op(
        "List conversations, newest first", "`{success: true, data: {conversations, total, limit, offset}}`",
        query=(_LIMIT, ("offset", {"type": "integer", "minimum": 0}, "how many to skip"), _OWNER),
        errors={403: "`owner` names another key without the admin role"}),
    ("get", "/api/conversations/{cid}"): _Op("A conversation and its messages",
                                             "`{success: true, data: {conversation, messages}}`",
                                             query=(_OWNER,),
                                             errors={404: "no such conversation (or another owner's)",
                                                     403: "`owner` names another key without the admin role"}),
    ("patch", "/api/conversations/{cid}"): _Op("Rename a conversation", "`{success: true, data: {conversation}}`",
                                               body=RenameRequest, errors={404: "no such conversation"}),
    ("delete", "/api/conversations/{cid}"): _Op("Delete a conversation", "`{success: true, data: {deleted, id}}`",
                                                errors={404: "no such conversation"}),
    ("get", "/api/conversations/{cid}/export"): _Op(
        "Export a conversation as a file", "the conversation as JSON or Markdown (an attachment)",
        query=(("format", {"enum": ["json", "markdown"]}, "json (default) or markdown"), _OWNER),
        errors={404: "no such conversation (or another owner's)", 403: "`owner` names another key without the admin role"}),
    ("get", "/api/search"): _Op(
        "Search messages", "`{success: true, data: {query, mode, results}}`",
        query=(("q", {"type": "string", "maxLength": MAX_QUERY_CHARS}, "the text to find"),
               ("mode", {"enum": ["text", "semantic"]}, "text (full-text, default) or semantic (embeddings)"),
               _LIMIT, _OWNER),
        errors={404: "semantic search without an embeddings model", 503: "the embeddings model is not available",
                403: "`owner` names another key without the admin role"}),
    ("post", "/api/documents"): _Op(
        "Upload a document to index (multipart/form-data: `file`, optional `collection`, default `default`)",
        "202 `{success: true, data: {id, name, collection, status: indexing, events_url}}`; follow events_url",
        errors={413: "over --max-document-mb, or a zip bomb",
                415: "not multipart, a binary file or an unsupported format",
                400: "empty, corrupt or encrypted, or no `file` field",
                404: "embeddings (and so documents) are not enabled", 503: "the embeddings model is not available"}),
    ("get", "/api/documents"): _Op(
        "List your documents, newest first", "`{success: true, data: {documents: [{id, name, collection, kind, "
        "bytes, pages, status, error_code, error, chunks, created_at, events_url}]}}`",
        query=(("collection", {"type": "string", "maxLength": 64}, "only this collection"),)),
    ("get", "/api/documents/{doc_id}"): _Op("One of your documents (with `progress` while indexing)",
                                            "`{success: true, data: {document}}`",
                                            errors={404: _NO_DOCUMENT}),
    ("delete", "/api/documents/{doc_id}"): _Op("Delete a document with its chunks and vectors",
                                               "`{success: true, data: {deleted, id, chunks}}`",
                                               errors={404: _NO_DOCUMENT}),
    ("get", "/api/documents/{doc_id}/events"): _Op(
        "A document's indexing as server-sent events",
        "`{type: progress, done, total}` at least every second while indexing, then `{type: ready, chunks}` "
        "or `{type: error, code, message}`; a finished document's final event at once",
        content_type="text/event-stream", errors={404: _NO_DOCUMENT}),
    ("post", "/api/documents/search"): _Op(
        f"Search your documents: full text and vectors, fused 0.3 : 0.7 (k 1-{MAX_K}, default 5)",
        "`{success: true, data: {results: [{score, document_id, name, page, heading, text}]}}`", body=SearchRequest,
        errors={404: "embeddings (and so documents) are not enabled", 503: "the embeddings model is not available"}),
    ("get", "/api/limits"): _Op("The limits the server checks", "`{success: true, data: {message_chars, ...}}`"),
    ("post", "/api/tokenize"): _Op("Token ids of a text, with the served model's tokenizer",
                                   "`{tokens: [{id, text}] or [id], count}`", body=TokenizeRequest,
                                   errors={404: "no tokenizer on this server", 422: "unsupported vocabulary",
                                           413: "the answer would pass 4x the request (output_too_large)"}),
    ("post", "/api/detokenize"): _Op("The text of token ids", "`{text}`", body=DetokenizeRequest,
                                     errors={404: "no tokenizer on this server", 422: "unsupported vocabulary"}),
    ("post", "/v1/embeddings"): _Op("Embeddings (OpenAI-compatible)", "`{object: list, data: [{embedding}], usage}`",
                                    body=OAIEmbeddingRequest, openai=True,
                                    errors={404: "embeddings are not enabled", 503: "the model is not available"}),
    ("post", "/api/embeddings"): _Op("Embeddings", "`{success: true, data: {embeddings, model, dimensions}}`",
                                     body=EmbeddingRequest,
                                     errors={404: "embeddings are not enabled", 503: "the model is not available"}),
    ("get", "/metrics"): _Op("Prometheus metrics", "the text exposition format, version 0.0.4",
                             content_type="text/plain"),
    ("get", "/openapi.json"): _Op("This document", "an OpenAPI 3.1 document"),
    ("get", "/static/{path}"): _Op("The page's scripts and styles", "a static file", content_type="*/*",
                                   errors={404: "no such file"}),
}
_WS_DESCRIPTION = (
    "Chat over a WebSocket with JSON text frames. Client frames: `chat` (the `WSChat` schema), "
    '`{"type": "stop"}`, `{"type": "ping"}`. Server frames: `start`, `token`, `done`, `error`, `pong`. '
    "A browser may offer its API key as the subprotocol `bearer.KEY`.")
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")


def _routes(routes: Iterable[Any]) -> list[tuple[str, str, Any]]:
    """(OpenAPI path, method, route) for each route; HEAD (implied by GET) is left out."""
    out: list[tuple[str, str, Any]] = []
    for r in routes:
        if isinstance(r, WebSocketRoute):
            out.append((r.path, "websocket", r))
        elif isinstance(r, Mount):
            out.append((r.path + "/{path}", "get", r))
        elif isinstance(r, Route):
            path = _PARAM_RE.sub(r"{\1}", r.path)
            for m in sorted((r.methods or {"GET"}) - {"HEAD"}):
                out.append((path, m.lower(), r))
    return out


def _responses(op: _Op, path: str, keys: bool) -> dict[str, Any]:
    err = {"application/json": {"schema": {"$ref": REF.format(name="OpenAIError" if op.openai else "ApiError")}}}
    ok_content: dict[str, Any] = {op.content_type: {}}
    if op.stream:
        ok_content["text/event-stream"] = {}
    out: dict[str, Any] = {"200": {"description": op.ok, "content": ok_content}}
    if op.body is not None:
        out["400"] = {"description": "the body is not valid JSON, does not fit the schema, or breaks a limit",
                      "content": err}
        out["413"] = {"description": f"the body is larger than {MAX_BODY_BYTES:,} bytes", "content": err}
    elif op.query or "{" in path:
        out["400"] = {"description": "a bad parameter", "content": err}
    if keys and needs_key(path):
        out["401"] = {"description": "no API key, or not a valid one", "content": err}
    if op.generates:
        if op.openai:
            out["429"] = {"description": "the queue is full (see Retry-After)", "content": err}
        out["503"] = {"description": "the model is loading, or the queue is full (see Retry-After)", "content": err}
    for status, text in op.errors.items():
        out.setdefault(str(status), {"description": text, "content": err})
    return dict(sorted(out.items()))


def _operation(path: str, method: str, keys: bool, body_refs: dict[type, dict[str, Any]]) -> dict[str, Any]:
    op = _OPS.get((method, path)) or _Op(f"{method.upper()} {path}", "see the route's documentation")
    out: dict[str, Any] = {"summary": op.summary, "operationId": f"{method}_{path}"}
    params: list[dict[str, Any]] = []
    for name in _PARAM_RE.findall(path):
        schema: dict[str, Any] = {"type": "string"}
        if name in ("cid", "doc_id"):
            schema["maxLength"] = MAX_ID_CHARS
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    for name, schema, text in op.query:
        params.append({"name": name, "in": "query", "required": False, "schema": schema, "description": text})
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_refs[op.body]}}}
    out["responses"] = _responses(op, path, keys)
    if keys and needs_key(path):
        out["security"] = [{"bearer": []}, {"apiKey": []}]
    return out


def document(routes: Iterable[Any], *, keys: bool = False) -> dict[str, Any]:
    """The OpenAPI document for these Starlette routes. `keys`: API keys are configured
    (the routes that need one then say so)."""
    found = _routes(routes)
    body_types = sorted({op.body for op in _OPS.values() if op.body is not None}, key=lambda t: t.__name__)
    types = [*body_types, WSChat, ApiError, OpenAIError]
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    body_refs = dict(zip(types, schemas))
    for name in ("ChatRequest", "WSChat", "OAIChatRequest"):  # msgspec says only "any" for the field
        components[name]["properties"]["documents"] = _DOCUMENTS
    paths: dict[str, dict[str, Any]] = {}
    for path, method, _route in found:
        item = paths.setdefault(path, {})
        if method == "websocket":
            item["get"] = {
                "summary": "Chat over a WebSocket", "operationId": "websocket_chat", "description": _WS_DESCRIPTION,
                "responses": {"101": {"description": "switching to the WebSocket protocol"},
                              "403": {"description": "refused (foreign Origin, or no valid API key)"}},
                "x-websocket-frames": {"$ref": REF.format(name="WSChat")},
            }
            if keys:
                item["get"]["security"] = [{"bearer": []}, {"apiKey": []}]
        else:
            item[method] = _operation(path, method, keys, body_refs)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Nanochat-Lite", "version": __version__,
                 "description": "A one-process chat server. Every answer may also be 421 (a Host this server "
                                "does not answer for) or 403 (a write from a page of another origin)."},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(components.items()))},
    }
    if keys:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
        }
    return doc
