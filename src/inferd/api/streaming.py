"""Wire framing for streams (SSE, NDJSON) and disconnect handling for plain responses.

A stream that fails after it started ends with the error table's `error_event`, in the
dialect of the request's route."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import StreamingResponse

from inferd.api.errors import ClientDisconnected, error_event
from inferd.api.routing import Dialect, dialect_of
from inferd.errors import InferdError

T = TypeVar("T")

DONE = "[DONE]"  # the OpenAI stream's last event


async def _ending_in_errors(
    request: Request, events: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    """`events`, and an error event in the route's dialect if they fail."""
    try:
        async for item in events:
            yield item
    except InferdError as exc:
        yield error_event(dialect_of(request.scope) or Dialect.OPENAI, exc)


def sse_response(
    request: Request,
    events: AsyncIterator[dict[str, Any]],
    *,
    drain_timeout: float,
    done: bool = False,
) -> EventSourceResponse:
    """Server-sent events: each item is one `data:` line of compact JSON, then `[DONE]`
    when `done` (after an error event too).

    When the client disconnects, sse-starlette cancels the iteration, whose cleanup aborts
    the engine sequences behind it. On server shutdown the stream may run on for
    `drain_timeout` seconds to finish its answer before it is cancelled.
    """

    async def frames() -> AsyncIterator[dict[str, str]]:
        async for item in _ending_in_errors(request, events):
            yield {"data": json.dumps(item, separators=(",", ":"))}
        if done:
            yield {"data": DONE}

    return EventSourceResponse(
        frames(),
        ping=15,
        headers={"Cache-Control": "no-cache"},
        shutdown_grace_period=drain_timeout,
    )


def ndjson_response(request: Request, events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Newline-delimited JSON, one object a line."""

    async def lines() -> AsyncIterator[bytes]:
        async for item in _ending_in_errors(request, events):
            yield json.dumps(item, separators=(",", ":")).encode() + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


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
