"""Wire framing for streams and disconnect handling for plain responses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from sse_starlette import EventSourceResponse
from starlette.requests import Request

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before the response was ready."""


def sse_response(
    events: AsyncIterator[dict[str, Any] | str], *, drain_timeout: float
) -> EventSourceResponse:
    """Server-sent events: each item is one `data:` line (dicts as compact JSON).

    When the client disconnects, sse-starlette cancels the iteration, whose cleanup aborts
    the engine sequences behind it. On server shutdown the stream may run on for
    `drain_timeout` seconds to finish its answer before it is cancelled.
    """

    async def frames() -> AsyncIterator[dict[str, str]]:
        async for item in events:
            data = item if isinstance(item, str) else json.dumps(item, separators=(",", ":"))
            yield {"data": data}

    return EventSourceResponse(
        frames(),
        ping=15,
        headers={"Cache-Control": "no-cache"},
        shutdown_grace_period=drain_timeout,
    )


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work` unless the client disconnects first; then cancel it (aborting its
    sequences) and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientDisconnected()
