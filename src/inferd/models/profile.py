"""What `/api/create` gives a model besides its weights: a template, a system prompt, default
parameters, leading messages and a license (Ollama's Modelfile), and the Modelfile parser.

A profile is kept by model name in the models directory (`ModelStore.profiles`), so it
survives restarts; the Ollama routes apply it to the requests that name the model.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from inferd.errors import InvalidRequest

_MAX_TEXT = 256 * 1024
_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ModelProfile:
    template: str = ""  # Go (Ollama's) or Jinja; empty: the model's own chat template
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # Ollama options
    messages: tuple[dict[str, str], ...] = ()
    license: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelProfile:
        return cls(
            template=str(data.get("template", "")),
            system=str(data.get("system", "")),
            parameters=dict(data.get("parameters") or {}),
            messages=tuple(dict(m) for m in data.get("messages") or ()),
            license=str(data.get("license", "")),
        )

    def over(self, base: ModelProfile | None) -> ModelProfile:
        """This profile on top of `base`'s (a model created from another keeps what it does
        not set; parameters merge)."""
        if base is None:
            return self
        return ModelProfile(
            template=self.template or base.template,
            system=self.system or base.system,
            parameters={**base.parameters, **self.parameters},
            messages=self.messages or base.messages,
            license=self.license or base.license,
        )


def check_messages(messages: Sequence[object], param: str) -> tuple[dict[str, str], ...]:
    out = []
    for i, m in enumerate(messages):
        if not (isinstance(m, Mapping) and m.get("role") in _ROLES):
            raise InvalidRequest(f"{param}[{i}] needs a role of {', '.join(_ROLES)}", param=param)
        content = m.get("content", "")
        if not isinstance(content, str):
            raise InvalidRequest(f"{param}[{i}].content must be a string", param=param)
        out.append({"role": str(m["role"]), "content": content})
    return tuple(out)


def license_text(value: str | Sequence[str] | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else "\n\n".join(value)


@dataclass
class Modelfile:
    """A Modelfile's instructions: FROM, TEMPLATE, SYSTEM, PARAMETER, MESSAGE, LICENSE
    (ADAPTER is refused; comments and blank lines skipped)."""

    from_: str | None = None
    template: str = ""
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Modelfile:
        if len(text) > _MAX_TEXT:
            raise _bad("the Modelfile is too long")
        out = cls()
        for number, (command, arg) in enumerate(_instructions(text), 1):
            where = f"Modelfile instruction {number} ({command})"
            if command == "FROM":
                out.from_ = arg
            elif command == "TEMPLATE":
                out.template = arg
            elif command == "SYSTEM":
                out.system = arg
            elif command == "LICENSE":
                out.license.append(arg)
            elif command == "PARAMETER":
                key, _, value = arg.partition(" ")
                if not key or not value.strip():
                    raise InvalidRequest(
                        f"{where}: PARAMETER needs a name and a value", param="modelfile"
                    )
                add_parameter(out.parameters, key, value.strip())
            elif command == "MESSAGE":
                role, _, content = arg.partition(" ")
                if role not in _ROLES:
                    raise InvalidRequest(
                        f"{where}: MESSAGE needs a role of {', '.join(_ROLES)}", param="modelfile"
                    )
                out.messages.append({"role": role, "content": content.strip()})
            else:
                raise _bad(f"{where}: {command} is not supported")
        return out


# Ollama options that take a list (PARAMETER stop may repeat), and those that are text
_LISTS = frozenset({"stop"})


def add_parameter(parameters: dict[str, Any], key: str, value: str) -> None:
    """One `PARAMETER key value`: numbers and booleans as such, `stop` collected in a list."""
    value = _unquote(value)
    if key in _LISTS:
        parameters.setdefault(key, []).append(value)
        return
    parsed: Any = value
    if value.lower() in ("true", "false"):
        parsed = value.lower() == "true"
    else:
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        if not isinstance(parsed, int | float):
            parsed = value
    parameters[key] = parsed


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(shlex.split(value)[0])
        except ValueError:
            return value[1:-1]
    return value


def _instructions(text: str) -> list[tuple[str, str]]:
    """(COMMAND, argument) pairs; an argument in triple quotes may span lines."""
    out: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        command, _, arg = line.partition(" ")
        arg = arg.strip()
        if '"""' in arg:  # a quoted argument (after MESSAGE's role too), maybe over lines
            head, _, body = arg.partition('"""')
            while '"""' not in body and i < len(lines):
                body += "\n" + lines[i]
                i += 1
            if '"""' not in body:
                raise _bad('unterminated """ in the Modelfile')
            arg = head + body[: body.index('"""')]
        out.append((command.upper(), arg))
    return out


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="modelfile")
