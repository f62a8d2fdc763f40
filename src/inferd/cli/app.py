"""`inferd` commands."""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from inferd import __version__
from inferd.cli.bench import bench
from inferd.cli.db import db_app, stats
from inferd.cli.flags import settings_flags
from inferd.config import ModelConfig, load_settings
from inferd.errors import ConfigError
from inferd.models.spec import BUNDLED_ALIASES, BUNDLED_NAME

app = typer.Typer(
    name="inferd",
    help="A local-first LLM inference server: continuous batching over llama.cpp.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


app.command()(bench)
app.command()(stats)
app.add_typer(db_app, name="db")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"inferd {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version"),
    ] = False,
) -> None:
    """inferd: serve GGUF models over the OpenAI API from one process."""


def _model_configs(models: list[str]) -> list[ModelConfig]:
    out = []
    for m in models:
        if m in (BUNDLED_NAME, *BUNDLED_ALIASES):
            continue  # the bundled model is what an empty list serves
        path = Path(m).expanduser()
        if not path.is_file():
            raise ConfigError(f"--model {m}: no such file (give the path of a .gguf file)")
        out.append(ModelConfig(path=path.resolve()))
    return out


@app.command()
@settings_flags
def serve(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="A .gguf file to serve (repeatable); default: bundled"),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML file with settings")
    ] = None,
    *,
    flags: dict[str, Any],
    model_flags: dict[str, Any],
) -> None:
    """Start the HTTP server."""
    from inferd.api.app import create_app
    from inferd.cli import server
    from inferd.models.loading import llamacpp_loader
    from inferd.models.registry import ModelRegistry
    from inferd.models.spec import specs_from_settings
    from inferd.observability.logging import configure_logging

    err = Console(stderr=True)
    try:
        if model:
            flags["models"] = _model_configs(model)
        settings = load_settings(config, **flags)
        specs = specs_from_settings(settings, model_flags)
        registry = ModelRegistry(
            specs, llamacpp_loader(verbose=settings.llama_verbose), default=settings.default_model
        )
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    ollama = f" and :{settings.ollama_port} (Ollama)" if settings.ollama_port else ""
    err.print(
        f"inferd {__version__}: serving {', '.join(s.name for s in specs)} "
        f"on http://{settings.host}:{settings.port}{ollama}",
        highlight=False,
    )
    server.serve(create_app(settings, registry, open_store=True), settings)
