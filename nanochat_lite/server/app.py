"""The Starlette application: routes, JSON errors for every failure, static page.

`create_app` wraps it in the security middleware (security.py): Host, Origin, CORS,
API keys and the headers every answer carries; inside that, the metrics middleware
(metrics.py): request ids, counters for `/metrics`, the access log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Scope

from ..documents.service import DocumentService
from ..history import StorageUnavailable
from ..redact import redact_paths
from .chat.runtime import Runtime
from .guards.security import KeyUsage, SecurityConfig, SecurityMiddleware
from .observe.metrics import Metrics, MetricsMiddleware, metrics_endpoint
from .routes import chat as chat_api
from .routes import conversations as conversations_api
from .routes import documents as documents_api
from .routes import embeddings as embeddings_api
from .routes import limits as limits_api
from .routes import models as models_api
from .routes import tokenize as tokenize_api
from .routes import ws
from .routes.openai import chat as openai_api
from .routes.openai import completions as openai_completions
from .wire.errors import RETRY_STORAGE_S, RequestError, api_error, error_response

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
log = logging.getLogger("nanochat_lite")

# The page loads only its own scripts and styles; nothing inline runs.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "no such route", 405: "method not allowed for this route"}.get(exc.status_code, str(exc.detail))
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    e = RequestError(f"{message}: {request.method} {request.url.path}", code=code, status=exc.status_code)
    return error_response(e, request.url.path, headers=getattr(exc, "headers", None))


async def storage_error(request: Request, exc: Exception) -> Response:
    """A locked, full or unreachable database on any route: 503, never a 500."""
    log.warning("storage unavailable on %s %s: %s", request.method, request.url.path, exc)
    e = RequestError(f"the conversation store cannot answer now: {redact_paths(str(exc))}; retry in a moment",
                     code="storage_unavailable", status=503, retry_after=RETRY_STORAGE_S)
    return error_response(e, request.url.path)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    e = RequestError("internal error; see the server log", code="internal_error", status=500)
    return error_response(e, request.url.path)


async def index(request: Request) -> Response:
    page = WEB_DIR / "index.html"
    if not page.exists():
        return api_error(RequestError("no page installed", code="not_found", status=404))
    return FileResponse(page, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


class _StaticWithCSP(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-cache"
        return response


async def openapi(request: Request) -> Response:
    """`GET /openapi.json`, built on first request (openapi.py is not imported before)."""
    doc = request.app.state.openapi
    if doc is None:
        from .routes.openapi import document

        doc = request.app.state.openapi = msgspec.json.encode(
            document(request.app.routes, keys=bool(request.app.state.security.keys)))
    return Response(doc, media_type="application/json")


# Unprefixed aliases of OpenAI routes, as llama-server serves them. They are rewritten
# to their /v1 path before anything else sees them, so that API keys, no-store and the
# metrics' route labels apply to them exactly as to /v1 (a Route of their own would
# bypass the key check, which guards /v1/*).
OPENAI_ALIASES = {"/chat/completions": "/v1/chat/completions", "/completions": "/v1/completions",
                  "/models": "/v1/models", "/embeddings": "/v1/embeddings"}


class _OpenAIAliases:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            target = OPENAI_ALIASES.get(scope["path"])
            if target is not None:
                scope = {**scope, "path": target, "raw_path": target.encode()}
        await self.app(scope, receive, send)


class _SecuredStarlette(Starlette):
    """Starlette with the security middleware outermost, so that even the 500 answers of
    Starlette's ServerErrorMiddleware carry the security headers; the metrics middleware
    next, so that it sees the key's name and counts those 500s."""

    def __init__(self, *args: Any, security: SecurityConfig, usage: KeyUsage, metrics: Metrics,
                 **kwargs: Any) -> None:
        self._security, self._usage, self._metrics = security, usage, metrics
        super().__init__(*args, **kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        inner = MetricsMiddleware(super().build_middleware_stack(), self._metrics)
        return _OpenAIAliases(SecurityMiddleware(inner, self._security, self._usage))


def create_app(runtime: Runtime, extra_routes: list[BaseRoute] | None = None, *,
               security: SecurityConfig | None = None, documents: DocumentService | None = None) -> Starlette:
    """The app. `security=None` means the defaults: loopback Host names (and IP
    literals) only, no cross-origin writes, no CORS, no API key. `documents=None`: the
    document routes answer 404 not_available."""
    security = security if security is not None else SecurityConfig()
    usage = KeyUsage(security.keys)
    metrics = Metrics(keys_configured=bool(security.keys))
    routes = [
        Route("/", index),
        Route("/api/health", chat_api.health),
        Route("/health", chat_api.health),
        Route("/api/stats", chat_api.stats),  # with the keys' usage when API keys are set
        Route("/api/chat", chat_api.chat, methods=["POST"]),
        Route("/api/answers/{answer_id}/events", chat_api.answer_events),
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/completions", openai_completions.completions, methods=["POST"]),
        Route("/v1/models", openai_api.list_models),
        WebSocketRoute("/ws", ws.websocket_chat),
        Route("/api/conversations", conversations_api.list_conversations),
        Route("/api/conversations/{cid}", conversations_api.get_conversation),
        Route("/api/conversations/{cid}", conversations_api.rename_conversation, methods=["PATCH"]),
        Route("/api/conversations/{cid}", conversations_api.delete_conversation, methods=["DELETE"]),
        Route("/api/conversations/{cid}/export", conversations_api.export_conversation),
        Route("/api/search", conversations_api.search),
        Route("/api/documents/search", documents_api.search, methods=["POST"]),
        Route("/api/documents", documents_api.upload, methods=["POST"]),
        Route("/api/documents", documents_api.list_documents),
        Route("/api/documents/{doc_id}", documents_api.get_document),
        Route("/api/documents/{doc_id}", documents_api.delete_document, methods=["DELETE"]),
        Route("/api/documents/{doc_id}/events", documents_api.document_events),
        Route("/api/limits", limits_api.limits),
        Route("/api/models", models_api.list_models),
        Route("/api/models/{name}/load", models_api.load_model, methods=["POST"]),
        Route("/api/models/{name}/unload", models_api.unload_model, methods=["POST"]),
        Route("/api/tokenize", tokenize_api.tokenize, methods=["POST"]),
        Route("/v1/embeddings", embeddings_api.openai_embeddings, methods=["POST"]),
        Route("/api/embeddings", embeddings_api.api_embeddings, methods=["POST"]),
        Route("/api/detokenize", tokenize_api.detokenize, methods=["POST"]),
        Route("/metrics", metrics_endpoint),
        Route("/openapi.json", openapi),
        *(extra_routes or []),
    ]
    if WEB_DIR.is_dir():
        routes.append(Mount("/static", app=_StaticWithCSP(directory=WEB_DIR), name="static"))
    handlers = {HTTPException: http_error, StorageUnavailable: storage_error, Exception: server_error}
    app = _SecuredStarlette(routes=routes, exception_handlers=handlers,
                            security=security, usage=usage, metrics=metrics)
    app.state.runtime = runtime
    app.state.security = security
    app.state.key_usage = usage if security.keys else None
    app.state.metrics = metrics
    app.state.openapi = None  # the encoded document, built on first request
    runtime.documents = documents  # the document routes, the WebSocket's watch and grounded chat read it there
    return app
