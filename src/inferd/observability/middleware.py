"""The request middleware (request id, access log, HTTP metrics, request span) and the
observer of finished generations. Pure ASGI, so streaming and disconnects pass through.

Every request gets a new id, unique, in `X-Request-ID` and on every log line; a generation's
usage row and response ids carry it too. A client's own valid X-Request-ID is not reused
(two clients may send the same one, and a usage row's id must be unique): it is kept on the
access log line as `client_request_id`."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.api.record import RequestRecord
from inferd.api.routing import dialect_of, route_of
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

UNMATCHED = "<unmatched>"
NO_DIALECT = "none"  # the dialect label of a request no route matches


def dialect_label(scope: Scope) -> str:
    dialect = dialect_of(scope)
    return NO_DIALECT if dialect is None else str(dialect)


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
        ctx = RequestContext(uuid.uuid4().hex)
        scope.setdefault("state", {})["request_id"] = ctx.request_id
        rid_header = (b"x-request-id", ctx.request_id.encode("ascii"))
        method: str = scope["method"]
        status = 500
        started_response = False

        def send_wrapper(message: Message) -> Awaitable[None]:
            # a plain function handing on send's awaitable: no coroutine of its own for
            # each of a stream's writes
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append(rid_header)
                message = {**message, "headers": headers}
            return send(message)

        dialect = dialect_label(scope)  # the Routing middleware, outside this one, found it
        in_flight = self.metrics.http_in_flight.labels(dialect)
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
            label = route or UNMATCHED
            self.metrics.http_requests.labels(dialect, label, method, str(status)).inc()
            self.metrics.http_duration.labels(dialect, label, method).observe(seconds)
            if span is not None:
                self.tracing.end_request(span, route, status, ctx.request_id, error=error)
            client_id = incoming if incoming == sanitize_request_id(incoming) else None
            record = scope["state"].get("record")
            self._access(dialect, method, label, status, seconds, client_id, record)
            reset_current_request(token)

    @staticmethod
    def _access(
        dialect: str,
        method: str,
        route: str,
        status: int,
        seconds: float,
        client_id: str | None,
        record: RequestRecord | None,
    ) -> None:
        extra: dict[str, Any] = {
            "dialect": dialect,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
        }
        if client_id is not None:
            extra["client_request_id"] = client_id
        if record is not None and record.model is not None:
            usage = record.usage
            extra.update(
                model=record.model,
                prompt_tokens=usage.prompt_tokens,
                cached_tokens=usage.cached_tokens,
                completion_tokens=usage.completion_tokens,
            )
        access_log.info("%s %s %d %.1fms", method, route, status, extra["duration_ms"], extra=extra)


class GenerationObserver:
    """Called by the generation pipeline when a sequence ends (its final output, or the
    ABORT output of one the pipeline left): metrics and a generation span, a child of the
    request's span."""

    def __init__(self, metrics: Metrics, tracing: Tracing) -> None:
        self.metrics = metrics
        self.tracing = tracing

    def __call__(self, model: str, out: GenerationOutput, seconds: float) -> None:
        self.metrics.observe_generation(model, out, seconds)
        if self.tracing.enabled:
            ctx = current_request()
            self.tracing.record_generation(
                model, out, seconds, ctx.span if ctx is not None else None
            )
