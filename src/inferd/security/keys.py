"""API keys: made with `secrets`, stored as sha256 hashes only, compared in constant time,
kept in an in-memory cache that is refreshed on create/revoke and every few seconds."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from inferd.errors import Unauthenticated
from inferd.security.principal import Principal
from inferd.storage.records import ApiKeyRecord

KEY_PREFIX = "inferd-"

log = logging.getLogger(__name__)


class KeyStore(Protocol):
    """What keys need from the store (`storage.repository.Repository` has these)."""

    async def add_key(self, record: ApiKeyRecord) -> None: ...

    async def list_keys(self) -> list[ApiKeyRecord]: ...

    async def revoke_key(self, key_id: str) -> bool: ...


class MemoryKeyStore:
    """A KeyStore in memory: for tests, and for a server run without a database."""

    def __init__(self) -> None:
        self._records: dict[str, ApiKeyRecord] = {}

    async def add_key(self, record: ApiKeyRecord) -> None:
        self._records[record.id] = record

    async def list_keys(self) -> list[ApiKeyRecord]:
        return sorted(self._records.values(), key=lambda r: r.created_at)

    async def revoke_key(self, key_id: str) -> bool:
        record = self._records.get(key_id)
        if record is None:
            return False
        if record.revoked_at is None:
            self._records[key_id] = replace(record, revoked_at=datetime.now(UTC))
        return True


def hash_key(secret: str) -> str:
    """Hex sha256 of a secret key: what the store keeps."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


@dataclass(frozen=True)
class NewKey:
    """A key just made: `secret` is shown once and never stored."""

    record: ApiKeyRecord
    secret: str


class KeyRing:
    """The server's view of the keys: verifies a presented key against the cached hashes.

    The cache is refreshed after every create/revoke made through it, and at most every
    `max_age` seconds otherwise (keys made or revoked by `inferd keys` in another process),
    and at most once a second when an unknown key is presented."""

    def __init__(
        self,
        store: KeyStore,
        *,
        max_age: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.max_age = max_age
        self._clock = clock
        self._records: list[ApiKeyRecord] = []
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    # ---- the cache ---------------------------------------------------------------------

    async def refresh(self) -> None:
        async with self._lock:
            await self._load()

    async def _load(self) -> None:
        self._records = await self.store.list_keys()
        self._loaded_at = self._clock()

    def _older_than(self, seconds: float) -> bool:
        return self._loaded_at is None or self._clock() - self._loaded_at >= seconds

    async def _refresh_if_older(self, seconds: float) -> None:
        if self._older_than(seconds):
            async with self._lock:
                if not self._older_than(seconds):  # done meanwhile by another request
                    return
                if self._loaded_at is None:
                    await self._load()  # nothing to fall back on: the error is the answer
                    return
                try:
                    await self._load()
                except Exception as exc:  # the store is down: keep serving the cached keys
                    log.warning("key store unavailable, using cached keys: %s", type(exc).__name__)
                    self._loaded_at = self._clock()

    async def any_keys_now(self) -> bool:
        """Whether any key was ever made (revoked ones count: revoking the last key must not
        switch authentication off), from a cache at most `max_age` seconds old."""
        await self._refresh_if_older(self.max_age)
        return bool(self._records)

    # ---- management --------------------------------------------------------------------

    async def create(
        self,
        name: str,
        *,
        admin: bool = False,
        models: tuple[str, ...] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        max_parallel: int | None = None,
        expires_days: float | None = None,
    ) -> NewKey:
        now = datetime.now(UTC)
        secret = new_secret()
        record = ApiKeyRecord(
            id=new_key_id(),
            name=name,
            key_hash=hash_key(secret),
            admin=admin,
            models=models,
            rpm=rpm,
            tpm=tpm,
            max_parallel=max_parallel,
            created_at=now,
            expires_at=now + timedelta(days=expires_days) if expires_days is not None else None,
            revoked_at=None,
        )
        await self.store.add_key(record)
        await self.refresh()
        return NewKey(record, secret)

    async def revoke(self, key_id: str) -> bool:
        found = await self.store.revoke_key(key_id)
        await self.refresh()
        return found

    async def list(self) -> list[ApiKeyRecord]:
        await self.refresh()
        return list(self._records)

    # ---- verification ------------------------------------------------------------------

    def _match(self, secret: str) -> ApiKeyRecord | None:
        digest = hash_key(secret)
        found = None
        for record in self._records:  # no early exit: the time does not depend on the match
            if hmac.compare_digest(record.key_hash, digest):
                found = record
        return found

    async def verify(self, secret: str) -> Principal:
        """The principal of a presented key; Unauthenticated when it is unknown, revoked or
        expired. The message never quotes the key."""
        await self._refresh_if_older(self.max_age)
        record = self._match(secret)
        if record is None:
            await self._refresh_if_older(1.0)
            record = self._match(secret)
        if record is None:
            raise Unauthenticated("Incorrect API key provided")
        if record.revoked_at is not None:
            raise Unauthenticated("This API key has been revoked")
        if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
            raise Unauthenticated("This API key has expired")
        return Principal.of(record)
