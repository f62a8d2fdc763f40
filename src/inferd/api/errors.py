"""Domain error -> (status, body) for every dialect: the one table."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from inferd import errors as e
from inferd.api.record import CLIENT_CLOSED
from inferd.api.routing import Dialect, dialect_of

log = logging.getLogger(__name__)


# status, OpenAI-style error type
_TABLE: list[tuple[type[e.InferdError], int, str]] = [
    (e.InvalidRequest, 400, "invalid_request_error"),
    (e.InvalidModelFile, 400, "invalid_request_error"),
    (e.PullFailed, 400, "invalid_request_error"),
    (e.Unauthenticated, 401, "authentication_error"),
    (e.PermissionDenied, 403, "permission_error"),
    (e.ProtectedModel, 403, "permission_error"),
    (e.ModelNotFound, 404, "invalid_request_error"),
    (e.RateLimited, 429, "rate_limit_error"),
    (e.ModelNotReady, 503, "server_error"),
    (e.Overloaded, 503, "server_error"),
    (e.EngineStopped, 503, "server_error"),
    (e.StoreUnavailable, 503, "server_error"),
    (e.BackendError, 500, "server_error"),
    (e.InferdError, 500, "server_error"),
]

_HTTP_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
}

RETRY_AFTER_SECONDS = 1


class ClientDisconnected(Exception):
    """The client went away before the response was ready (answered CLIENT_CLOSED)."""


def status_of(exc: e.InferdError) -> tuple[int, str]:
    for cls, status, kind in _TABLE:
        if isinstance(exc, cls):
            return status, kind
    return 500, "server_error"


def error_body(
    dialect: Dialect | None,
    message: str,
    kind: str,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """An error in the dialect's shape: Ollama's `{"error": "..."}`, else (OpenAI, native,
    routes of no dialect) `{"error": {"message", "type", "param", "code"}}`."""
    if dialect is Dialect.OLLAMA:
        return {"error": message}
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_event(dialect: Dialect, exc: e.InferdError) -> dict[str, Any]:
    """The last event of a stream that failed after it started, in the dialect's shape."""
    _, kind = status_of(exc)
    return error_body(dialect, exc.message, kind, exc.param, exc.code)


class ErrorResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error may quote client text (a model name, say)
    holding lone surrogates, which cannot be encoded as UTF-8."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(
    request: Request,
    status: int,
    message: str,
    *,
    kind: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS), **(headers or {})}
    kind = kind or _HTTP_TYPES.get(status, "server_error")
    body = error_body(dialect_of(request.scope), message, kind, param, code)
    return ErrorResponse(body, status, headers=headers)


def _param_of(loc: tuple[Any, ...]) -> str | None:
    parts = [p for p in loc if p not in ("body", "query", "path")]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("str", "int", "float", "list[str]", "list[int]", "list[list[int]]"):
            continue  # pydantic's union member tags are noise to a client
        elif "[" in str(p) or "function-" in str(p):
            continue
        else:
            out += ("." if out else "") + str(p)
    return out or None


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errs = exc.errors()
    if not errs:
        return "Invalid request body", None
    first = errs[0]
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON", None
    param = _param_of(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        return (
            f"Missing required parameter: '{param}'" if param else "Missing request body"
        ), param
    if param is None:
        return f"Invalid request body: {msg}", None
    return f"Invalid value for '{param}': {msg}", param


def domain_error_response(request: Request, exc: e.InferdError) -> JSONResponse:
    """The response for a domain error, in the request's dialect."""
    status, kind = status_of(exc)
    if status >= 500 and status != 503:
        log.error("request failed: %s", exc.message)
    headers = None
    if isinstance(exc, e.RateLimited):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    elif isinstance(exc, e.Unauthenticated):
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(
        request, status, exc.message, kind=kind, param=exc.param, code=exc.code, headers=headers
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(e.InferdError)
    async def domain_error(request: Request, exc: e.InferdError) -> JSONResponse:
        return domain_error_response(request, exc)

    @app.exception_handler(ClientDisconnected)
    async def client_gone(request: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        content_type = request.headers.get("content-type", "")
        if param is None and "json" not in content_type:
            message = "The request body must be JSON, sent with Content-Type: application/json"
        log.debug("invalid request: %s", exc.errors())
        return error_response(request, 400, message, param=param, code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"No route {request.method} {request.url.path[:200]}"
        code = "invalid_request" if exc.status_code == 400 else None
        return error_response(request, exc.status_code, message, code=code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request, 500, "Internal server error", code="internal_error")
