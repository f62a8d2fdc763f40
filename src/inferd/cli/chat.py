"""A conversation with one model, as `ollama run` holds it: streamed answers over the
server's Ollama `/api/chat`, the slash commands, multi-line input and `--verbose` timings."""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from inferd.cli.client import Client, ServerError, model_path

# The Ollama options a session can set, with their types (stop takes one or more strings).
PARAMETERS: dict[str, type] = {
    "num_predict": int,
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "repeat_penalty": float,
    "repeat_last_n": int,
    "presence_penalty": float,
    "frequency_penalty": float,
    "seed": int,
    "num_ctx": int,
    "stop": list,
}

BLOCK = '"""'
LOAD_POLL_SECONDS = 0.2

HELP = """Available commands:
  /set parameter NAME VALUE   Set a parameter (/set parameter to list them)
  /set system TEXT            Set the system message (\"\"\" for several lines)
  /set format json            Answer in JSON; /set noformat to stop
  /set verbose, /set quiet    Show or hide the timings after each answer
  /show info                  The model's details (also: parameters, system, template)
  /load MODEL                 Switch to another model (the conversation starts over)
  /clear                      Forget the conversation so far (the system message stays)
  /bye                        Leave (Ctrl + d does too)
  /?, /help                   This help

Begin a message with \"\"\" to write several lines; end it with \"\"\".
Ctrl + c stops an answer; the conversation goes on.
"""


def parse_parameter(name: str, values: list[str]) -> Any:
    """The value of `/set parameter NAME VALUE...`; ValueError says what is wrong."""
    kind = PARAMETERS.get(name)
    if kind is None:
        raise ValueError(f"unknown parameter '{name}' (one of: {', '.join(PARAMETERS)})")
    if not values:
        raise ValueError(f"no value given for {name}")
    if kind is list:
        return values
    if len(values) > 1:
        raise ValueError(f"{name} takes one value, not {len(values)}")
    try:
        return kind(values[0])
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{name} must be {what}, not {values[0]!r}") from None


def read_block(first: str, read: Callable[[str], str]) -> str:
    """The text of a message begun with \"\"\" (`first` is the rest of its first line), up to
    the line that ends with \"\"\"."""
    lines = [first]
    while not lines[-1].endswith(BLOCK):
        lines.append(read("... "))
    lines[-1] = lines[-1][: -len(BLOCK)]
    return "\n".join(lines)


