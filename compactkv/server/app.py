"""The FastAPI application: OpenAI and Ollama routes over one Service, plus /health and /metrics.

The model loads in a background thread after startup, so /health answers 503 while loading and 200 after.
`--api-key` protects every route but /health with `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import asyncio
import secrets
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import AppStatus

from .. import __version__
from ..engine.loader import LoadedModel, ModelSpec, load_model
from . import errors, ollama_routes, openai_routes
from .config import ServerConfig
from .errors import ApiError
from .service import Service


class RequestCounter:
    """Pure ASGI middleware: counts responses by route and status (without buffering streams) and reads API bodies
    as JSON."""

    def __init__(self, app, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope.get("path", "")
        if scope.get("method") == "POST" and endpoint.startswith(("/v1/", "/api/")):
            scope = dict(scope, headers=_json_content_type(scope.get("headers") or []))

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.service.metrics.observe_request(endpoint if _known(endpoint) else "other", message["status"])
            await send(message)
        await self.app(scope, receive, counting_send)


def _json_content_type(headers: list) -> list:
    """Ollama and llama-server read the body as JSON whatever the Content-Type says (curl -d sends a form type)."""
    return [(k, v) for k, v in headers if k.lower() != b"content-type"] + [(b"content-type", b"application/json")]


def _known(path: str) -> bool:
    return path.startswith(("/v1/", "/api/")) or path in ("/health", "/metrics")


def create_app(config: ServerConfig, loader: Callable[[ModelSpec], LoadedModel] = load_model) -> FastAPI:
    """The app for `config`; `loader` is swappable so tests can serve a tiny model."""
    service = Service(config, loader)
    # SSE streams end when their generation ends (the engine drains on SIGTERM), not when the signal arrives.
    AppStatus.disable_automatic_graceful_drain()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.get_running_loop().run_in_executor(None, service.load)
        try:
            yield
        finally:
            if service.scheduler is not None:
                await asyncio.to_thread(service.scheduler.close, config.shutdown_timeout)
            AppStatus.should_exit = True
            await asyncio.wait({loading}, timeout=0.1)

    async def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), config.api_key):
            raise ApiError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')", None,
                           "invalid_api_key")

    app = FastAPI(title="compactkv", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    errors.install(app)
    protected = [Depends(authorize)]
    app.include_router(openai_routes.router(service), dependencies=protected)
    app.include_router(ollama_routes.router(service), dependencies=protected)

    @app.get("/health")
    async def health():
        if service.state == "ready":
            return {"status": "ok"}
        body = {"status": service.state} | ({"error": service.error} if service.error else {})
        return JSONResponse(body, status_code=503)

    @app.get("/metrics", dependencies=protected)
    async def metrics():
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.get("/", dependencies=protected)
    async def root():
        return {"name": "compactkv", "version": __version__, "model": service.model_name, "state": service.state}

    app.add_middleware(RequestCounter, service=service)
    return app
