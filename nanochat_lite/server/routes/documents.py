"""Document routes: upload (multipart), list, read, delete, indexing events (SSE), search.

    POST   /api/documents              multipart `file` (+ `collection`) -> 202 {id, name, collection,
                                       status: indexing, events_url}
    GET    /api/documents[?collection=]  the owner's documents, newest first
    GET    /api/documents/{id}           one document (with its progress while indexing)
    DELETE /api/documents/{id}           it, its chunks and vectors
    GET    /api/documents/{id}/events    SSE: progress frames, then ready or error
    POST   /api/documents/search       {query, k, collection?} -> ranked chunks (hybrid)

The upload is parsed here (in a worker thread) so a file nobody can read is refused at
once with the reason: 413 over --max-document-mb (or a zip bomb), 415 binary or an
unsupported format, 400 empty, corrupt or encrypted. Chunking and embedding happen in
the indexer's thread (documents/indexer.py), never on the event loop.

Every request sees its owner's documents only (the key's name, `local` without keys):
another owner's id is 404 `document_not_found`, exactly like an id that does not exist (the
code chat's `documents` field and the WebSocket's `watch_document` answer with too).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import msgspec
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from ...documents.blocks import Block, DocumentError
from ...documents.events import document_frames
from ...documents.parse import parse, sniff
from ...documents.service import DocumentService
from ...documents.store import DEFAULT_COLLECTION, MAX_COLLECTION_CHARS, Document, DocumentStore, collection_name
from ..chat.runtime import Runtime
from ..guards.security import identity
from ..wire import limits
from ..wire.errors import RequestError, api_error, error_frame
from ..wire.http import event_stream, json_response, read_body, sse
from ..wire.schemas import decode

MAX_NAME_CHARS = 255
DEFAULT_K = 5
MAX_K = 50
MULTIPART_SLACK = 64 << 10  # bytes of multipart framing and the other fields, over the file itself
PROGRESS_EVERY_S = 0.5  # a progress frame at least this often (the API promises one a second)
_STATUS = {"too_large": 413, "zip_bomb": 413, "binary": 415, "unsupported_format": 415}
T = TypeVar("T")


class SearchRequest(msgspec.Struct, kw_only=True):
    query: str
    k: int = DEFAULT_K
    collection: str | None = None


async def _service(request: Request) -> DocumentService:
    """The server's documents, opened (off the loop) if this is their first use: `serve`
    opens them after the first answers, off the way to the first token."""
    svc = request.app.state.runtime.documents
    if svc is None:
        raise RequestError("documents are not enabled on this server", code="not_available", status=404)
    assert isinstance(svc, DocumentService)
    return await svc.opened()


def _not_found(doc_id: str) -> RequestError:
    return RequestError(f"no document with id {doc_id!r}", code="document_not_found", status=404)


def _doc_id(request: Request) -> str:
    doc_id = str(request.path_params["doc_id"])
    limits.check_id(doc_id, "id")
    return doc_id


def _collection(raw: object, param: str = "collection") -> str:
    if not isinstance(raw, str):
        raise RequestError(f"`{param}` must be text", param=param)
    name = collection_name(raw)
    if name is None:
        raise RequestError(f"`{param}` must be 1 to {MAX_COLLECTION_CHARS} printable characters, got {raw[:80]!r}",
                           param=param)
    return name


def _file_name(upload: UploadFile) -> str:
    name = os.path.basename((upload.filename or "").replace("\\", "/")).strip() or "upload"
    name = "".join(c if c.isprintable() else "_" for c in name)
    return name[:MAX_NAME_CHARS]


def _public(doc: Document) -> dict[str, Any]:
    out = doc.to_dict()
    out["events_url"] = f"/api/documents/{doc.id}/events"
    return out


async def upload(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        svc = await _service(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > svc.max_bytes + MULTIPART_SLACK:
            raise RequestError(f"the upload has {int(declared):,} bytes; the limit is {svc.max_bytes:,} "
                               "(--max-document-mb)", code="too_large", status=413)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise RequestError("send the document as multipart/form-data with a `file` field",
                               code="unsupported_media_type", status=415)
        form = await request.form(max_files=1, max_fields=8)
        try:
            upload_file = form.get("file")
            if not isinstance(upload_file, UploadFile):
                raise RequestError("the form has no `file` field holding a file", param="file")
            collection = _collection(form.get("collection") or DEFAULT_COLLECTION)
            name = _file_name(upload_file)
            data = await upload_file.read(svc.max_bytes + 1)
        finally:
            await form.close()
        await rt.embedder()  # 404 without embeddings, 503 when the model cannot load: before any work
        kind, blocks = await asyncio.to_thread(_parse, data, name, svc.max_bytes)
        doc = await asyncio.to_thread(svc.library.store.add, identity(request).owner, collection, name, kind,
                                      len(data))
    except RequestError as e:
        return api_error(e)
    svc.indexer.submit(doc, blocks)
    return json_response({"success": True, "data": {
        "id": doc.id, "name": doc.name, "collection": doc.collection, "status": doc.status,
        "events_url": f"/api/documents/{doc.id}/events"}}, status=202)


def _parse(data: bytes, name: str, max_bytes: int) -> tuple[str, list[Block]]:
    try:
        return sniff(data, name), parse(data, name, max_bytes=max_bytes)
    except DocumentError as e:  # the message names the file: a client uploading several knows which
        message = str(e) if name in str(e) else f"{name!r}: {e}"
        raise RequestError(message, code=e.code, status=_STATUS.get(e.code, 400), param="file") from None


async def list_documents(request: Request) -> Response:
    try:
        svc = await _service(request)
        raw = request.query_params.get("collection")
        collection = None if raw is None else _collection(raw)
    except RequestError as e:
        return api_error(e)
    docs = await asyncio.to_thread(svc.library.store.of_owner, owner=identity(request).owner, collection=collection)
    return json_response({"success": True, "data": {"documents": [_public(d) for d in docs]}})


async def _owned(request: Request, act: Callable[[DocumentStore, str, str], T | None]) -> tuple[DocumentService, T, str]:
    """`act(store, id, owner)` on the path's document, off the loop: the service, its
    result and the request's owner. None (another owner's document, or a missing one)
    is 404, the same for both."""
    svc = await _service(request)
    doc_id = _doc_id(request)
    owner = identity(request).owner
    found = await asyncio.to_thread(act, svc.library.store, doc_id, owner)
    if found is None:
        raise _not_found(doc_id)
    return svc, found, owner


async def _owned_document(request: Request) -> tuple[DocumentService, Document, str]:
    return await _owned(request, lambda store, doc_id, owner: store.get(doc_id, owner=owner))


async def get_document(request: Request) -> Response:
    try:
        svc, doc, _ = await _owned_document(request)
    except RequestError as e:
        return api_error(e)
    out = _public(doc)
    progress = svc.indexer.progress(doc.id) if doc.status == "indexing" else None
    if progress is not None:
        out["progress"] = progress.snapshot()
    return json_response({"success": True, "data": {"document": out}})


async def delete_document(request: Request) -> Response:
    try:
        svc, ids, owner = await _owned(request, lambda store, doc_id, owner: store.delete(doc_id, owner=owner))
    except RequestError as e:
        return api_error(e)
    await asyncio.to_thread(svc.library.removed, owner, ids)
    return json_response({"success": True, "data": {"deleted": True, "id": _doc_id(request), "chunks": len(ids)}})


async def document_events(request: Request) -> Response:
    try:
        svc, doc, owner = await _owned_document(request)
    except RequestError as e:
        return api_error(e)
    return event_stream(request, _events(svc, doc, owner), lambda e: sse(error_frame(e)))


async def _events(svc: DocumentService, doc: Document, owner: str) -> AsyncIterator[bytes]:
    async for frame in document_frames(svc, doc, owner, every_s=PROGRESS_EVERY_S):
        yield sse(frame)


async def search(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        svc = await _service(request)
        req = decode(await read_body(request), SearchRequest)
        query = req.query.strip()
        if not query:
            raise RequestError("`query` is empty; send the words to look for", param="query")
        if len(req.query) > limits.MAX_QUERY_CHARS:
            raise RequestError(f"`query` has {len(req.query)} characters; the limit is {limits.MAX_QUERY_CHARS}",
                               param="query")
        if not 1 <= req.k <= MAX_K:
            raise RequestError(f"`k` must be between 1 and {MAX_K}, got {req.k}", param="k")
        collection = None if req.collection is None else _collection(req.collection)
        vector = svc.query_vectors.get(query)
        if vector is None:
            embedder = await rt.embedder()
            async with rt.embed_lock:
                vector = (await asyncio.to_thread(embedder.embed, [query])).vectors[0]
            svc.query_vectors.put(query, vector)
    except RequestError as e:
        return api_error(e)
    results = await asyncio.to_thread(svc.library.search, identity(request).owner, query, vector, req.k,
                                      collection=collection)
    return json_response({"success": True, "data": {"results": [r.to_dict() for r in results]}})
