"""`inferd db upgrade` and `inferd stats`: the store from the terminal."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
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
    print_stats(Console(), body)


# (header, field): the counts, then the timings (seconds), each a table of its own so that
# both fit an 80-column terminal with room for large numbers
_COUNTS = (
    ("requests", "requests"),
    ("prompt", "prompt_tokens"),
    ("cached", "cached_tokens"),
    ("completion", "completion_tokens"),
    ("errors", "errors"),
    ("cancelled", "cancelled"),
    ("rejected", "rejected"),
)
_TIMINGS = (
    ("ttft avg", "ttft_avg"),
    ("ttft p95", "ttft_p95"),
    ("duration avg", "duration_avg"),
    ("duration p95", "duration_p95"),
)


def print_stats(out: Console, body: dict[str, Any]) -> None:
    """The usage of /v1/stats's body as tables: per group (total, by model, dialect, key)
    the counts and the timings. Cells fold rather than cut: a number is never shortened."""
    out.print(
        f"Usage over the last {body['hours']:g} hours (since {body['since']})", highlight=False
    )
    for title, groups in [
        ("total", {"all": body["total"]}),
        ("by model", body["by_model"]),
        ("by dialect", body["by_dialect"]),
        ("by key", body["by_key"]),
    ]:
        for suffix, columns, cell in (
            ("", _COUNTS, str),
            (", seconds", _TIMINGS, _seconds),
        ):
            table = Table(
                title=f"{title}{suffix}",
                title_justify="left",
                box=box.SIMPLE_HEAD,
                pad_edge=False,
                collapse_padding=True,
            )
            table.add_column("", overflow="fold")  # a long model name wraps, numbers never
            for header, _ in columns:
                table.add_column(header, justify="right", no_wrap=True, overflow="fold")
            for name, g in groups.items():
                table.add_row(name, *(cell(g[field]) for _, field in columns))
            out.print(table)
