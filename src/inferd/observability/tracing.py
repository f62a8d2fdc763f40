"""Optional OpenTelemetry tracing.

On only when a tracer provider is injected (tests) or when `opentelemetry-sdk` and the OTLP
HTTP exporter are installed (`pip install inferd[otel]`) and OTEL_EXPORTER_OTLP_ENDPOINT is
set. Otherwise `Tracing.enabled` is False and nothing here runs on a request.

Spans: one SERVER span per HTTP request (continuing an incoming `traceparent`), and one
`generate` child span per generation, covering queue wait and decode.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from inferd.engine.types import GenerationOutput

log = logging.getLogger(__name__)


def _provider_from_env() -> Any | None:
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
            "(pip install 'inferd[otel]'): tracing is off"
        )
        return None
    service = os.environ.get("OTEL_SERVICE_NAME", "inferd")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class Tracing:
    """The app's tracer, or nothing. Built once in create_app."""

    def __init__(self, provider: Any | None = None) -> None:
        self.provider = provider if provider is not None else _provider_from_env()
        self.tracer: Any = None
        if self.provider is None:
            return
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from inferd import __version__

        self.tracer = self.provider.get_tracer("inferd", __version__)
        self._propagator = TraceContextTextMapPropagator()

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def start_request(self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> Any:
        """Start the request's SERVER span (a child of an incoming traceparent) and make it
        current; returns a handle for `end_request`."""
        from opentelemetry import context, trace

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
        parent = self._propagator.extract(carrier)
        span = self.tracer.start_span(
            method,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        return span, token, method

    def end_request(
        self, handle: Any, route: str | None, status: int, request_id: str, *, error: bool
    ) -> None:
        from opentelemetry import context, trace

        span, token, method = handle
        context.detach(token)
        if route:
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("inferd.request_id", request_id)
        if error or status >= 500:
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        span.end()

    def record_generation(
        self, model: str, out: GenerationOutput, seconds: float, parent_span: Any
    ) -> None:
        """A finished generation as a span ending now and starting `seconds` ago, a child of
        the request's span, with the first token as an event."""
        from opentelemetry import trace

        end = time.time_ns()
        start = end - int(seconds * 1e9)
        ctx = trace.set_span_in_context(parent_span) if parent_span is not None else None
        span = self.tracer.start_span(
            "generate",
            context=ctx,
            start_time=start,
            attributes={
                "gen_ai.request.model": model,
                "inferd.model": model,
                "inferd.prompt_tokens": out.usage.prompt_tokens,
                "inferd.completion_tokens": out.usage.completion_tokens,
                "inferd.cached_tokens": out.usage.cached_tokens,
                "inferd.finish_reason": str(out.finish_reason),
            },
        )
        if out.queue_time is not None:
            span.set_attribute("inferd.queue_time_s", out.queue_time)
            span.add_event("scheduled", timestamp=start + int(out.queue_time * 1e9))
        if out.time_to_first_token is not None:
            span.set_attribute("inferd.time_to_first_token_s", out.time_to_first_token)
            span.add_event("first_token", timestamp=start + int(out.time_to_first_token * 1e9))
        if out.error:
            span.set_status(trace.Status(trace.StatusCode.ERROR, "generation failed"))
        span.end(end_time=end)
