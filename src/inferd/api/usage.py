"""One usage record per admitted generation request, on every exit path.

`UsageMiddleware` wraps each HTTP request to a generation route; the engine's finish hook
(`tally_generation`) adds each finished (or abandoned) generation to the request's tally, in
the task that consumed it. The record is handed to the store when the response's last byte
is about to go out, or when the request ends without one (client gone, server stopping).
"""

from __future__ import annotations

import contextvars
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.engine.client import FinishHook
from inferd.engine.types import FinishReason, GenerationOutput
from inferd.observability.middleware import dialect_of, route_of
from inferd.storage.records import UsageRecord, UsageStatus

# The routes that generate: each request to one of them gets exactly one usage record.
GENERATION_ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/generate",
        "/chat",
        "/generate/stream",
        "/chat/stream",
        "/api/generate/stream",
        "/api/chat/stream",
        "/api/generate",
        "/api/chat",
    }
)

CLIENT_CLOSED = 499


@dataclass
class UsageTally:
    """What the request's generations used, filled in by the engine's finish hook."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float | None = None
    finish_reasons: list[FinishReason] = field(default_factory=list)

    def add(self, model: str, out: GenerationOutput) -> None:
        self.model = model
        # choices share their prompt: count it once
        self.prompt_tokens = max(self.prompt_tokens, out.usage.prompt_tokens)
        self.cached_tokens = max(self.cached_tokens, out.usage.cached_tokens)
        self.completion_tokens += out.usage.completion_tokens
        if out.finish_reason is not None:
            self.finish_reasons.append(out.finish_reason)
        ttft = out.time_to_first_token
        if ttft is not None and (
            self.time_to_first_token is None or ttft < self.time_to_first_token
        ):
            self.time_to_first_token = ttft

    def status(self, http_status: int, *, ended: bool) -> UsageStatus:
        """The final status: an error anywhere wins, then a cancellation, then a refusal."""
        reasons = self.finish_reasons
        if FinishReason.ERROR in reasons or (http_status >= 500 and http_status != 503):
            return UsageStatus.ERROR
        if FinishReason.ABORT in reasons or http_status == CLIENT_CLOSED or not ended:
            return UsageStatus.CANCELLED
        if http_status >= 400:
            return UsageStatus.REJECTED
        if FinishReason.LENGTH in reasons:
            return UsageStatus.LENGTH
        return UsageStatus.OK


_current: contextvars.ContextVar[UsageTally | None] = contextvars.ContextVar(
    "inferd_usage", default=None
)


def current_tally() -> UsageTally | None:
    """The tally of the request being handled (None outside a generation route)."""
    return _current.get()


def tally_generation(model: str, out: GenerationOutput, seconds: float) -> None:
    """The engine's finish hook for usage records."""
    tally = _current.get()
    if tally is not None:
        tally.add(model, out)


def fan_out(*hooks: FinishHook) -> FinishHook:
    """One finish hook calling several."""

    def hook(model: str, out: GenerationOutput, seconds: float) -> None:
        for h in hooks:
            h(model, out, seconds)

    return hook


class UsageMiddleware:
    """Records the usage of every request to a generation route in `state.store`."""

    def __init__(self, app: ASGIApp, *, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        store = getattr(self.state, "store", None)
        if scope["type"] != "http" or store is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})  # request.state, shared with the routes (key_id)
        tally = UsageTally()
        token = _current.set(tally)
        http_status = 500
        recorded = False

        def record(*, ended: bool) -> None:
            nonlocal recorded
            if recorded or route_of(scope) not in GENERATION_ROUTES:
                return
            recorded = True
            store.record(self._record(scope, tally, http_status, ended=ended))

        async def send_wrapper(message: Message) -> None:
            nonlocal http_status
            if message["type"] == "http.response.start":
                http_status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                record(ended=True)  # durable before the client has the last byte
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            record(ended=False)
            _current.reset(token)

    @staticmethod
    def _record(scope: Scope, tally: UsageTally, http_status: int, *, ended: bool) -> UsageRecord:
        state: dict[str, Any] = scope.get("state") or {}
        client = scope.get("client")
        key_id = state.get("key_id")
        return UsageRecord(
            request_id=tally.request_id,
            key_id=key_id if isinstance(key_id, str) else None,
            model=tally.model,
            dialect=dialect_of(scope),
            route=route_of(scope) or "",
            status=tally.status(http_status, ended=ended),
            http_status=http_status,
            finish_reason=str(tally.finish_reasons[0]) if tally.finish_reasons else None,
            prompt_tokens=tally.prompt_tokens,
            cached_tokens=tally.cached_tokens,
            completion_tokens=tally.completion_tokens,
            time_to_first_token=tally.time_to_first_token,
            duration=time.perf_counter() - tally.started,
            client=str(client[0])[:64] if client else None,
            created_at=tally.started_at,
        )
