"""Plain records the store reads and writes. No SQLAlchemy here: other layers import these."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class UsageStatus(enum.StrEnum):
    OK = "ok"
    LENGTH = "length"  # a choice hit max_tokens or the context window
    CANCELLED = "cancelled"  # the client went away, or the server stopped the request
    ERROR = "error"
    REJECTED = "rejected"  # refused before generating (bad request, full, not ready, limit)


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str  # public id, e.g. "key_3f9a1c2b7d4e"
    name: str
    key_hash: str  # hex sha256 of the secret key; the secret itself is never stored
    admin: bool
    models: tuple[str, ...] | None  # None = every model
    rpm: int | None
    tpm: int | None
    max_parallel: int | None
    created_at: datetime  # timezone-aware UTC
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class UsageRecord:
    """One admitted request's usage. Never holds prompt or answer text."""

    request_id: str
    dialect: str
    route: str
    status: UsageStatus
    created_at: datetime  # timezone-aware UTC, when the request arrived
    duration: float  # seconds, arrival to the end of the response
    http_status: int = 200
    key_id: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float | None = None  # seconds
    client: str | None = None


@dataclass(frozen=True)
class MessageRecord:
    """One message of a conversation. `position` orders the messages of one request."""

    session_id: str
    request_id: str
    position: int
    role: str
    content: str
    created_at: datetime
    model: str | None = None
    # a Responses API answer: the response object as it was sent (JSON text), which
    # GET /v1/responses/{id} returns as it was (output items, usage, status)
    response: str | None = None


TITLE_LENGTH = 200  # characters of a conversation's title


@dataclass(frozen=True)
class SessionRecord:
    """A stored conversation, as a list shows it. `session_id` is the id its owner uses
    (without the namespace it is stored under)."""

    session_id: str
    title: str | None  # set by a rename; None: never named
    preview: str  # the start of its first user message ("" when it has none)
    messages: int
    created_at: datetime
    updated_at: datetime  # its last message


@dataclass(frozen=True)
class GroupStats:
    """Aggregates over the usage records of one group (a model, a dialect, a key, or all)."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cancelled: int = 0
    rejected: int = 0
    ttft_avg: float | None = None
    ttft_p95: float | None = None
    duration_avg: float | None = None
    duration_p95: float | None = None


@dataclass(frozen=True)
class UsageStats:
    hours: float
    since: datetime
    total: GroupStats
    by_model: dict[str, GroupStats] = field(default_factory=dict)
    by_dialect: dict[str, GroupStats] = field(default_factory=dict)
    by_key: dict[str, GroupStats] = field(default_factory=dict)
