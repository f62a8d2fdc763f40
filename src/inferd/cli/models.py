"""`inferd models`: list, show, pull and remove the models a server would serve.

These commands read the same settings as `inferd serve` (the TOML file, INFERD_* variables)
and go through the same registry and models directory, without loading any model.
"""

import asyncio
import contextlib
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from inferd.config import Settings, load_settings, quant_type
from inferd.errors import InferdError, ModelNotFound
from inferd.models import describe
from inferd.models.converting import DEFAULT_QUANT
from inferd.models.loading import convert_cache, engine_factory
from inferd.models.progress import LoadProgress, ProgressCallback
from inferd.models.pull import Pulled
from inferd.models.registry import ModelEntry, ModelRegistry, RegistryOptions
from inferd.models.spec import specs_from_settings
from inferd.models.store import ModelStore

app = typer.Typer(help="List, show, pull, quantize and remove models.", no_args_is_help=True)
_KEY = re.compile(r"^[0-9a-f]{6,64}$")

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


def _family(entry: ModelEntry) -> str:
    if entry.metadata:
        return describe.family(entry.metadata)
    return "checkpoint" if entry.spec.path.is_dir() else "[red]unreadable[/red]"


def _context(entry: ModelEntry) -> str:
    arch = describe.family(entry.metadata)
    return entry.metadata.get(f"{arch}.context_length", "")


