"""The parser: tokens to a syntax tree, checking variables, functions and nesting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inferd.models.go_template.errors import TemplateError, position
from inferd.models.go_template.functions import FUNCTIONS
from inferd.models.go_template.lexer import Tok
from inferd.models.go_template.limits import MAX_DEPTH
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

_KEYWORDS = frozenset(
    {"if", "else", "end", "range", "with", "break", "continue", "define", "template", "block"}
)


@dataclass
class Parser:
    src: str
    toks: list[Tok]
    i: int = 0
    depth: int = 0
    loops: int = 0
    scopes: list[str] = field(default_factory=lambda: ["$"])

    def error(self, tok: Tok, message: str) -> TemplateError:
        return TemplateError(f"template: {position(self.src, tok.pos)}: {message}")

    def peek(self, ahead: int = 0) -> Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def next(self) -> Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, kind: str, what: str) -> Tok:
        tok = self.next()
        if tok.kind != kind:
            raise self.error(tok, f"unexpected {_describe(tok)}, expected {what}")
        return tok

    def enter(self, tok: Tok) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(tok, f"nesting deeper than {MAX_DEPTH}")

    def parse(self) -> tuple[Any, ...]:
        nodes, end = self.items()
        if end is not None:
            raise self.error(end[1], f"unexpected {{{{{end[0]}}}}}")
        return nodes

    def items(self) -> tuple[tuple[Any, ...], tuple[str, Tok] | None]:
        """Nodes up to the end of input, or to an {{else}} / {{end}} (returned, consumed
        up to the keyword: an `else` may go on with `if` / `with`)."""
        out: list[Any] = []
        while True:
            tok = self.next()
            if tok.kind == "eof":
                return tuple(out), None
            if tok.kind == "text":
                out.append(Text(tok.value, tok.pos))
                continue
            head = self.peek()  # tok is "open"
            if head.kind == "ident" and head.value in _KEYWORDS:
                self.next()
                word = head.value
                if word in ("end", "else"):
                    return tuple(out), (word, head)
                out.append(self.keyword(word, head))
                continue
            pipe = self.pipeline(head, decl_ok=True)
            self.expect("close", "}}")
            out.append(Action(pipe, head.pos))

    def keyword(self, word: str, tok: Tok) -> Any:
        if word in ("break", "continue"):
            if not self.loops:
                raise self.error(tok, f"{{{{{word}}}}} outside {{{{range}}}}")
            self.expect("close", "}}")
            return Jump(word, tok.pos)
        if word in ("define", "template", "block"):
            raise self.error(tok, f"{{{{{word}}}}} is not supported")
        return self.branch(word, tok)

    def branch(self, kind: str, tok: Tok) -> Branch:
        self.enter(tok)
        mark = len(self.scopes)
        pipe = self.pipeline(tok, decl_ok=True, range_decl=kind == "range")
        self.expect("close", "}}")
        if kind == "range":
            self.loops += 1
        body, end = self.items()
        if kind == "range":
            self.loops -= 1
        orelse: tuple[Any, ...] | None = None
        if end is None:
            raise self.error(tok, f"unexpected EOF: {{{{{kind}}}}} has no {{{{end}}}}")
        if end[0] == "else":
            nxt = self.peek()
            if nxt.kind == "ident" and nxt.value in ("if", "with") and kind != "range":
                self.next()  # {{else if ...}}: a nested branch sharing this {{end}}
                orelse = (self.branch(nxt.value, nxt),)
                end = None
            else:
                self.expect("close", "}}")
                orelse, end = self.items()
                if end is None or end[0] != "end":
                    raise self.error(tok, f"{{{{{kind}}}}} has no {{{{end}}}}")
        if end is not None:
            self.expect("close", "}}")
        del self.scopes[mark:]
        self.depth -= 1
        return Branch(kind, pipe, body, orelse, tok.pos)

    def pipeline(self, start: Tok, *, decl_ok: bool = False, range_decl: bool = False) -> Pipe:
        decl: list[str] = []
        assign = False
        if decl_ok and self.peek().kind == "var":
            # $x := / $x = / $i, $e :=
            if self.peek(1).kind in ("declare", "assign"):
                decl = [self.next().value]
            elif range_decl and self.peek(1).kind == "comma" and self.peek(2).kind == "var":
                decl = [self.next().value]
                self.next()
                decl.append(self.next().value)
                if self.peek().kind != "declare":
                    raise self.error(self.peek(), "expected := after range variables")
            if decl:
                op = self.next()
                assign = op.kind == "assign"
                if assign:
                    if decl[0] not in self.scopes:
                        raise self.error(op, f"undefined variable {decl[0]!r}")
                else:
                    self.scopes.extend(decl)
        cmds: list[Command] = []
        while True:
            cmds.append(self.command())
            if self.peek().kind != "pipe":
                break
            self.next()
        if self.peek().kind not in ("close", "rparen"):
            raise self.error(self.peek(), f"unexpected {_describe(self.peek())} in command")
        for c in cmds[1:]:
            if not isinstance(c.args[0], Func):
                raise self.error(Tok("", None, c.pos), "only a function can follow |")
        return Pipe(tuple(cmds), start.pos, tuple(decl), assign)

    def command(self) -> Command:
        args: list[Any] = []
        start = self.peek()
        while self.peek().kind not in ("close", "rparen", "pipe", "eof"):
            if args and not self.peek().spaced and self.peek().kind != "field":
                raise self.error(self.peek(), "missing space between operands")
            args.append(self.operand())
        if not args:
            raise self.error(start, f"missing value for command, got {_describe(start)}")
        if len(args) > 1 and not isinstance(args[0], Func):
            raise self.error(start, "can't give argument to non-function")
        return Command(tuple(args), start.pos)

    def operand(self) -> Any:
        tok = self.next()
        node: Any
        if tok.kind == "field":
            names = [tok.value]
            names.extend(self.chain())
            return Field(tuple(names), tok.pos)
        if tok.kind == "dot":
            node = Dot(tok.pos)
        elif tok.kind == "var":
            if tok.value not in self.scopes:
                raise self.error(tok, f"undefined variable {tok.value!r}")
            node = Var(tok.value, tok.pos)
        elif tok.kind in ("str", "num", "bool", "nil"):
            node = Literal(tok.value, tok.pos)
        elif tok.kind == "ident":
            if tok.value in _KEYWORDS:
                raise self.error(tok, f"unexpected keyword {tok.value!r} in command")
            if tok.value not in FUNCTIONS:
                raise self.error(tok, f'function "{tok.value}" not defined')
            return Func(tok.value, tok.pos)
        elif tok.kind == "lparen":
            self.enter(tok)
            inner = self.pipeline(tok)
            self.expect("rparen", ")")
            self.depth -= 1
            node = inner
        else:
            raise self.error(tok, f"unexpected {_describe(tok)} in operand")
        names = self.chain()
        if names:
            if isinstance(node, Literal | Dot):
                raise self.error(tok, "unexpected field access on a constant")
            return Field(tuple(names), tok.pos, node)
        return node

    def chain(self) -> list[str]:
        names = []
        while self.peek().kind == "field" and not self.peek().spaced:
            names.append(self.next().value)
        return names


def _describe(tok: Tok) -> str:
    names = {"close": '"}}"', "eof": "end of template", "rparen": '")"', "pipe": '"|"'}
    return names.get(tok.kind) or f"{tok.kind} {str(tok.value)[:20]!r}"
