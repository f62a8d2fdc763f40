"""`GoTemplate`: parse a template, render it, and the questions Ollama asks of one."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from inferd.models.go_template.errors import TemplateError
from inferd.models.go_template.evaluate import execute
from inferd.models.go_template.lexer import Lexer
from inferd.models.go_template.limits import MAX_OUTPUT_CHARS, MAX_STEPS, MAX_TEMPLATE_CHARS
from inferd.models.go_template.nodes import Action, Branch, Field, Pipe, Var
from inferd.models.go_template.parser import Parser


@dataclass(frozen=True)
class GoTemplate:
    """A parsed template; `render` runs it on data (a dict for the top-level values)."""

    source: str
    nodes: tuple[Any, ...]

    @classmethod
    def parse(cls, source: str) -> GoTemplate:
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateError(f"the template is longer than {MAX_TEMPLATE_CHARS} characters")
        toks = Lexer(source).run()
        return cls(source, Parser(source, toks).parse())

    def render(
        self, data: Any, *, max_steps: int = MAX_STEPS, max_output: int = MAX_OUTPUT_CHARS
    ) -> str:
        try:
            return execute(self.source, self.nodes, data, max_steps, max_output)
        except RecursionError:
            raise TemplateError("template: nested too deeply") from None

    def identifiers(self) -> frozenset[str]:
        """Every field and variable name the template mentions, lowercased (Ollama's
        `Vars`: how it tells a template that reads .Messages from a legacy one)."""
        names: set[str] = set()

        def walk(node: Any) -> None:
            if isinstance(node, Action):
                walk(node.pipe)
            elif isinstance(node, Branch):
                walk(node.pipe)
                for n in (*node.body, *(node.orelse or ())):
                    walk(n)
            elif isinstance(node, Pipe):
                for cmd in node.cmds:
                    for a in cmd.args:
                        walk(a)
            elif isinstance(node, Field):
                names.update(n.lower() for n in node.names)
                if node.receiver is not None:
                    walk(node.receiver)
            elif isinstance(node, Var):
                names.add(node.name.lower())

        for n in self.nodes:
            walk(n)
        return frozenset(names)

    def cut_after(self, field_name: str) -> GoTemplate:
        """The template with everything after the first action output of `.<field_name>`
        removed (Ollama renders a legacy template's prompt up to its `{{ .Response }}`).
        Branch conditions are not looked at; bodies are, in order."""
        cut = False

        def nodes(items: tuple[Any, ...]) -> tuple[Any, ...]:
            out = []
            for n in items:
                if cut:
                    break
                kept = node(n)
                if kept is not None:
                    out.append(kept)
            return tuple(out)

        def node(n: Any) -> Any:
            nonlocal cut
            if isinstance(n, Branch):
                body = nodes(n.body)
                orelse = nodes(n.orelse) if n.orelse is not None else None
                return replace(n, body=body, orelse=orelse)
            if isinstance(n, Action):
                cmds = []
                for cmd in n.pipe.cmds:
                    args = []
                    for a in cmd.args:
                        if cut:
                            break
                        args.append(a)
                        if isinstance(a, Field) and a.receiver is None and field_name in a.names:
                            cut = True
                    if not args:
                        break
                    cmds.append(replace(cmd, args=tuple(args)))
                if not cmds:
                    return None
                return replace(n, pipe=replace(n.pipe, cmds=tuple(cmds)))
            return n

        return GoTemplate(self.source, nodes(self.nodes))
