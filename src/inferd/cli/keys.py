"""`inferd keys create | list | revoke`: API keys in the store (hashes only)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from inferd.config import Settings, load_settings
from inferd.errors import ConfigError
from inferd.security.keys import KeyRing
from inferd.storage.records import ApiKeyRecord

keys_app = typer.Typer(name="keys", help="Create, list and revoke API keys.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML file with settings")]
DatabaseOpt = Annotated[
    str | None,
    typer.Option("--database-url", help="Database holding the keys (default: as `serve`)"),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Directory of the default SQLite database")
]


@contextlib.asynccontextmanager
async def open_keys(settings: Settings) -> AsyncIterator[KeyRing]:
    """A key ring over the configured store, migrated to the current schema."""
    from inferd.storage import db
    from inferd.storage.repository import Repository
    from inferd.storage.store import database_url

    engine = db.create_engine(database_url(settings))
    try:
        await db.upgrade(engine)
        yield KeyRing(Repository(engine), max_age=settings.key_cache_seconds)
    finally:
        await engine.dispose()


def _settings(config: Path | None, database: str | None, data_dir: Path | None) -> Settings:
    flags: dict[str, Any] = {}
    if database is not None:
        flags["database_url"] = database
    if data_dir is not None:
        flags["data_dir"] = data_dir
    return load_settings(config, **flags)


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(2)


def _csv(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise typer.BadParameter("expected model names separated by commas")
    return names


def _when(t: datetime | None) -> str:
    return t.isoformat(timespec="seconds") if t is not None else ""


def _as_dict(r: ApiKeyRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "admin": r.admin,
        "models": list(r.models) if r.models is not None else None,
        "rpm": r.rpm,
        "tpm": r.tpm,
        "max_parallel": r.max_parallel,
        "created_at": _when(r.created_at),
        "expires_at": _when(r.expires_at) or None,
        "revoked_at": _when(r.revoked_at) or None,
    }


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        raise _fail(exc.message) from None


@keys_app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for")],
    admin: Annotated[bool, typer.Option("--admin", help="May use management routes")] = False,
    models: Annotated[
        str | None, typer.Option("--models", help="Only these models (names or aliases: a,b)")
    ] = None,
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute")] = None,
    max_parallel: Annotated[
        int | None, typer.Option("--max-parallel", min=1, help="Requests at once")
    ] = None,
    expires: Annotated[
        float | None, typer.Option("--expires", min=0, help="Expires after this many days")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {id, key} as JSON")] = False,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Make a key and print it once: only its hash is stored."""
    allowed = _csv(models)

    async def run() -> tuple[str, str]:
        async with open_keys(_settings(config, database, data_dir)) as ring:
            new = await ring.create(
                name,
                admin=admin,
                models=allowed,
                rpm=rpm,
                tpm=tpm,
                max_parallel=max_parallel,
                expires_days=expires,
            )
            return new.record.id, new.secret

    key_id, secret = _run(run())
    if as_json:
        print(json.dumps({"id": key_id, "key": secret}))
        return
    err = Console(stderr=True)
    err.print(f"created {key_id} ({name}); the key is shown only this once:", highlight=False)
    print(secret)


@keys_app.command("list")
def list_keys(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Every key with its limits (never the key itself)."""

    async def run() -> list[ApiKeyRecord]:
        async with open_keys(_settings(config, database, data_dir)) as ring:
            return await ring.list()

    records: list[ApiKeyRecord] = _run(run())
    if as_json:
        print(json.dumps([_as_dict(r) for r in records], indent=2))
        return
    table = Table("id", "name", "admin", "models", "rpm", "tpm", "parallel", "expires", "status")
    now = datetime.now().astimezone()
    for r in records:
        status = "revoked" if r.revoked_at else "active"
        if status == "active" and r.expires_at is not None and r.expires_at <= now:
            status = "expired"
        table.add_row(
            r.id,
            r.name,
            "yes" if r.admin else "",
            ",".join(r.models) if r.models is not None else "all",
            *(str(v) if v is not None else "" for v in (r.rpm, r.tpm, r.max_parallel)),
            _when(r.expires_at),
            status,
        )
    console = Console()
    if not console.is_terminal:  # piped: do not fold ids to 80 columns
        console = Console(width=200)
    console.print(table)


@keys_app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...), from `inferd keys list`")],
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke a key: it stops working within key_cache_seconds on running servers."""

    async def run() -> bool:
        async with open_keys(_settings(config, database, data_dir)) as ring:
            return await ring.revoke(key_id)

    if not _run(run()):
        raise _fail(f"no key with id {key_id}")
    Console(stderr=True).print(f"revoked {key_id}", highlight=False)
