"""Errors as the clients expect them: OpenAI-style `{"error": {...}}` bodies, Ollama-style `{"error": "..."}` on
/api/*. Bad input is a 4xx; a server fault is a logged 500 with the same shape, and the server keeps serving."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("compactkv.server")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 503: "server_unavailable"}


class ApiError(Exception):
    """An error to report to the client: HTTP status, message, and the OpenAI `param` / `code` when known."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def is_ollama(path: str) -> bool:
    return path.startswith("/api/")


def error_body(path: str, status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The body for an error on `path`, in that protocol's shape."""
    if is_ollama(path):
        return {"error": message}
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


def error_response(path: str, err: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(error_body(path, err.status, err.message, err.param, err.code), err.status, headers=headers)


def stream_error_line(path: str, message: str) -> str:
    """An error reported inside an already started stream (a JSON document, without framing)."""
    return json.dumps(error_body(path, 500, message, code="generation_failed"))


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return f"malformed JSON body: {first.get('msg')}", None
    param = ".".join(loc) or None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (f"{param}: {first.get('msg')}" if param else str(first.get("msg"))) + more, param


def install(app: FastAPI) -> None:
    """Register the handlers that give every error its protocol's shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(request.url.path, ApiError(400, message, param, "invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        return error_response(request.url.path, ApiError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request.url.path, ApiError(500, f"internal error: {type(exc).__name__}"))
