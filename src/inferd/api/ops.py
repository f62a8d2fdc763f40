"""Operational routes: health, liveness, readiness, metrics, version."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from inferd import __version__
from inferd.api.deps import RegistryDep
from inferd.api.errors import RETRY_AFTER_SECONDS
from inferd.observability.metrics import CONTENT_TYPE, Metrics

router = APIRouter(tags=["ops"])


@router.get("/health")
async def health(request: Request, registry: RegistryDep) -> dict[str, Any]:
    """Overall status with every model's engine statistics."""
    models = []
    for entry in registry.entries():
        item: dict[str, Any] = {
            "name": entry.spec.name,
            "aliases": list(entry.spec.aliases),
            "status": entry.status.value,
        }
        if entry.error:
            item["error"] = entry.error
        if entry.progress is not None:
            item["progress"] = {"phase": entry.progress.phase, "fraction": entry.progress.fraction}
        if entry.model is not None:
            st = entry.model.engine.stats()
            item.update(
                running=st.running,
                waiting=st.waiting,
                kv_cells_used=st.kv_cells_used,
                kv_cells_total=st.kv_cells_total,
                cached_prefixes=st.cached_prefixes,
                prefix_cache_bytes=st.prefix_cache_bytes,
                prefix_hits=st.prefix_hits,
                reused_tokens_total=st.reused_tokens_total,
                steps=st.steps,
                generated_tokens_total=st.generated_tokens_total,
                preemptions=st.preemptions,
            )
        models.append(item)
    return {
        "status": "ok" if registry.ready else "loading",
        "version": __version__,
        "uptime": round(time.monotonic() - request.app.state.started, 3),
        "models_loaded": sum(1 for m in models if m["status"] == "ready"),
        "total_models": len(models),
        "models": models,
    }


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/health/ready", responses={503: {"description": "the default model is not loaded"}})
async def ready(registry: RegistryDep) -> JSONResponse:
    """Ready when the default model is loaded."""
    if registry.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse(
        {"status": "loading"}, 503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus metrics in the text exposition format."""
    m: Metrics = request.app.state.metrics
    return Response(m.render(), media_type=CONTENT_TYPE)
