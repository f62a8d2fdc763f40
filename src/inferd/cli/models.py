"""`inferd models`: list, show, pull and remove the models a server would serve.

These commands read the same settings as `inferd serve` (the TOML file, INFERD_* variables)
and go through the same registry and models directory, without loading any model.
"""

import asyncio
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from inferd.config import Settings, load_settings
from inferd.errors import InferdError
from inferd.models import describe
from inferd.models.loading import engine_factory
from inferd.models.registry import ModelEntry, ModelRegistry, RegistryOptions
from inferd.models.spec import specs_from_settings
from inferd.models.store import ModelStore

app = typer.Typer(help="List, show, pull and remove models.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML file with settings")]
DirOpt = Annotated[
    Path | None, typer.Option("--models-dir", help="Models directory (default: the settings')")
]


def _fail(message: str) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def _settings(config: Path | None, models_dir: Path | None) -> Settings:
    flags: dict[str, Any] = {} if models_dir is None else {"models_dir": models_dir}
    try:
        return load_settings(config, **flags)
    except InferdError as exc:
        _fail(exc.message)


def registry_of(settings: Settings) -> ModelRegistry:
    """The registry a server would have, which never loads a model (InferdError for
    settings that cannot be served)."""
    return ModelRegistry(
        specs_from_settings(settings),
        engine_factory(),  # never used: these commands load no model
        default=settings.default_model,
        options=RegistryOptions.from_settings(settings),
        store=ModelStore(settings.models_dir),
    )


def _registry(settings: Settings) -> ModelRegistry:
    try:
        return registry_of(settings)
    except InferdError as exc:
        _fail(exc.message)


def size_text(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            break
    return f"{value:.1f} {unit}"


def _file_size(entry: ModelEntry) -> int:
    try:
        return entry.spec.path.stat().st_size
    except OSError:
        return 0


def _context(entry: ModelEntry) -> str:
    arch = describe.family(entry.metadata)
    return entry.metadata.get(f"{arch}.context_length", "")


@app.command("list")
def list_models(config: ConfigOpt = None, models_dir: DirOpt = None) -> None:
    """Every model the server would serve, with its names and GGUF facts."""
    registry = _registry(_settings(config, models_dir))
    entries = registry.entries()
    asyncio.run(registry.describe(entries))
    table = Table("name", "aliases", "source", "size", "family", "params", "quant", "context")
    for e in entries:
        table.add_row(
            e.spec.name + (" (default)" if e.spec.name == registry.default_name else ""),
            ", ".join(e.spec.aliases),
            e.spec.source,
            size_text(_file_size(e)),
            describe.family(e.metadata) if e.metadata else "[red]unreadable[/red]",
            describe.parameter_size(e.n_params) if e.metadata else "",
            describe.quantization(e.metadata) if e.metadata else "",
            _context(e),
        )
    Console().print(table)


@app.command()
def show(name: str, config: ConfigOpt = None, models_dir: DirOpt = None) -> None:
    """One model: its file and its GGUF metadata."""
    registry = _registry(_settings(config, models_dir))
    try:
        entry = registry.entry(name)
    except InferdError as exc:
        _fail(exc.message)
    asyncio.run(registry.describe([entry]))
    console = Console()
    console.print(f"[bold]{entry.spec.name}[/bold]", highlight=False)
    rows = {
        "aliases": ", ".join(entry.spec.aliases) or "-",
        "source": entry.spec.source,
        "file": str(entry.spec.path),
        "size": size_text(_file_size(entry)),
    }
    if entry.metadata:
        rows.update(
            family=describe.family(entry.metadata),
            parameters=f"{entry.n_params} ({describe.parameter_size(entry.n_params)})",
            quantization=describe.quantization(entry.metadata),
            vocabulary=str(entry.array_lengths.get("tokenizer.ggml.tokens", "")),
        )
    else:
        rows["error"] = "not a readable GGUF file"
    for key, value in rows.items():
        console.print(f"  {key:<14}{value}", highlight=False)
    if entry.metadata:
        console.print("  metadata:")
        for meta_key, meta_value in describe.model_info(entry.metadata, entry.n_params).items():
            console.print(
                f"    {meta_key:<44}{str(meta_value)[:80]}", highlight=False, markup=False
            )


@app.command()
def pull(
    source: Annotated[str, typer.Argument(help="A .gguf path or an http(s) URL")],
    name: Annotated[
        str | None, typer.Option("--name", help="Model name (default: the file's stem)")
    ] = None,
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Expected SHA-256 of the file")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file")] = False,
    config: ConfigOpt = None,
    models_dir: DirOpt = None,
) -> None:
    """Copy or download a GGUF file into the models directory (checked, then renamed)."""
    from inferd.models.pull import default_name
    from inferd.models.pull import pull as do_pull

    settings = _settings(config, models_dir)
    store = ModelStore(settings.models_dir)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    err = Console(stderr=True)
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(name or default_name(source), total=None)

        def advance(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        try:
            pulled = do_pull(source, store, name=name, sha256=sha256, force=force, progress=advance)
        except InferdError as exc:
            progress.stop()
            _fail(exc.message)
    Console().print(
        f"pulled {pulled.name}: {pulled.path} ({size_text(pulled.size)}, sha256 {pulled.sha256})",
        highlight=False,
    )


@app.command()
def rm(name: str, config: ConfigOpt = None, models_dir: DirOpt = None) -> None:
    """Remove a model file of the models directory, or an alias made by a copy."""
    registry = _registry(_settings(config, models_dir))
    try:
        what = asyncio.run(registry.delete(name))
    except InferdError as exc:
        _fail(exc.message)
    Console().print(f"removed {what} {name}", highlight=False)
