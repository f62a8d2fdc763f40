"""Usage statistics over the last hours: totals, timings, by model, dialect and key."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import Depends, Query

from inferd.api.access import require_admin
from inferd.api.deps import StoreDep
from inferd.api.openapi import STORE
from inferd.api.routing import Dialect, dialect_router
from inferd.storage.records import UsageStats

router = dialect_router(Dialect.OPENAI, prefix="/v1", tags=["store"], responses=STORE)

MAX_HOURS = 24 * 366


def stats_body(stats: UsageStats) -> dict[str, Any]:
    """The JSON of /v1/stats (and `inferd stats --json`)."""
    return {
        "object": "stats",
        "hours": stats.hours,
        "since": stats.since.isoformat(),
        "total": asdict(stats.total),
        "by_model": {k or "(none)": asdict(v) for k, v in stats.by_model.items()},
        "by_dialect": {k: asdict(v) for k, v in stats.by_dialect.items()},
        "by_key": {k or "(none)": asdict(v) for k, v in stats.by_key.items()},
    }


@router.get("/stats", dependencies=[Depends(require_admin)])
async def usage_stats(
    store: StoreDep,
    hours: Annotated[float, Query(gt=0, le=MAX_HOURS, allow_inf_nan=False)] = 24,
) -> dict[str, Any]:
    """Requests, tokens (prompt, cached, completion), time to first token and duration
    (average, p95, seconds), error, cancel and reject counts, over the last `hours`."""
    return stats_body(await store.stats(hours))