@app.command("list")
def list_models(config: ConfigOpt = None, models_dir: DirOpt = None) -> None:
    """Every model the server would serve, with its names and GGUF facts."""
    settings = _settings(config, models_dir)
    registry = _registry(settings)
    entries = registry.entries()
    asyncio.run(registry.describe(entries))
    table = Table("name", "aliases", "source", "size", "family", "params", "quant", "context")
    for e in entries:
        table.add_row(
            e.spec.name + (" (default)" if e.spec.name == registry.default_name else ""),
            ", ".join(e.spec.aliases),
            e.spec.source,
            size_text(describe.disk_size(e.spec.path)),
            _family(e),
            describe.parameter_size(e.n_params) if e.metadata else "",
            describe.quantization(e.metadata) if e.metadata else "",
            _context(e),
        )
    Console().print(table)
    converted = convert_cache(settings.convert_cache_dir).entries()
    if converted:
        table = Table(
            "key", "source", "architecture", "type", "size", "converted", "took",
            title=f"converted checkpoints ({settings.convert_cache_dir})",
        )  # fmt: skip
        for c in converted:
            table.add_row(
                c.short_key,
                c.source,
                c.architecture,
                c.quant,
                size_text(c.size),
                datetime.fromtimestamp(c.created).strftime("%Y-%m-%d %H:%M"),
                f"{c.seconds:.0f} s",
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
        "size": size_text(describe.disk_size(entry.spec.path)),
    }
    if entry.metadata:
        rows.update(
            family=describe.family(entry.metadata),
            parameters=f"{entry.n_params} ({describe.parameter_size(entry.n_params)})",
            quantization=describe.quantization(entry.metadata),
            vocabulary=str(entry.array_lengths.get("tokenizer.ggml.tokens", "")),
        )
    elif entry.spec.path.is_dir():
        rows["kind"] = "a Hugging Face checkpoint (converted or loaded when first served)"
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
    source: Annotated[
        str,
        typer.Argument(
            help="A .gguf path, an http(s) URL, or a Hugging Face checkpoint (a folder, or "
            "org/repo in the local HF cache), which is converted to GGUF"
        ),
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Model name (default: the file's stem)")
    ] = None,
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Expected SHA-256 of the file")
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option("--quantize", "-q", help="A checkpoint's type (default: the settings')"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file")] = False,
    config: ConfigOpt = None,
    models_dir: DirOpt = None,
) -> None:
    """Copy, download or convert a model into the models directory (checked, then renamed)."""
    from inferd.models import checkpoint
    from inferd.models.pull import default_name, is_url, pull_checkpoint
    from inferd.models.pull import pull as do_pull

    settings = _settings(config, models_dir)
    store = ModelStore(settings.models_dir)
    folder = None if is_url(source) else checkpoint.find(source)
    err = Console(stderr=True)
    if folder is not None:
        quant = _quant_type(quantize or settings.quantize or DEFAULT_QUANT)
        with _phases(err) as report:
            try:
                pulled = pull_checkpoint(
                    folder,
                    store,
                    convert_cache(settings.convert_cache_dir),
                    quant=quant,
                    name=name or Path(source).name,
                    force=force,
                    on_progress=report,
                )
            except InferdError as exc:
                _fail(exc.message)
        _pulled(pulled, f"converted from {folder} ({quant}), ")
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(name or default_name(source), total=None)

        def advance(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        try:
            pulled = do_pull(source, store, name=name, sha256=sha256, force=force, progress=advance)
        except InferdError as exc:
            progress.stop()
            _fail(exc.message)
    _pulled(pulled, "")


@app.command("quantize")
def quantize_model(
    name: Annotated[str, typer.Argument(help="A served GGUF model")],
    qtype: Annotated[str, typer.Option("--type", "-t", help="q4_k_m, q8_0, q6_k, ...")],
    new_name: Annotated[
        str | None, typer.Option("--name", help="The new model's name (default: NAME-TYPE)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file")] = False,
    config: ConfigOpt = None,
    models_dir: DirOpt = None,
) -> None:
    """Requantize a GGUF model with llama.cpp's quantizer, as a new model next to it."""
    from inferd.models.loading import quantizer
    from inferd.models.pull import requantize

    settings = _settings(config, models_dir)
    qtype = _quant_type(qtype)
    registry = _registry(settings)
    try:
        entry = registry.entry(name)
    except InferdError as exc:
        _fail(exc.message)
    if entry.spec.path.is_dir():
        _fail(f"{entry.spec.name} is a checkpoint: pull it with --quantize {qtype} instead")
    stem = entry.spec.name.replace(":", "-").replace("/", "-")
    with _phases(Console(stderr=True)) as report:

        def progress(fraction: float, line: str) -> None:
            report(LoadProgress("quantizing", fraction, line))

        try:
            pulled = requantize(
                entry.spec.path,
                ModelStore(settings.models_dir),
                quantizer(),
                qtype,
                name=new_name or f"{stem}-{qtype}",
                force=force,
                on_progress=progress,
            )
        except InferdError as exc:
            _fail(exc.message)
    _pulled(pulled, f"{qtype} from {entry.spec.name}, ")


def _quant_type(text: str) -> str:
    try:
        return quant_type(text)
    except ValueError as exc:
        _fail(str(exc))


@contextlib.contextmanager
def _phases(console: Console) -> Iterator[ProgressCallback]:
    """A progress bar per phase of a conversion (converting, quantizing)."""
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        tasks: dict[str, TaskID] = {}

        def report(p: LoadProgress) -> None:
            if p.phase == "done":
                return
            if p.phase not in tasks:
                tasks[p.phase] = progress.add_task(p.phase, total=1.0)
            progress.update(tasks[p.phase], completed=p.fraction)

        yield report


def _pulled(pulled: Pulled, how: str) -> None:
    Console().print(
        f"pulled {pulled.name}: {pulled.path} ({how}{size_text(pulled.size)}, "
        f"sha256 {pulled.sha256})",
        highlight=False,
    )


@app.command()
def rm(
    name: Annotated[str, typer.Argument(help="A model, or the key of a converted checkpoint")],
    config: ConfigOpt = None,
    models_dir: DirOpt = None,
) -> None:
    """Remove a model file of the models directory, an alias made by a copy, or a converted
    checkpoint from the conversion cache (by the key `inferd models list` shows)."""
    settings = _settings(config, models_dir)
    registry = _registry(settings)
    try:
        what = asyncio.run(registry.delete(name))
    except ModelNotFound as exc:
        if not _KEY.match(name):
            _fail(exc.message)
        try:
            gone = convert_cache(settings.convert_cache_dir).remove(name)
        except InferdError as exc2:
            _fail(exc2.message)
        what, name = "converted checkpoint", f"{gone.short_key} ({gone.source}, {gone.quant})"
    except InferdError as exc:
        _fail(exc.message)
    Console().print(f"removed {what} {name}", highlight=False)
