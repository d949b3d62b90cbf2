"""Conversation routes: list, read, rename, delete, export, search.

Thin translations of `history.ConversationStore` calls, which run in worker threads
so a slow disk never stalls the event loop. Unknown ids are 404, bad paging 400.

Each request sees its owner's conversations only (the API key's name, or 'local'
without keys: guards/security.py): another owner's id is 404 `conversation_not_found`,
exactly as an id that does not exist. An admin key may read (list, get, export,
search) another owner's with `?owner=NAME`, or everyone's with `?owner=*`; renaming
and deleting stay its own. The list says who is asking (`viewer`), for the page.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ...history import NotFound, check_owner
from ..chat import semantic
from ..chat.runtime import Runtime
from ..guards.security import identity
from ..wire import limits
from ..wire.errors import RequestError, api_error
from ..wire.http import json_response, read_body
from ..wire.schemas import decode


class RenameRequest(msgspec.Struct, kw_only=True):
    title: str


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RequestError(f"`{name}` must be a whole number, got {raw!r}", param=name) from None
    if not lo <= value <= hi:
        raise RequestError(f"`{name}` must be between {lo} and {hi}, got {value}", param=name)
    return value


def _conversation_id(request: Request) -> str:
    cid = str(request.path_params["cid"])
    limits.check_id(cid)
    return cid


def _reader(request: Request) -> str | None:
    """Whose conversations a read covers: the request's owner, or for an admin the
    `?owner=` it names (`*`: every owner, None). 403 for another's name without the role."""
    who = identity(request)
    raw = request.query_params.get("owner")
    if raw is None or raw == who.owner:
        return who.owner
    if not who.admin:
        raise RequestError("only an admin key may read another owner's conversations; leave out `owner` to read "
                           "your own", code="forbidden", status=403, param="owner")
    if raw == "*":
        return None
    try:
        return check_owner(raw)
    except ValueError as e:
        raise RequestError(f"`owner`: {e}; or * for every owner", param="owner") from None


def _not_found(cid: str) -> RequestError:
    return RequestError(f"no conversation with id {cid!r}", code="conversation_not_found", status=404)


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def list_conversations(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    who = identity(request)
    try:
        limit = _int_param(request, "limit", 20, 1, limits.MAX_PAGE)
        offset = _int_param(request, "offset", 0, 0, 10**9)
        owner = _reader(request)
    except RequestError as e:
        return api_error(e)
    items, total = await _call(rt.store.list, limit=limit, offset=offset, owner=owner)
    return json_response({"success": True, "data": {
        "conversations": [c.to_dict() for c in items], "total": total, "limit": limit, "offset": offset,
        "owner": "*" if owner is None else owner,
        "viewer": {"owner": who.owner, "admin": who.admin, "keys": who.keyed}}})


async def get_conversation(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        cid = _conversation_id(request)
        owner = _reader(request)

        def read() -> tuple[Any, Any]:
            conv = rt.store.get(cid, owner=owner)
            if conv is None:
                raise _not_found(cid)
            return conv, rt.store.messages(cid, owner=owner)

        conv, messages = await _call(read)
    except RequestError as e:
        return api_error(e)
    except NotFound:
        return api_error(_not_found(request.path_params["cid"]))
    return json_response({"success": True, "data": {
        "conversation": conv.to_dict(), "messages": [m.to_dict() for m in messages]}})


async def rename_conversation(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        cid = _conversation_id(request)
        req = decode(await read_body(request), RenameRequest)
        title = " ".join(req.title.split())
        if len(title) > limits.MAX_TITLE_CHARS:
            raise RequestError(f"`title` has {len(title)} characters; the limit is {limits.MAX_TITLE_CHARS}", param="title")
        conv = await _call(rt.store.rename, cid, title, owner=identity(request).owner)
    except RequestError as e:
        return api_error(e)
    except NotFound:
        return api_error(_not_found(request.path_params["cid"]))
    return json_response({"success": True, "data": {"conversation": conv.to_dict()}})


async def delete_conversation(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        cid = _conversation_id(request)
        if not await _call(rt.store.delete, cid, owner=identity(request).owner):
            raise _not_found(cid)
    except RequestError as e:
        return api_error(e)
    return json_response({"success": True, "data": {"deleted": True, "id": cid}})


async def export_conversation(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    fmt = request.query_params.get("format", "json")
    try:
        cid = _conversation_id(request)
        if fmt not in ("json", "markdown"):
            raise RequestError(f"`format` must be json or markdown, got {fmt!r}", param="format")
        text = await _call(rt.store.export, cid, fmt, owner=_reader(request))
    except RequestError as e:
        return api_error(e)
    except NotFound:
        return api_error(_not_found(request.path_params["cid"]))
    ext, media = ("json", "application/json") if fmt == "json" else ("md", "text/markdown; charset=utf-8")
    return Response(text, media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="conversation-{cid}.{ext}"'})


async def search(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    q = request.query_params.get("q", "")
    mode = request.query_params.get("mode", "text")
    try:
        if len(q) > limits.MAX_QUERY_CHARS:
            raise RequestError(f"`q` has {len(q)} characters; the limit is {limits.MAX_QUERY_CHARS}", param="q")
        if mode not in ("text", "semantic"):
            raise RequestError(f"`mode` must be text or semantic, got {mode!r}", param="mode")
        limit = _int_param(request, "limit", 20, 1, limits.MAX_PAGE)
        owner = _reader(request)
        if mode == "semantic":
            results = await semantic.search(rt, q, limit, owner=owner) if q.strip() else []
        else:
            results = await _call(rt.store.search, q, limit=limit, owner=owner)
    except RequestError as e:
        return api_error(e)
    return json_response({"success": True, "data": {"query": q, "mode": mode, "results": results}})
