"""The request middleware (request id, access log, HTTP metrics, request span) and the
observer of finished generations. Pure ASGI, so streaming and disconnects pass through."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.engine.types import GenerationOutput
from inferd.observability.logging import (
    RequestContext,
    current_request,
    reset_current_request,
    sanitize_request_id,
    set_current_request,
)
from inferd.observability.metrics import Metrics
from inferd.observability.tracing import Tracing

access_log = logging.getLogger("inferd.access")
log = logging.getLogger(__name__)

DIALECTS = ("openai", "ollama", "native", "ops")
UNMATCHED = "<unmatched>"
_OPS_PATHS = frozenset(
    {"/health", "/health/live", "/health/ready", "/metrics", "/version", "/swagger-ui"}
    | {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)


def dialect_of(scope: Scope) -> str:
    """The dialect of a request: the matched route's tag, else guessed from the path."""
    route = scope.get("route")
    for tag in getattr(route, "tags", None) or ():
        if tag in DIALECTS:
            return str(tag)
    path: str = scope.get("path", "")
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/api/"):
        return "ollama"
    if route is not None or path in _OPS_PATHS:
        return "ops"  # routes without a dialect tag: docs, swagger
    return "native"


def route_of(scope: Scope) -> str | None:
    """The matched route's template (`/v1/chat/completions`), never the raw URL."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


class ObservabilityMiddleware:
    """Per HTTP request: a request id (X-Request-ID in and out, on every log line), one
    access log line when the response (stream included) ends, HTTP metrics and a span."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, tracing: Tracing) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                incoming = v.decode("latin-1")
                break
        ctx = RequestContext(sanitize_request_id(incoming))
        rid_header = (b"x-request-id", ctx.request_id.encode("ascii"))
        method: str = scope["method"]
        status = 500
        started_response = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append(rid_header)
                message = {**message, "headers": headers}
            await send(message)

        # the dialect is known once routed; count in-flight under the path's guess
        in_flight = self.metrics.http_in_flight.labels(dialect_of(scope))
        in_flight.inc()
        span: Any = None
        if self.tracing.enabled:
            span = self.tracing.start_request(method, scope.get("path", ""), scope["headers"])
            ctx.span = span[0]
        token = set_current_request(ctx)
        error = False
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            error = True
            if not started_response:
                status = 500
            raise
        finally:
            in_flight.dec()
            seconds = time.perf_counter() - ctx.started
            route = route_of(scope)
            dialect = dialect_of(scope)
            label = route or UNMATCHED
            self.metrics.http_requests.labels(dialect, label, method, str(status)).inc()
            self.metrics.http_duration.labels(dialect, label, method).observe(seconds)
            if span is not None:
                self.tracing.end_request(span, route, status, ctx.request_id, error=error)
            self._access(ctx, dialect, method, label, status, seconds)
            reset_current_request(token)

    @staticmethod
    def _access(
        ctx: RequestContext, dialect: str, method: str, route: str, status: int, seconds: float
    ) -> None:
        extra: dict[str, Any] = {
            "dialect": dialect,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
        }
        if ctx.model is not None:
            extra.update(
                model=ctx.model,
                prompt_tokens=ctx.prompt_tokens,
                completion_tokens=ctx.completion_tokens,
            )
        access_log.info("%s %s %d %.1fms", method, route, status, extra["duration_ms"], extra=extra)


class GenerationObserver:
    """The engine's finish hook: metrics, the request's log fields and a generation span.
    Runs in the task that consumed the generation, so it sees the request's context."""

    def __init__(self, metrics: Metrics, tracing: Tracing) -> None:
        self.metrics = metrics
        self.tracing = tracing

    def __call__(self, model: str, out: GenerationOutput, seconds: float) -> None:
        self.metrics.observe_generation(model, out, seconds)
        ctx = current_request()
        if ctx is not None:
            ctx.model = model
            # choices share the prompt: count it once
            ctx.prompt_tokens = max(ctx.prompt_tokens, out.usage.prompt_tokens)
            ctx.completion_tokens += out.usage.completion_tokens
            ctx.generations += 1
        if self.tracing.enabled:
            self.tracing.record_generation(
                model, out, seconds, ctx.span if ctx is not None else None
            )
