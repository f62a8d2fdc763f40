"""`inferd run MODEL [PROMPT]`: talk to a model, as `ollama run` does.

It talks to the server the settings name (cli/client.py); when none answers there and that
is this machine, it serves the app itself for the session, in this process (cli/local.py)."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import platformdirs
import typer
from rich.console import Console

from inferd.cli.chat import Chat, interact
from inferd.cli.client import Client, ServerError, is_local, server_url
from inferd.config import Settings, load_settings
from inferd.errors import InferdError

HISTORY_LINES = 1000


def _fail(message: str, code: int = 1) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _local_settings(settings: Settings, model: str) -> Settings:
    """The settings of a server for this session: `model` is its default, loaded first."""
    from inferd.cli.models import registry_of

    entry = registry_of(settings).entry(model)  # ModelNotFound names the model
    return settings.model_copy(update={"default_model": entry.spec.name})


@contextlib.contextmanager
def connect(settings: Settings, model: str) -> Iterator[Client]:
    """A client of the configured server, or of one started here for the session."""
    url = server_url(settings)
    with Client(url) as client:
        if client.alive():
            yield client
            return
    if not is_local(url):
        raise ServerError(f"no inferd server answers at {url} (INFERD_HOST)")
    from inferd.cli.launch import build
    from inferd.cli.local import LocalServer
    from inferd.observability.logging import configure_logging

    Console(stderr=True).print(
        f"[dim]no server at {url}: serving in this process for the session[/dim]",
        highlight=False,
    )
    configure_logging("warning", settings.log_format, sys.stderr)
    launch = build(_local_settings(settings, model), {})
    with (
        LocalServer(launch.app, launch.store.engine.dispose) as local,
        Client(local.url) as client,
    ):
        yield client


@contextlib.contextmanager
def _history() -> Iterator[None]:
    """Arrow keys and history (GNU readline), kept between sessions."""
    import readline

    path = platformdirs.user_state_path("inferd") / "history"
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LINES)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)


def _prompt(words: list[str] | None) -> str | None:
    """The one message to send: standard input when it is not a terminal, then the words
    (joined by spaces, as `ollama run` joins them); None: a chat."""
    if sys.stdin.isatty() and not words:
        return None
    piped = "" if sys.stdin.isatty() else sys.stdin.read()
    return " ".join(part for part in [piped, *(words or [])] if part)


def run(
    model: Annotated[str, typer.Argument(help="Model name (`inferd list` shows them)")],
    prompt: Annotated[
        list[str] | None,
        typer.Argument(help="Send this, print the answer and exit (default: a chat)"),
    ] = None,
    format: Annotated[
        str | None, typer.Option("--format", help="Answer in this format: json")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Print timings after each answer")
    ] = False,
    keepalive: Annotated[
        str | None,
        typer.Option("--keepalive", help="How long the model stays loaded: 5m, 1h, 0, -1 (ever)"),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML file with settings")
    ] = None,
) -> None:
    """Chat with a model, or send one prompt (or standard input) and print the answer."""
    if format not in (None, "json"):
        _fail(f"--format {format}: only json is supported", 2)
    text = _prompt(prompt)
    if text is not None and not text.strip():
        _fail("nothing to send: the prompt is empty", 2)
    try:
        settings = load_settings(config)
        with connect(settings, model) as client:
            chat = Chat(
                client,
                model,
                sys.stdout,
                sys.stderr,
                keep_alive=keepalive,
                format=format,
                verbose=verbose,
            )
            chat.load()
            if text is None:
                # Ctrl-C belongs to the chat (stop an answer, say how to leave), also when a
                # parent started it with SIGINT ignored (a background job of a shell script,
                # pytest-xdist's workers), which Python otherwise keeps ignoring
                signal.signal(signal.SIGINT, signal.default_int_handler)
                with _history():
                    interact(chat, input)
            else:
                chat.send(text)
    except (InferdError, ServerError) as exc:
        _fail(exc.message)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
