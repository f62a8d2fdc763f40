"""The store as the rest of inferd sees it: open it, hand it records, ask it questions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from inferd.config import Settings
from inferd.errors import StoreUnavailable
from inferd.storage import db
from inferd.storage.records import MessageRecord, SessionRecord, UsageRecord, UsageStats
from inferd.storage.repository import Repository
from inferd.storage.writer import UsageWriter

log = logging.getLogger(__name__)


def database_url(settings: Settings) -> str:
    """The configured URL, else the SQLite file in the data directory."""
    return settings.database_url or db.sqlite_url(settings.data_dir / "inferd.db")


def spool_path(settings: Settings) -> Path:
    return settings.spool_path or settings.data_dir / "usage-spool.jsonl"


class Store:
    """Usage records and conversations. Writes go through the background writer (never
    waiting on the database); reads wait for pending writes first, so a conversation read
    right after an answer includes it."""

    def __init__(
        self,
        engine: AsyncEngine,
        spool: Path,
        *,
        usage_retention_days: float | None = None,
        content_retention_days: float | None = None,
        retention_interval: float = 3600.0,
        flush_interval: float = 0.25,
        retry_interval: float = 1.0,
    ) -> None:
        self.engine = engine
        self.repository = Repository(engine)
        self.writer = UsageWriter(
            self.repository,
            spool,
            interval=flush_interval,
            retry_interval=retry_interval,
            ready=self._ready,
        )
        self._usage_days = usage_retention_days
        self._content_days = content_retention_days
        self._retention_interval = retention_interval
        self._retention: asyncio.Task[None] | None = None
        self.migrated = False
        self._migrate_failures = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(
            db.create_engine(database_url(settings)),
            spool_path(settings),
            usage_retention_days=settings.usage_retention_days,
            content_retention_days=settings.content_retention_days,
            retention_interval=settings.retention_interval,
        )

    async def start(self) -> None:
        """Migrate (if the database answers; else the writer keeps records spooled), replay
        what an earlier process spooled, and start the writer and the retention task. With a
        retention, the first pass runs here when the database answered (before any record of
        this process exists), then every `retention_interval` seconds."""
        await self.migrate()
        self.writer.start()
        if self._usage_days is not None or self._content_days is not None:
            if self.migrated:
                await self._retain_once()
            self._retention = asyncio.create_task(self._retain(), name="inferd-retention")

    async def migrate(self) -> bool:
        try:
            await db.upgrade(self.engine)
        except Exception as exc:
            if not self._migrate_failures:
                log.error("the database is unavailable (%s); usage records are spooled", exc)
            self._migrate_failures += 1
            return False
        self.migrated = True
        return True

    async def _ready(self) -> bool:
        return self.migrated or await self.migrate()

    async def close(self, wait: float = 5.0) -> None:
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
        await self.writer.close(wait)
        await self.engine.dispose()

    # ---- writes (never wait on the database) -------------------------------------------------

    def record(self, usage: UsageRecord) -> None:
        self.writer.submit(usage)

    def remember(self, messages: list[MessageRecord]) -> None:
        for m in messages:
            self.writer.submit(m)

    # ---- reads -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        """Pending writes first; a database that does not answer is a StoreUnavailable."""
        await self.writer.flush()
        try:
            yield
        except (SQLAlchemyError, OSError) as exc:
            log.warning("the database did not answer: %s", exc)
            raise StoreUnavailable("the usage and conversation database is unavailable") from None

    async def conversation(self, session_id: str, limit: int | None = None) -> list[MessageRecord]:
        async with self._reading():
            return await self.repository.conversation(session_id, limit)

    async def delete_conversation(self, session_id: str) -> int:
        async with self._reading():
            return await self.repository.delete_conversation(session_id)

    async def sessions(self, namespace: str, limit: int) -> list[SessionRecord]:
        async with self._reading():
            return await self.repository.sessions(namespace, limit)

    async def rename_session(
        self, namespace: str, session_id: str, title: str | None
    ) -> SessionRecord | None:
        async with self._reading():
            return await self.repository.rename_session(namespace, session_id, title)

    async def stats(self, hours: float) -> UsageStats:
        async with self._reading():
            return await self.repository.stats(hours)

    async def usage_records(self) -> list[UsageRecord]:
        async with self._reading():
            return await self.repository.usage_records()

    # ---- retention ---------------------------------------------------------------------------

    async def apply_retention(self, now: datetime | None = None) -> tuple[int, int]:
        """Delete usage and conversation content older than their retention; the counts."""
        now = now or datetime.now(UTC)
        usage_gone = content_gone = 0
        if self._usage_days is not None:
            cutoff = now - timedelta(days=self._usage_days)
            usage_gone = await self.repository.delete_usage_before(cutoff)
        if self._content_days is not None:
            cutoff = now - timedelta(days=self._content_days)
            content_gone = await self.repository.delete_messages_before(cutoff)
        return usage_gone, content_gone

    async def _retain(self) -> None:
        while True:
            await asyncio.sleep(self._retention_interval)
            await self._retain_once()

    async def _retain_once(self) -> None:
        try:
            usage_gone, content_gone = await self.apply_retention()
        except Exception as exc:
            log.warning("retention failed, trying again later: %s", exc)
            return
        if usage_gone or content_gone:
            log.info("retention: deleted %d usage records, %d messages", usage_gone, content_gone)
