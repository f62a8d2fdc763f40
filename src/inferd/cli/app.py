"""`inferd` commands."""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from inferd import __version__
from inferd.cli.bench import bench
from inferd.cli.db import db_app, stats
from inferd.cli.flags import settings_flags
from inferd.cli.keys import keys_app
from inferd.cli.models import app as models_app
from inferd.cli.models import list_models, pull, rm, show
from inferd.cli.remote import cp, ps, stop
from inferd.cli.run import run
from inferd.config import ModelConfig, load_settings
from inferd.errors import ConfigError, InferdError
from inferd.models import checkpoint
from inferd.models.hf_cache import is_hf_spec
from inferd.models.spec import BUNDLED_ALIASES, BUNDLED_NAME

app = typer.Typer(
    name="inferd",
    help="A local-first LLM inference server: continuous batching over llama.cpp.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


app.command()(run)
# Ollama's habits at the top level, beside the `models` group
app.command("list")(list_models)
app.command()(ps)
app.command()(show)
app.command()(pull)
app.command()(rm)
app.command()(cp)
app.command()(stop)
app.command()(bench)
app.add_typer(keys_app)
app.add_typer(models_app, name="models")
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
        if not path.exists() and (is_hf_spec(m) or checkpoint.find(m) is not None):
            out.append(ModelConfig(path=Path(m)))  # resolved in the Hugging Face cache
            continue
        if not (path.is_file() or checkpoint.is_checkpoint_dir(path)):
            raise ConfigError(
                f"--model {m}: no such file (give the path of a .gguf file or of a Hugging "
                "Face checkpoint folder, or org/repo:file.gguf or org/repo from the Hugging "
                "Face cache)"
            )
        out.append(ModelConfig(path=path.resolve()))
    return out


@app.command()
@settings_flags
def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="A .gguf file or Hugging Face checkpoint (a folder, or org/repo in the HF "
            "cache) to serve (repeatable); default: bundled",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML file with settings")
    ] = None,
    *,
    flags: dict[str, Any],
    model_flags: dict[str, Any],
) -> None:
    """Start the HTTP server."""
    from inferd.cli import server
    from inferd.cli.allocator import configure_malloc
    from inferd.cli.launch import build
    from inferd.observability.logging import configure_logging

    configure_malloc()  # before the server's threads start
    err = Console(stderr=True)
    try:
        if model:
            flags["models"] = _model_configs(model)
        settings = load_settings(config, **flags)
        launch = build(settings, model_flags)
        server.check_exposure(settings, auth=launch.auth)
        server.tls_options(settings)
    except InferdError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    ollama = f" and :{settings.ollama_port} (Ollama)" if settings.ollama_port else ""
    scheme = "https" if settings.ssl_certfile else "http"
    names = ", ".join(e.spec.name for e in launch.registry.entries())
    err.print(
        f"inferd {__version__}: serving {names} "
        f"on {scheme}://{settings.host}:{settings.port}{ollama}"
        + ("" if launch.auth else " (no API keys: authentication off)"),
        highlight=False,
    )
    server.serve(launch.app, settings, cleanup=(launch.store.engine.dispose,))
