"""Running a parsed template on data, within a step and output budget."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from inferd.models.go_template.errors import TemplateError, position
from inferd.models.go_template.functions import FUNCS
from inferd.models.go_template.nodes import (
    Action,
    Branch,
    Command,
    Dot,
    Field,
    Func,
    Jump,
    Literal,
    Pipe,
    Text,
    Var,
)
from inferd.models.go_template.values import Struct, kind_of, to_text, truth


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Run:
    """One execution: output, variables, the step budget."""

    def __init__(self, src: str, data: Any, max_steps: int, max_output: int) -> None:
        self.src = src
        self.out: list[str] = []
        self.size = 0
        self.steps = max_steps
        self.max_output = max_output
        self.built = 0  # characters of every string functions made (8x the output at most)
        self.vars: list[tuple[str, Any]] = [("$", data)]

    def error(self, pos: int, message: str) -> TemplateError:
        return TemplateError(f"template: {position(self.src, pos)}: {message}")

    def tick(self, pos: int) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise self.error(pos, "the template takes too many steps")

    def write(self, text: str, pos: int) -> None:
        self.size += len(text)
        if self.size > self.max_output:
            raise self.error(pos, f"the template writes more than {self.max_output} characters")
        self.out.append(text)

    def checked(self, text: str, pos: int) -> str:
        if len(text) > self.max_output:
            raise self.error(pos, f"the template builds a string over {self.max_output} characters")
        return text

    # -- nodes --

    def nodes(self, nodes: Sequence[Any], dot: Any) -> None:
        for node in nodes:
            self.tick(node.pos)
            if isinstance(node, Text):
                self.write(node.text, node.pos)
            elif isinstance(node, Action):
                value = self.pipe(node.pipe, dot)
                if not node.pipe.decl:
                    self.write(to_text(value), node.pos)
            elif isinstance(node, Branch):
                self.branch(node, dot)
            elif isinstance(node, Jump):
                raise _Break() if node.kind == "break" else _Continue()

    def branch(self, node: Branch, dot: Any) -> None:
        mark = len(self.vars)
        try:
            if node.kind == "range":
                self.range(node, dot)
                return
            value = self.pipe(node.pipe, dot, declare=node.kind != "range")
            if truth(value):
                self.nodes(node.body, value if node.kind == "with" else dot)
            elif node.orelse is not None:
                self.nodes(node.orelse, dot)
        finally:
            del self.vars[mark:]

    def range(self, node: Branch, dot: Any) -> None:
        value = self.pipe(node.pipe, dot, declare=False)
        items: Iterator[tuple[Any, Any]]
        if value is None:
            items = iter(())
        elif isinstance(value, Struct):
            raise self.error(node.pos, f"range can't iterate over {value.type_name}")
        elif isinstance(value, dict):
            items = ((k, value[k]) for k in sorted(value))
        elif isinstance(value, list | tuple):
            items = enumerate(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            if value > self.steps:
                raise self.error(node.pos, "the template takes too many steps")
            items = ((i, i) for i in range(value))
        else:
            raise self.error(node.pos, f"range can't iterate over {to_text(value)[:40]}")
        mark = len(self.vars)
        empty = True
        for key, elem in items:
            empty = False
            self.tick(node.pos)
            del self.vars[mark:]
            names = node.pipe.decl
            if len(names) == 1:
                self.vars.append((names[0], elem))
            elif len(names) == 2:
                self.vars += [(names[0], key), (names[1], elem)]
            try:
                self.nodes(node.body, elem)
            except _Break:
                break
            except _Continue:
                continue
        if empty and node.orelse is not None:
            self.nodes(node.orelse, dot)

    def pipe(self, pipe: Pipe, dot: Any, *, declare: bool = True) -> Any:
        value: Any = _NOTHING
        for cmd in pipe.cmds:
            value = self.command(cmd, dot, value)
        if pipe.decl and declare:
            if pipe.assign:
                self.set_var(pipe.decl[0], value, pipe.pos)
            else:
                self.vars.append((pipe.decl[0], value))
        return value

    def set_var(self, name: str, value: Any, pos: int) -> None:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        raise self.error(pos, f"undefined variable {name!r}")

    def var(self, name: str, pos: int) -> Any:
        for n, v in reversed(self.vars):
            if n == name:
                return v
        raise self.error(pos, f"undefined variable {name!r}")

    def command(self, cmd: Command, dot: Any, final: Any) -> Any:
        head = cmd.args[0]
        if isinstance(head, Func):
            return self.call(head, cmd.args[1:], dot, final)
        if final is not _NOTHING:
            raise self.error(cmd.pos, "can't give argument to non-function")
        return self.arg(head, dot)

    def arg(self, node: Any, dot: Any) -> Any:
        self.tick(node.pos)
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Dot):
            return dot
        if isinstance(node, Var):
            return self.var(node.name, node.pos)
        if isinstance(node, Pipe):
            return self.pipe(node, dot, declare=False)
        if isinstance(node, Field):
            value = dot if node.receiver is None else self.arg(node.receiver, dot)
            for name in node.names:
                value = self.field(value, name, node.pos)
            return value
        if isinstance(node, Func):
            return self.call(node, (), dot, _NOTHING)
        raise self.error(node.pos, "unexpected node")  # pragma: no cover

    def field(self, value: Any, name: str, pos: int) -> Any:
        if isinstance(value, Struct):
            if name not in value:
                raise self.error(pos, f"can't evaluate field {name} in type {value.type_name}")
            return value[name]
        if isinstance(value, dict):
            return value.get(name)
        if value is None:
            raise self.error(pos, f"nil pointer evaluating interface {{}}.{name}")
        raise self.error(pos, f"can't evaluate field {name} in type {kind_of(value)}")

    # -- functions --

    def call(self, fn: Func, nodes: Sequence[Any], dot: Any, final: Any) -> Any:
        name = fn.name
        if name in ("and", "or"):
            args_n = list(nodes)
            if not args_n and final is _NOTHING:
                raise self.error(fn.pos, f"wrong number of args for {name}: want at least 1")
            value: Any = None
            for n in args_n:
                value = self.arg(n, dot)
                if truth(value) != (name == "and"):
                    return value
            if final is not _NOTHING:
                value = final
            return value
        args = [self.arg(n, dot) for n in nodes]
        if final is not _NOTHING:
            args.append(final)
        try:
            return self.checked_value(FUNCS[name](args), fn.pos)
        except TemplateError:
            raise
        except (TypeError, ValueError, IndexError, KeyError, OverflowError) as exc:
            raise self.error(fn.pos, f"error calling {name}: {exc}") from None

    def checked_value(self, value: Any, pos: int) -> Any:
        if isinstance(value, str):
            self.checked(value, pos)
            self.built += len(value)
            if self.built > 8 * self.max_output:
                raise self.error(pos, "the template builds too much text")
        return value


_NOTHING = object()  # no value piped in


def execute(source: str, nodes: Sequence[Any], data: Any, max_steps: int, max_output: int) -> str:
    """The output of `nodes` (parsed from `source`) run on `data`."""
    run = _Run(source, data, max_steps, max_output)
    run.nodes(nodes, data)
    return "".join(run.out)
