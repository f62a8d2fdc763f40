"""Sessions: `session_id` (or X-Session-ID) stores a chat's exchange under that session;
`session_history: true` puts the stored conversation before the request's messages. A
session belongs to the API key that uses it (`scoped_session`)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, StrictStr
from starlette.requests import Request

from inferd.api.access import principal_of
from inferd.api.record import RequestRecord
from inferd.config import Settings
from inferd.engine.types import FinishReason, GenerationOutput
from inferd.errors import InvalidRequest, StoreUnavailable
from inferd.storage.records import MessageRecord
from inferd.storage.store import Store

if TYPE_CHECKING:
    from inferd.api.pipeline.run import ChoiceResult

SESSION_HEADER = "x-session-id"
SESSION_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
_SESSION_ID = re.compile(SESSION_PATTERN)

# The body field, for the wire models of the dialects that take it.
SessionId = Annotated[StrictStr, Field(pattern=SESSION_PATTERN)]

_ANSWERED = (FinishReason.STOP, FinishReason.LENGTH)


def scoped_session(key_id: str | None, session_id: str) -> str:
    """Where a session is stored: in the namespace of the API key that uses it, so the same
    session id under two keys is two conversations and no key reads another's (`key_id/id`;
    a session id never holds a `/`). Without authentication there is one namespace."""
    return session_id if key_id is None else f"{key_id}/{session_id}"


def session_of(body_value: str | None, request: Request) -> str | None:
    """The request's session, as stored: the body field, else the X-Session-ID header, in the
    namespace of the caller's key."""
    value = body_value
    if value is None:
        value = request.headers.get(SESSION_HEADER)
        if value is not None and not _SESSION_ID.fullmatch(value):
            raise InvalidRequest(
                "X-Session-ID must be 1-128 letters, digits or . _ : @ -", param="X-Session-ID"
            )
    if value is None:
        return None
    principal = principal_of(request)
    return scoped_session(principal.key_id if principal is not None else None, value)


def new_inputs(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The user messages after the request's last assistant message: what this turn adds."""
    last_answer = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    return [m for m in messages[last_answer + 1 :] if m["role"] == "user"]


def with_history(
    history: list[MessageRecord], messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The stored conversation after the request's leading system messages."""
    lead = 0
    while lead < len(messages) and messages[lead]["role"] == "system":
        lead += 1
    earlier = [{"role": m.role, "content": m.content} for m in history]
    return [*messages[:lead], *earlier, *messages[lead:]]


@dataclass
class Exchange:
    """A request's turn, stored once the answer is complete."""

    store: Store
    session_id: str
    request_id: str
    started_at: datetime
    inputs: list[dict[str, Any]]

    def remember(self, answer: str, model: str, response: str | None = None) -> None:
        """The inputs and the answer (`response`: the Responses API object it was sent as)."""
        records = [
            MessageRecord(
                session_id=self.session_id,
                request_id=self.request_id,
                position=i,
                role=m["role"],
                content=m["content"],
                created_at=self.started_at,
                model=model,
            )
            for i, m in enumerate(self.inputs)
        ]
        records.append(
            MessageRecord(
                session_id=self.session_id,
                request_id=self.request_id,
                position=len(self.inputs),
                role="assistant",
                content=answer,
                created_at=datetime.now(UTC),
                model=model,
                response=response,
            )
        )
        self.store.remember(records)

    def remember_results(self, results: list[ChoiceResult], model: str) -> None:
        if results and results[0].finish_reason in _ANSWERED:
            self.remember(results[0].text, model)

    async def remembering(
        self, outputs: AsyncIterator[list[tuple[int, GenerationOutput]]], model: str
    ) -> AsyncIterator[list[tuple[int, GenerationOutput]]]:
        """Pass a stream through, storing the first choice's answer when it completes."""
        parts: list[str] = []
        async for batch in outputs:
            for index, out in batch:
                if index == 0:
                    parts.append(out.text)
                    if out.finish_reason in _ANSWERED:
                        self.remember("".join(parts), model)
            yield batch


async def open_exchange(
    store: Store | None,
    settings: Settings,
    session_id: str | None,
    history: bool,
    messages: list[dict[str, Any]],
    record: RequestRecord,
) -> tuple[list[dict[str, Any]], Exchange | None]:
    """The messages to render (with the stored history when asked) and the exchange to
    store (None when the request has no session and content is not logged)."""
    if store is None:
        if history:
            raise StoreUnavailable(
                "session_history needs the conversation store", param="session_history"
            )
        return messages, None
    if history and session_id is None:
        raise InvalidRequest(
            "session_history needs a session_id (or an X-Session-ID header)",
            param="session_history",
        )
    if session_id is None and not settings.log_content:
        return messages, None
    exchange = Exchange(
        store,
        session_id or record.request_id,
        record.request_id,
        record.started_at,
        new_inputs(messages),
    )
    if history and session_id is not None:
        messages = with_history(await store.conversation(session_id), messages)
    return messages, exchange