def go_duration(ns: int) -> str:
    """A duration as Go prints a time.Duration (and so `ollama run --verbose`)."""
    if ns == 0:
        return "0s"
    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_decimal(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_decimal(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    head = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    return f"{sign}{head}{_decimal(rest, 1_000_000_000)}s"


def _decimal(n: int, unit: int) -> str:
    whole, part = divmod(n, unit)
    digits = f"{part:0{len(str(unit)) - 1}d}".rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def timings(final: dict[str, Any]) -> str:
    """The lines `ollama run --verbose` prints from a final chunk's counters."""
    lines = []
    total, load = final.get("total_duration", 0), final.get("load_duration", 0)
    prompt_n, prompt_ns = final.get("prompt_eval_count", 0), final.get("prompt_eval_duration", 0)
    eval_n, eval_ns = final.get("eval_count", 0), final.get("eval_duration", 0)
    if total > 0:
        lines.append(f"total duration:       {go_duration(total)}")
    if load > 0:
        lines.append(f"load duration:        {go_duration(load)}")
    if prompt_n > 0:
        lines.append(f"prompt eval count:    {prompt_n} token(s)")
    if prompt_ns > 0:
        lines.append(f"prompt eval duration: {go_duration(prompt_ns)}")
        lines.append(f"prompt eval rate:     {prompt_n / (prompt_ns / 1e9):.2f} tokens/s")
    if eval_n > 0:
        lines.append(f"eval count:           {eval_n} token(s)")
    if eval_ns > 0:
        lines.append(f"eval duration:        {go_duration(eval_ns)}")
        lines.append(f"eval rate:            {eval_n / (eval_ns / 1e9):.2f} tokens/s")
    return "".join(line + "\n" for line in lines)


def load_bar(info: dict[str, Any]) -> dict[str, Any]:
    """A load's progress bar from a model's /models entry: `converting 42%` as a bar with its
    fraction, a load that tells no progress as a spinner."""
    p = info.get("progress")
    if not p:
        return {"description": f"{info['status']} {info['name']}", "total": None}
    return {"description": f"{p['phase']} {info['name']}", "total": 1.0, "completed": p["fraction"]}


@dataclass
class Chat:
    """One conversation: what is sent with every message, and the messages so far."""

    client: Client
    model: str
    out: TextIO
    err: TextIO
    keep_alive: str | None = None
    format: str | None = None
    verbose: bool = False
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)

    def _body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        if self.options:
            body["options"] = self.options
        if self.format:
            body["format"] = self.format
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body

    def load(self) -> None:
        """Load the model (a chat with no messages, as `ollama run` does) with a progress
        bar on a terminal (how far a conversion or a load is, where the server knows it);
        raises ServerError (an unknown model, a failed load)."""
        failure: list[ServerError] = []

        def work() -> None:
            try:
                self._load_now()
            except ServerError as exc:
                failure.append(exc)

        worker = threading.Thread(target=work, name="inferd-load", daemon=True)
        worker.start()
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn())
        console = Console(file=self.err)
        with Progress(
            *columns,
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        ) as progress:
            task = progress.add_task(f"loading {self.model}", total=None)
            while worker.is_alive():
                worker.join(LOAD_POLL_SECONDS)
                if worker.is_alive() and console.is_terminal:
                    progress.update(task, **self._how_far())
        if failure:
            raise failure[0]

    def _how_far(self) -> dict[str, Any]:
        """The load's bar as the server's /models says it (nothing to change when unknown)."""
        try:
            info = self.client.call("GET", f"/models/{model_path(self.model)}")
        except ServerError:
            return {}
        return load_bar(info)

    def _load_now(self) -> None:
        """The load request, again while the server says 503 (a load under way that it
        does not wait for, as at its startup) unless the model's status says it failed."""
        while True:
            try:
                self.client.call("POST", "/api/chat", {**self._body([]), "stream": False})
                return
            except ServerError as exc:
                if exc.status != 503:
                    raise
            info = self.client.call("GET", f"/models/{model_path(self.model)}")
            if info["status"] == "failed":
                raise ServerError(f"the model '{info['name']}' failed to load: {info['error']}")
            time.sleep(LOAD_POLL_SECONDS)

    def send(self, text: str) -> None:
        """Stream the answer to `text`. Ctrl-C (KeyboardInterrupt) stops it and closes the
        connection, which stops the generation; the part shown stays in the conversation.
        An answer that failed or was stopped before any text leaves no trace."""
        self.messages.append({"role": "user", "content": text})
        system = [{"role": "system", "content": self.system}] if self.system else []
        pieces: list[str] = []
        final: dict[str, Any] | None = None
        try:
            with self.client.stream("/api/chat", self._body(system + self.messages)) as objects:
                for item in objects:
                    piece = item.get("message", {}).get("content", "")
                    if piece:
                        self.out.write(piece)
                        self.out.flush()
                        pieces.append(piece)
                    if item.get("done"):
                        final = item
        except (KeyboardInterrupt, ServerError):
            if not pieces:
                self.messages.pop()
            else:
                self.messages.append({"role": "assistant", "content": "".join(pieces)})
                self.out.write("\n")
            raise
        self.messages.append({"role": "assistant", "content": "".join(pieces)})
        self.out.write("\n")
        self.out.flush()
        if self.verbose and final is not None:
            self.err.write(timings(final))
            self.err.flush()

    def command(self, line: str, read: Callable[[str], str]) -> bool:
        """Run a slash command; False when it ends the session."""
        name, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if name in ("/bye", "/exit"):
            return False
        if name in ("/?", "/help"):
            self.out.write(HELP)
        elif name == "/clear":
            self.messages.clear()
            self.out.write("Cleared session context\n")
        elif name == "/set":
            self._set(rest, read)
        elif name == "/show":
            self._show(rest)
        elif name == "/load":
            self._load(rest)
        else:
            self.out.write(f"Unknown command '{name}'. Type /? for help\n")
        return True

    def _set(self, rest: str, read: Callable[[str], str]) -> None:
        what, _, value = rest.partition(" ")
        if what == "parameter":
            self._set_parameter(value)
        elif what == "system":
            text = value.strip()
            if text.startswith(BLOCK):
                text = read_block(text[len(BLOCK) :], read)
            self.system = text or None
            self.out.write("Set system message.\n")
        elif what == "format" and value.strip() == "json":
            self.format = "json"
            self.out.write("Set format to 'json' mode.\n")
        elif what == "noformat":
            self.format = None
            self.out.write("Disabled format.\n")
        elif what in ("verbose", "quiet"):
            self.verbose = what == "verbose"
            self.out.write(f"Set '{what}' mode.\n")
        else:
            self.out.write(
                "Usage: /set parameter NAME VALUE | system TEXT | format json | noformat | "
                "verbose | quiet\n"
            )

    def _set_parameter(self, text: str) -> None:
        try:
            words = shlex.split(text)
        except ValueError as exc:
            self.out.write(f"Couldn't set parameter: {exc}\n")
            return
        if not words:
            self.out.write("Parameters: " + ", ".join(PARAMETERS) + "\n")
            return
        try:
            value = parse_parameter(words[0], words[1:])
        except ValueError as exc:
            self.out.write(f"Couldn't set parameter: {exc}\n")
            return
        self.options[words[0]] = value
        self.out.write(f"Set parameter '{words[0]}' to '{', '.join(words[1:])}'\n")

    def _show(self, what: str) -> None:
        if what == "parameters":
            self.out.write(
                "".join(f"{k:<20}{v}\n" for k, v in self.options.items())
                or "No parameters set for this session.\n"
            )
            return
        if what == "system":
            self.out.write((self.system or "No system message was specified.") + "\n")
            return
        if what not in ("info", "template"):
            self.out.write("Usage: /show info | parameters | system | template\n")
            return
        try:
            shown = self.client.call("POST", "/api/show", {"model": self.model})
        except ServerError as exc:
            self.out.write(f"error: {exc.message}\n")
            return
        if what == "template":
            self.out.write(str(shown.get("template", "")) + "\n")
        else:
            self.out.write(model_info(shown))

    def _load(self, name: str) -> None:
        if not name:
            self.out.write("Usage: /load MODEL\n")
            return
        previous = self.model
        self.model = name
        try:
            self.load()
        except ServerError as exc:
            self.model = previous
            self.out.write(f"error: {exc.message}\n")
            return
        self.messages.clear()
        self.out.write(f"Loaded {name}.\n")


