"""`GET /api/models` (every model served, with its status) and, for admins,
`POST /api/models/{name}/load` and `/unload`.

A row: `name`, `status` (loaded, loading, unloaded, unusable; a remote engine's is
`loaded`, or `error` while its upstream does not answer), `default`, `pinned`,
`size_bytes`, `context` (tokens per conversation), `has_chat_template` (false: a base
model, /v1/completions only), `estimated_memory_bytes` (file + KV cache, before it
loads), `memory_bytes` and `load_ms` (while loaded), `idle_s` (since its last use),
`busy` (a generation runs or waits), `error` (why it is unusable, or its last load
failed), and for a remote engine `upstream` (its URL; it has no size or memory here).
The loading and unloading themselves are the registry's (chat/models.py).

Not here: picking a model for a chat (the `model` field of each chat door, turns.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..chat.runtime import Runtime
from ..guards.security import identity
from ..wire.errors import RequestError, api_error
from ..wire.http import json_response


def _rows(rt: Runtime) -> list[dict[str, Any]]:
    if rt.registry is not None:
        return rt.registry.describe()
    # A runtime built without a registry (tests, embedding): its one model.
    return [{"name": rt.model_name, "status": "loaded" if rt.state == "ready" else rt.state, "default": True,
             "pinned": True, "has_chat_template": getattr(rt.prompts, "has_chat_template", None)}]


async def list_models(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    rows = _rows(rt)
    return json_response({"success": True, "data": {
        "models": rows, "default": next((r["name"] for r in rows if r.get("default")), rt.model_name),
        "memory_budget_bytes": rt.registry.budget_bytes if rt.registry is not None else None,
        "loaded_memory_bytes": rt.registry.loaded_memory() if rt.registry is not None else None}})


def _admin_registry(request: Request) -> Any:
    if not identity(request).admin:
        raise RequestError("only an admin key may load or unload models", code="forbidden", status=403)
    rt: Runtime = request.app.state.runtime
    rt.require_ready()  # 503 while the server starts
    if rt.registry is None:
        raise RequestError("this server does not manage its models", code="not_available", status=404)
    return rt.registry


async def load_model(request: Request) -> Response:
    """Load a model now (unloading idle ones if the memory bound needs it); the request
    waits for the load."""
    try:
        registry = _admin_registry(request)
        entry, _ = await asyncio.to_thread(registry.acquire, request.path_params["name"])
        registry.release(entry)
        row = next(r for r in registry.describe() if r["name"] == entry.name)
    except RequestError as e:
        return api_error(e)
    return json_response({"success": True, "data": row})


async def unload_model(request: Request) -> Response:
    """Unload a model now: 409 when it is pinned or generating; `unloaded: false` when it
    was not loaded."""
    try:
        registry = _admin_registry(request)
        name = request.path_params["name"]
        was_loaded = await asyncio.to_thread(registry.unload, name)
        row = next(r for r in registry.describe() if r["name"] == name)
    except RequestError as e:
        return api_error(e)
    return json_response({"success": True, "data": {**row, "unloaded": was_loaded}})
