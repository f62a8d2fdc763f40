"""Every SQL statement of the store. Works on SQLite and PostgreSQL alike."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from inferd.storage.records import (
    ApiKeyRecord,
    GroupStats,
    MessageRecord,
    SessionRecord,
    UsageRecord,
    UsageStats,
    UsageStatus,
)
from inferd.storage.tables import api_keys, messages, sessions, usage

PREVIEW_LENGTH = 100  # characters of a session's first message that a list shows


class Repository:
    """The store's queries over one async engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def _insert(self, table: sa.Table) -> Any:
        """INSERT that can skip rows already there (ON CONFLICT DO NOTHING)."""
        if self.engine.dialect.name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    # ---- api keys (the interface the security layer depends on) ---------------------------

    async def add_key(self, record: ApiKeyRecord) -> None:
        row = asdict(record)
        row["models"] = list(record.models) if record.models is not None else None
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(api_keys).values(**row))

    async def list_keys(self) -> list[ApiKeyRecord]:
        """All keys, revoked ones included, oldest first."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
            )
            return [
                ApiKeyRecord(
                    **{
                        **r._asdict(),
                        "models": tuple(r.models) if r.models is not None else None,
                    }
                )
                for r in rows
            ]

    async def revoke_key(self, key_id: str) -> bool:
        """Mark a key revoked (the first revocation time stays). False when unknown."""
        now = datetime.now(UTC)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == key_id)
                .values(revoked_at=sa.func.coalesce(api_keys.c.revoked_at, now))
            )
            return bool(result.rowcount)

    # ---- writes from the background writer -------------------------------------------------

    async def write_batch(
        self, records: Sequence[UsageRecord], conversation: Sequence[MessageRecord]
    ) -> None:
        """Write usage records and messages in one transaction. Rows already present (same
        request id; same request id and position) are skipped, so a replay adds nothing twice."""
        async with self.engine.begin() as conn:
            if records:
                rows = [{**asdict(r), "status": str(r.status)} for r in records]
                stmt = self._insert(usage).on_conflict_do_nothing(index_elements=["request_id"])
                await conn.execute(stmt, rows)
            if conversation:
                await self._touch_sessions(conn, conversation)
                stmt = self._insert(messages).on_conflict_do_nothing(
                    index_elements=["request_id", "position"]
                )
                await conn.execute(stmt, [asdict(m) for m in conversation])

    async def _touch_sessions(
        self, conn: AsyncConnection, conversation: Iterable[MessageRecord]
    ) -> None:
        latest: dict[str, datetime] = {}
        for m in conversation:
            latest[m.session_id] = max(latest.get(m.session_id, m.created_at), m.created_at)
        stmt = self._insert(sessions)
        stmt = stmt.on_conflict_do_update(
            index_elements=["id"], set_={"updated_at": stmt.excluded.updated_at}
        )
        await conn.execute(
            stmt, [{"id": s, "created_at": t, "updated_at": t} for s, t in latest.items()]
        )

    # ---- conversations ---------------------------------------------------------------------

    async def conversation(self, session_id: str, limit: int | None = None) -> list[MessageRecord]:
        """The session's last `limit` messages (all when None), oldest first."""
        query = (
            sa.select(messages)
            .where(messages.c.session_id == session_id)
            .order_by(
                messages.c.created_at.desc(), messages.c.position.desc(), messages.c.id.desc()
            )
        )
        if limit is not None:
            query = query.limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            MessageRecord(
                session_id=r.session_id,
                request_id=r.request_id,
                position=r.position,
                role=r.role,
                content=r.content,
                created_at=r.created_at,
                model=r.model,
                response=r.response,
            )
            for r in reversed(rows)
        ]

    async def delete_conversation(self, session_id: str) -> int:
        """Delete a session and its messages; how many messages there were."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.delete(messages).where(messages.c.session_id == session_id)
            )
            await conn.execute(sa.delete(sessions).where(sessions.c.id == session_id))
            return max(result.rowcount, 0)

    async def sessions(self, namespace: str, limit: int) -> list[SessionRecord]:
        """The `limit` most recently active sessions stored as `namespace` + an id without
        `/` (a key's namespace is `key_id/`; "" holds the sessions of requests made without
        a key), newest first."""
        summaries = self._summaries().where(
            sessions.c.id.startswith(namespace, autoescape=True),
            ~sa.func.substr(sessions.c.id, len(namespace) + 1).contains("/", autoescape=True),
        )
        query = summaries.order_by(sessions.c.updated_at.desc(), sessions.c.id).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_session(r, namespace) for r in rows]

    async def rename_session(
        self, namespace: str, session_id: str, title: str | None
    ) -> SessionRecord | None:
        """Set (None: clear) the title of session `session_id` of `namespace`; the session,
        or None when there is none."""
        stored = namespace + session_id
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(sessions).where(sessions.c.id == stored).values(title=title)
            )
            if not result.rowcount:
                return None
            row = (await conn.execute(self._summaries().where(sessions.c.id == stored))).one()
        return _session(row, namespace)

    @staticmethod
    def _summaries() -> sa.Select[Any]:
        """Sessions with their message count and the start of their first user message."""
        first_user = (
            sa.select(sa.func.substr(messages.c.content, 1, PREVIEW_LENGTH))
            .where(messages.c.session_id == sessions.c.id, messages.c.role == "user")
            .order_by(messages.c.created_at, messages.c.position, messages.c.id)
            .limit(1)
            .scalar_subquery()
        )
        count = (
            sa.select(sa.func.count())
            .where(messages.c.session_id == sessions.c.id)
            .scalar_subquery()
        )
        return sa.select(
            sessions.c.id,
            sessions.c.title,
            sessions.c.created_at,
            sessions.c.updated_at,
            first_user.label("preview"),
            count.label("messages"),
        )

    # ---- usage -----------------------------------------------------------------------------

    async def usage_records(self, since: datetime | None = None) -> list[UsageRecord]:
        query = sa.select(usage).order_by(usage.c.created_at, usage.c.id)
        if since is not None:
            query = query.where(usage.c.created_at >= since)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        out = []
        for r in rows:
            row = {k: v for k, v in r._asdict().items() if k != "id"}
            out.append(UsageRecord(**{**row, "status": UsageStatus(row["status"])}))
        return out

    async def stats(self, hours: float, *, now: datetime | None = None) -> UsageStats:
        """Totals and timings of the last `hours`, overall and by model, dialect and key."""
        since = (now or datetime.now(UTC)) - timedelta(hours=hours)
        cols = [
            usage.c.model,
            usage.c.dialect,
            usage.c.key_id,
            usage.c.status,
            usage.c.prompt_tokens,
            usage.c.cached_tokens,
            usage.c.completion_tokens,
            usage.c.time_to_first_token,
            usage.c.duration,
        ]
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(*cols).where(usage.c.created_at >= since))).all()
        groups: dict[str, dict[str, list[Any]]] = {"model": {}, "dialect": {}, "key": {}}
        for r in rows:
            groups["model"].setdefault(r.model or "", []).append(r)
            groups["dialect"].setdefault(r.dialect, []).append(r)
            groups["key"].setdefault(r.key_id or "", []).append(r)
        return UsageStats(
            hours=hours,
            since=since,
            total=_aggregate(rows),
            by_model={k: _aggregate(v) for k, v in sorted(groups["model"].items())},
            by_dialect={k: _aggregate(v) for k, v in sorted(groups["dialect"].items())},
            by_key={k: _aggregate(v) for k, v in sorted(groups["key"].items())},
        )

    # ---- retention -------------------------------------------------------------------------

    async def delete_usage_before(self, cutoff: datetime) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.delete(usage).where(usage.c.created_at < cutoff))
            return max(result.rowcount, 0)

    async def delete_messages_before(self, cutoff: datetime) -> int:
        """Delete older messages, then the sessions left without any."""
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.delete(messages).where(messages.c.created_at < cutoff))
            has_messages = sa.exists().where(messages.c.session_id == sessions.c.id)
            await conn.execute(
                sa.delete(sessions).where(sessions.c.updated_at < cutoff, ~has_messages)
            )
            return max(result.rowcount, 0)


def _session(row: Any, namespace: str) -> SessionRecord:
    return SessionRecord(
        session_id=row.id[len(namespace) :],
        title=row.title,
        preview=row.preview or "",
        messages=row.messages,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def _aggregate(rows: Sequence[Any]) -> GroupStats:
    ttft = [r.time_to_first_token for r in rows if r.time_to_first_token is not None]
    durations = [r.duration for r in rows]
    return GroupStats(
        requests=len(rows),
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        cached_tokens=sum(r.cached_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        errors=sum(r.status == UsageStatus.ERROR for r in rows),
        cancelled=sum(r.status == UsageStatus.CANCELLED for r in rows),
        rejected=sum(r.status == UsageStatus.REJECTED for r in rows),
        ttft_avg=statistics.fmean(ttft) if ttft else None,
        ttft_p95=_p95(ttft),
        duration_avg=statistics.fmean(durations) if durations else None,
        duration_p95=_p95(durations),
    )