def model_info(shown: dict[str, Any]) -> str:
    """`/show info` from an `/api/show` answer."""
    details = shown.get("details", {})
    info = shown.get("model_info", {})
    arch = info.get("general.architecture", details.get("family", ""))
    rows = [
        ("architecture", arch),
        ("parameters", details.get("parameter_size", "")),
        ("context length", info.get(f"{arch}.context_length", "")),
        ("embedding length", info.get(f"{arch}.embedding_length", "")),
        ("quantization", details.get("quantization_level", "")),
    ]
    text = "  Model\n" + "".join(f"    {k:<20}{v}\n" for k, v in rows if v != "")
    capabilities = shown.get("capabilities") or []
    if capabilities:
        text += "\n  Capabilities\n" + "".join(f"    {c}\n" for c in capabilities)
    return text


def interact(chat: Chat, read: Callable[[str], str]) -> None:
    """The chat loop until /bye or end of input (Ctrl-D)."""
    while True:
        try:
            line = read(">>> ")
            if line.startswith(BLOCK):
                text = read_block(line[len(BLOCK) :], read)
            elif line.lstrip().startswith("/"):
                if not chat.command(line, read):
                    return
                continue
            else:
                text = line
        except KeyboardInterrupt:
            chat.out.write("\nUse Ctrl + d or /bye to exit.\n")
            continue
        except EOFError:
            chat.out.write("\n")
            return
        if not text.strip():
            continue
        try:
            chat.send(text)
        except KeyboardInterrupt:
            pass  # the answer stopped; the conversation goes on
        except ServerError as exc:
            chat.err.write(f"error: {exc.message}\n")
        chat.out.write("\n")
        chat.out.flush()
