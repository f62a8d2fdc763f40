"""`inferd db upgrade` and `inferd stats`: the store from the terminal."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from inferd.config import load_settings
from inferd.errors import ConfigError

db_app = typer.Typer(help="The usage and conversation database.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML file with settings")
]
UrlOption = Annotated[
    str | None,
    typer.Option("--database-url", help="Database URL (default: the configured one)"),
]


def _url(config: Path | None, database_url: str | None) -> str:
    from inferd.storage.store import database_url as configured

    overrides = {"database_url": database_url} if database_url else {}
    return configured(load_settings(config, **overrides))


@db_app.command()
def upgrade(config: ConfigOption = None, database_url: UrlOption = None) -> None:
    """Create or migrate the database's tables to this version's schema."""
    from inferd.storage import db

    err = Console(stderr=True)
    try:
        revision = db.upgrade_url(_url(config, database_url))
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from None
    except Exception as exc:
        err.print(f"[red]error:[/red] the database could not be migrated: {exc}", highlight=False)
        raise typer.Exit(1) from None
    typer.echo(f"database at revision {revision}")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def stats(
    hours: Annotated[float, typer.Option("--hours", min=0.001, help="Look back this far")] = 24,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON of /v1/stats")] = False,
    config: ConfigOption = None,
    database_url: UrlOption = None,
) -> None:
    """Requests, tokens and timings of the last hours, by model, dialect and key."""
    from inferd.api.stats import stats_body
    from inferd.storage import db
    from inferd.storage.repository import Repository

    err = Console(stderr=True)

    async def read() -> object:
        engine = db.create_engine(_url(config, database_url))
        try:
            await db.upgrade(engine)
            return await Repository(engine).stats(hours)
        finally:
            await engine.dispose()

    try:
        body = stats_body(asyncio.run(read()))  # type: ignore[arg-type]
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from None
    except Exception as exc:
        err.print(f"[red]error:[/red] the database could not be read: {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    out = Console()
    out.print(f"Usage over the last {hours:g} hours (since {body['since']})", highlight=False)
    for title, groups in [
        ("total", {"all": body["total"]}),
        ("by model", body["by_model"]),
        ("by dialect", body["by_dialect"]),
        ("by key", body["by_key"]),
    ]:
        table = Table(title=title, title_justify="left")
        for col in (
            "",
            "requests",
            "prompt",
            "cached",
            "completion",
            "errors",
            "cancelled",
            "rejected",
            "ttft avg",
            "ttft p95",
            "duration avg",
            "duration p95",
        ):
            table.add_column(col, justify="left" if not col else "right")
        for name, g in groups.items():
            table.add_row(
                name,
                str(g["requests"]),
                str(g["prompt_tokens"]),
                str(g["cached_tokens"]),
                str(g["completion_tokens"]),
                str(g["errors"]),
                str(g["cancelled"]),
                str(g["rejected"]),
                _seconds(g["ttft_avg"]),
                _seconds(g["ttft_p95"]),
                _seconds(g["duration_avg"]),
                _seconds(g["duration_p95"]),
            )
        out.print(table)
