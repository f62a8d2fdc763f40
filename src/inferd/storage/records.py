"""Plain records the store reads and writes. No SQLAlchemy here: other layers import these."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


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
