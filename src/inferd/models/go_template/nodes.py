"""The syntax tree the parser builds and the evaluator runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Text:
    text: str
    pos: int


@dataclass(frozen=True, slots=True)
class Field:  # .A.B, or `receiver`.A.B (a variable, a parenthesized pipeline)
    names: tuple[str, ...]
    pos: int
    receiver: Any = None  # None: the dot


@dataclass(frozen=True, slots=True)
class Var:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Dot:
    pos: int


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any
    pos: int


@dataclass(frozen=True, slots=True)
class Func:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Command:
    args: tuple[Any, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Pipe:
    cmds: tuple[Command, ...]
    pos: int
    decl: tuple[str, ...] = ()
    assign: bool = False  # `=` rather than `:=`


@dataclass(frozen=True, slots=True)
class Action:
    pipe: Pipe
    pos: int


@dataclass(frozen=True, slots=True)
class Branch:  # if / with / range
    kind: str
    pipe: Pipe
    body: tuple[Any, ...]
    orelse: tuple[Any, ...] | None
    pos: int


@dataclass(frozen=True, slots=True)
class Jump:  # break / continue
    kind: str
    pos: int
