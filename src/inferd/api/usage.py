"""The usage writer: one record per request to a generation route, on every exit path.

`UsageMiddleware` makes the request's `RequestRecord` when the request reaches a route that
generates (the route says so: see `api.routing`), for the pipeline to fill in. The record is
handed to the store when the response's last byte is about to go out, or when the request
ends without one (client gone, server stopping): exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.api.record import RequestRecord
from inferd.api.routing import dialect_of, generates, route_of
from inferd.storage.records import UsageRecord


class UsageMiddleware:
    """Makes the record of every request to a generation route and writes it to
    `state.store` (when the app has one)."""

    def __init__(self, app: ASGIApp, *, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not generates(scope):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        record = RequestRecord(state["request_id"])
        state["record"] = record
        http_status = 500
        recorded = False

        def write(*, ended: bool) -> None:
            nonlocal recorded
            store = getattr(self.state, "store", None)
            if recorded or store is None:
                return
            recorded = True
            store.record(usage_record(scope, record, http_status, ended=ended))

        def send_wrapper(message: Message) -> Awaitable[None]:
            # a plain function handing on send's awaitable: no coroutine of its own for
            # each of a stream's writes
            nonlocal http_status
            if message["type"] == "http.response.start":
                http_status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                write(ended=True)  # durable before the client has the last byte
            return send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            write(ended=False)


def usage_record(
    scope: Scope, record: RequestRecord, http_status: int, *, ended: bool
) -> UsageRecord:
    state: dict[str, Any] = scope.get("state") or {}
    client = scope.get("client")
    key_id = state.get("key_id")
    reasons = record.finish_reasons
    usage = record.usage
    return UsageRecord(
        request_id=record.request_id,
        key_id=key_id if isinstance(key_id, str) else None,
        model=record.model,
        dialect=str(dialect_of(scope)),
        route=route_of(scope) or "",
        status=record.status(http_status, ended=ended),
        http_status=http_status,
        finish_reason=str(reasons[0]) if reasons else None,
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens,
        time_to_first_token=record.time_to_first_token,
        duration=time.perf_counter() - record.started,
        client=str(client[0])[:64] if client else None,
        created_at=record.started_at,
    )
