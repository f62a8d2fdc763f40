"""create_app: wiring only. Everything the app uses is passed in, so tests can inject fakes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from inferd import __version__
from inferd.api import conversations, ops, stats, ui
from inferd.api.errors import install_error_handlers
from inferd.api.guard import PUBLIC_PATHS, Guard, is_loopback
from inferd.api.native.router import router as native_router
from inferd.api.ollama.manage import router as ollama_manage_router
from inferd.api.ollama.router import router as ollama_router
from inferd.api.openai.router import router as openai_router
from inferd.api.routing import Dialect, Namespace, Routing
from inferd.api.usage import UsageMiddleware
from inferd.config import Settings
from inferd.models.registry import ModelRegistry
from inferd.observability.metrics import Metrics
from inferd.observability.middleware import GenerationObserver, ObservabilityMiddleware
from inferd.observability.tracing import Tracing
from inferd.security.capacity import CapacityGate
from inferd.security.keys import KeyRing, MemoryKeyStore
from inferd.security.limits import RateLimits
from inferd.storage.store import Store

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    registry: ModelRegistry,
    *,
    metrics: Metrics | None = None,
    tracer_provider: Any | None = None,
    keys: KeyRing | None = None,
    limits: RateLimits | None = None,
    store: Store | None = None,
    open_store: bool = False,
) -> FastAPI:
    """The app over `registry`. `metrics` (default: new, in its own registry),
    `tracer_provider` (default: OTLP from the environment when configured, else none),
    `keys` (default: an empty in-memory key store) and `limits` (default: from the
    rate_limit_storage setting) can be injected. `store` (usage records, conversations) is
    used as given, its owner starts and closes it; with `open_store` the lifespan starts and
    closes it (the configured one when none is given)."""
    metrics = metrics or Metrics(registry)
    tracing = Tracing(tracer_provider)
    keys = keys or KeyRing(MemoryKeyStore(), max_age=settings.key_cache_seconds)
    limits = limits or RateLimits(settings.rate_limit_storage)
    gate = CapacityGate(settings.max_concurrent_requests, settings.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_store = (store or Store.from_settings(settings)) if open_store else None
        if own_store is not None:  # first: it migrates the schema the keys are read from
            await own_store.start()
            app.state.store = own_store
        await keys.refresh()
        loading = asyncio.create_task(registry.load_all())
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await registry.close()
            if own_store is not None:
                await own_store.close()  # after the engines: their last records are in

    app = FastAPI(
        title="inferd",
        version=__version__,
        description="Local-first LLM inference server: OpenAI, Ollama and native APIs.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.started = time.monotonic()
    app.state.metrics = metrics
    app.state.tracing = tracing
    app.state.observe_generation = GenerationObserver(metrics, tracing)  # the pipeline calls it
    app.state.keys = keys
    app.state.limits = limits
    app.state.capacity = gate
    app.state.store = store
    metrics.watch_store(lambda: app.state.store.writer if app.state.store is not None else None)
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(openai_router)
    app.include_router(conversations.router)
    app.include_router(stats.router)
    app.include_router(native_router)
    app.include_router(ollama_router)
    app.include_router(ollama_manage_router)
    app.include_router(ui.router)

    @app.get("/swagger-ui", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="inferd API")

    app.router.routes.append(Namespace("/api/", Dialect.OLLAMA))  # last: after every route

    # Outermost last: CORS (preflights need no key) > routing (the matched route, so its
    # dialect, for everything after) > observability (request id, access log, metrics; it
    # logs 401s too) > guard > usage records (only for requests the guard let in: no rows
    # for unauthenticated junk).
    app.add_middleware(UsageMiddleware, state=app.state)
    metrics_public = (
        not settings.metrics_require_key
        if settings.metrics_require_key is not None
        else is_loopback(settings.host)
    )
    app.state.public_paths = PUBLIC_PATHS | ui.PATHS | ({"/metrics"} if metrics_public else set())
    app.add_middleware(
        Guard,
        keys=keys,
        limits=limits,
        gate=gate,
        require_auth=settings.require_auth,
        host=settings.host,
        allowed_hosts=settings.allowed_hosts,
        public=app.state.public_paths,
        max_header_bytes=settings.max_header_bytes,
        max_body_bytes=settings.max_body_bytes,
        body_timeout=settings.request_timeout,
        client_calls=settings.rate_limit_calls,
        client_seconds=settings.rate_limit_seconds,
    )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, tracing=tracing)
    app.add_middleware(Routing, routes=app.router.routes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[
                "x-request-id",
                "retry-after",
                *(
                    f"x-ratelimit-{w}-{k}"
                    for w in ("limit", "remaining", "reset")
                    for k in ("requests", "tokens")
                ),
            ],
        )
    return app
