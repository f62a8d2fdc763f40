"""`inferd ps`, `inferd stop` and `inferd cp`: Ollama's habits, through a running server's API
(the server `inferd run` talks to: INFERD_HOST, INFERD_API_KEY)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from inferd.cli.client import (
    Client,
    ServerError,
    Unreachable,
    is_local,
    model_path,
    server_url,
)
from inferd.cli.models import registry_of, size_text
from inferd.config import Settings, load_settings
from inferd.errors import InferdError

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML file with settings")]


def _fail(message: str) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except InferdError as exc:
        _fail(exc.message)


def until(expires_at: str, now: datetime) -> str:
    """When a loaded model is unloaded, as `ollama ps` says it."""
    left = (datetime.fromisoformat(expires_at.replace("Z", "+00:00")) - now).total_seconds()
    if left > 10 * 365 * 86400:
        return "Forever"
    if left < 1:
        return "Stopping..."
    for unit, seconds in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if left >= seconds:
            n = int(left // seconds)
            return f"{n} {unit}{'s' if n > 1 else ''} from now"
    return "Stopping..."  # unreachable: left >= 1


def state(model: dict[str, Any], now: datetime) -> str:
    """A loaded model's time left; else what the server is doing with it (`converting 42%`,
    `loading`)."""
    if model.get("expires_at"):
        return until(model["expires_at"], now)
    p = model.get("progress")
    status = str(model.get("status", "loading"))
    return status if not p else f"{p['phase']} {p['fraction']:.0%}"


def ps(config: ConfigOpt = None) -> None:
    """The models the server has loaded, and until when; those it is converting or loading,
    and how far."""
    with Client(server_url(_settings(config))) as client:
        try:
            running: dict[str, Any] = client.call("GET", "/api/ps")
        except ServerError as exc:
            _fail(exc.message)
    table = Table("NAME", "ID", "SIZE", "CONTEXT", "UNTIL", box=None)
    now = datetime.now(UTC)
    for m in running.get("models", []):
        table.add_row(
            m["name"],
            m.get("digest", "")[:12],
            size_text(m.get("size", 0)),
            str(m.get("context_length") or ""),
            state(m, now),
        )
    Console().print(table)


def stop(
    model: Annotated[str, typer.Argument(help="A loaded model")], config: ConfigOpt = None
) -> None:
    """Unload a model from the server now (it loads again on its next use)."""
    with Client(server_url(_settings(config))) as client:
        try:
            info = client.call("GET", f"/models/{model_path(model)}")
            if info["status"] != "ready":
                _fail(f"model '{info['name']}' is not loaded ({info['status']})")
            client.call("DELETE", f"/models/{model_path(model)}/unload")
        except ServerError as exc:
            _fail(exc.message)
    Console().print(f"stopped {info['name']}", highlight=False)


def cp(
    source: Annotated[str, typer.Argument(help="A model")],
    destination: Annotated[str, typer.Argument(help="Its new name")],
    config: ConfigOpt = None,
) -> None:
    """Give a model another name, kept in the models directory (saved directly when no
    server runs here)."""
    settings = _settings(config)
    with Client(server_url(settings)) as client:
        try:
            client.call("POST", "/api/copy", {"source": source, "destination": destination})
        except Unreachable as exc:
            if not is_local(client.url):
                _fail(exc.message)
            try:
                registry_of(settings).copy(source, destination)
            except InferdError as exc:
                _fail(exc.message)
        except ServerError as exc:
            _fail(exc.message)
    Console().print(f"copied '{source}' to '{destination}'", highlight=False)
