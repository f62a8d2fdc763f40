"""Go `text/template`, the subset Ollama's prompt templates use: parsed and run in Python.

Supported: text and `{{ }}` actions with `{{-` / `-}}` trimming, comments `{{/* */}}`,
fields `.X.Y`, `.`, `$`, `$x.Y`, `(pipeline).X`, variables (`$x := ...`, `$x = ...`),
`if` / `else if` / `else` / `end`, `range` (one or two variables, `else`, over lists, maps
in key order and integers), `with` / `else with`, `break` / `continue`, pipelines `a | b`,
string, raw-string, character, number, bool and nil literals, and the functions `and or not
eq ne lt le gt ge len index slice print println printf json` (`json` as Ollama defines it).
`define`, `template` and `block` are rejected.

Values are Python data: a dict is a Go map (a missing key is nil, printed `<no value>`), a
`Struct` is a Go struct (a missing field is an error), lists are slices.

Nothing here does I/O. A template from a request is not trusted: its size, nesting, steps
and output are bounded, and every error names the line and column.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from inferd.errors import InvalidRequest

MAX_TEMPLATE_CHARS = 100_000
MAX_OUTPUT_CHARS = 1_000_000  # the output, and any one string a template builds
MAX_DEPTH = 32  # nested blocks and parentheses
MAX_STEPS = 200_000  # nodes evaluated and loop iterations, all together
_MAX_WIDTH = 10_000  # printf field width and precision

_WS = " \t\r\n"
_KEYWORDS = frozenset(
    {"if", "else", "end", "range", "with", "break", "continue", "define", "template", "block"}
)


class TemplateError(InvalidRequest):
    """A template that does not parse or fails while running: a 400 naming `template`."""

    def __init__(self, message: str, *, param: str = "template") -> None:
        super().__init__(message, param=param)


class Struct(dict[str, Any]):
    """A Go struct: its fields by name; reading an unknown field is an error. `json_keys`
    gives the name of each field in `json` output (fields left out when empty: `omit`)."""

    def __init__(
        self,
        type_name: str,
        fields: Mapping[str, Any],
        json_keys: Mapping[str, str] | None = None,
        omit_empty: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(fields)
        self.type_name = type_name
        self.json_keys = dict(json_keys or {})
        self.omit_empty = omit_empty


# ---- lexer --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # text, open, close, field, dot, var, ident, str, num, char, bool, nil, pipe,
    # lparen, rparen, declare, assign, comma, eof
    value: Any
    pos: int
    spaced: bool = False  # whitespace came before it (inside an action)


_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+"
    r"|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][+-]?\d+)?)"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_CHAR = re.compile(r"'(?:[^'\\\n]|\\.)+'")


class _Lexer:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks: list[_Tok] = []

    def error(self, pos: int, message: str) -> TemplateError:
        return TemplateError(f"template: {position(self.src, pos)}: {message}")

    def run(self) -> list[_Tok]:
        src, i = self.src, 0
        trim_next = False
        while i < len(src):
            j = src.find("{{", i)
            end = len(src) if j < 0 else j
            text = src[i:end]
            if trim_next:
                text = text.lstrip(_WS)
            left_trim = _trim_mark(src, j)
            if left_trim:
                text = text.rstrip(_WS)
            if text:
                self.toks.append(_Tok("text", text, i))
            if j < 0:
                break
            i, trim_next = self.action(j, left_trim)
        self.toks.append(_Tok("eof", None, len(src)))
        return self.toks

    def action(self, start: int, left_trim: bool) -> tuple[int, bool]:
        """Lex one action from `start` ("{{"); return where the text goes on, and whether
        it is trimmed."""
        src = self.src
        i = start + 2 + (2 if left_trim else 0)
        comment = src.startswith("/*", i)
        if comment:
            close = src.find("*/", i + 2)
            if close < 0:
                raise self.error(start, "unclosed comment")
            i = close + 2
            for mark, trim in ((" -}}", True), ("}}", False)):
                if src.startswith(mark, i):
                    return i + len(mark), trim
            raise self.error(i, "comment ends before closing delimiter")
        self.toks.append(_Tok("open", None, start))
        spaced = left_trim
        while True:
            if i >= len(src):
                raise self.error(start, "unclosed action")
            c = src[i]
            if c in _WS:
                if src.startswith("-}}", i + 1):
                    self.toks.append(_Tok("close", None, i))
                    return i + 4, True
                i += 1
                spaced = True
                continue
            if src.startswith("}}", i):
                self.toks.append(_Tok("close", None, i))
                return i + 2, False
            tok, i = self.one(i, spaced)
            self.toks.append(tok)
            spaced = False

    def one(self, i: int, spaced: bool) -> tuple[_Tok, int]:
        src = self.src
        c = src[i]
        simple = {"|": "pipe", "(": "lparen", ")": "rparen", ",": "comma", "=": "assign"}
        if c in simple:
            return _Tok(simple[c], c, i, spaced), i + 1
        if src.startswith(":=", i):
            return _Tok("declare", ":=", i, spaced), i + 2
        if c == ".":
            m = _IDENT.match(src, i + 1)
            if m:
                return _Tok("field", m.group(), i, spaced), m.end()
            if i + 1 < len(src) and src[i + 1].isdigit():
                return self.number(i, spaced)
            return _Tok("dot", ".", i, spaced), i + 1
        if c == "$":
            m = _IDENT.match(src, i + 1)
            name = "$" + (m.group() if m else "")
            return _Tok("var", name, i, spaced), i + len(name)
        if c == '"':
            m = _STRING.match(src, i)
            if not m:
                raise self.error(i, "unterminated quoted string")
            return _Tok("str", self.unquote(m.group(), i), i, spaced), m.end()
        if c == "`":
            close = src.find("`", i + 1)
            if close < 0:
                raise self.error(i, "unterminated raw quoted string")
            return _Tok("str", src[i + 1 : close], i, spaced), close + 1
        if c == "'":
            m = _CHAR.match(src, i)
            text = self.unquote(m.group(), i) if m else ""
            if len(text) != 1:
                raise self.error(i, "malformed character constant")
            return _Tok("num", ord(text), i, spaced), m.end() if m else i + 1
        if c.isdigit() or (c in "+-" and i + 1 < len(src) and (src[i + 1].isdigit())):
            return self.number(i, spaced)
        m = _IDENT.match(src, i)
        if m:
            word = m.group()
            kind = {"true": "bool", "false": "bool", "nil": "nil"}.get(word, "ident")
            value: Any = word == "true" if kind == "bool" else None if kind == "nil" else word
            return _Tok(kind, value, i, spaced), m.end()
        raise self.error(i, f"unexpected {c!r} in action")

    def number(self, i: int, spaced: bool) -> tuple[_Tok, int]:
        m = _NUMBER.match(self.src, i)
        text = m.group() if m else ""
        try:
            clean = text.replace("_", "")
            is_int = not any(ch in clean for ch in ".eE") or clean.lower().startswith(
                ("0x", "-0x", "+0x")
            )
            value: int | float = int(clean, 0) if is_int else float(clean)
        except ValueError:
            raise self.error(i, f"bad number syntax: {text[:20]!r}") from None
        end = m.end() if m else i + 1
        if end < len(self.src) and (self.src[end].isalnum() or self.src[end] in "._"):
            raise self.error(i, "bad number syntax")
        return _Tok("num", value, i, spaced), end

    def unquote(self, literal: str, pos: int) -> str:
        try:
            value = ast.literal_eval(literal)  # a checked string literal: Go's escapes
        except (ValueError, SyntaxError):
            raise self.error(pos, f"invalid syntax in {literal[:20]!r}") from None
        if not isinstance(value, str):
            raise self.error(pos, "invalid string")
        return value


def _trim_mark(src: str, j: int) -> bool:
    """ "{{-" then a space, tab or newline: trims the text before (and "{{-3}}" is -3)."""
    return j >= 0 and src.startswith("{{-", j) and j + 3 < len(src) and src[j + 3] in _WS


def position(src: str, pos: int) -> str:
    line = src.count("\n", 0, pos) + 1
    col = pos - (src.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {col}"


# ---- syntax tree ----------------------------------------------------------------------------


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


# ---- parser -------------------------------------------------------------------------------


FUNCTIONS = frozenset(
    {"and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "len", "index", "slice"}
    | {"print", "println", "printf", "json"}
)


@dataclass
class _Parser:
    src: str
    toks: list[_Tok]
    i: int = 0
    depth: int = 0
    loops: int = 0
    scopes: list[str] = field(default_factory=lambda: ["$"])

    def error(self, tok: _Tok, message: str) -> TemplateError:
        return TemplateError(f"template: {position(self.src, tok.pos)}: {message}")

    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def next(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, kind: str, what: str) -> _Tok:
        tok = self.next()
        if tok.kind != kind:
            raise self.error(tok, f"unexpected {_describe(tok)}, expected {what}")
        return tok

    def enter(self, tok: _Tok) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(tok, f"nesting deeper than {MAX_DEPTH}")

    def parse(self) -> tuple[Any, ...]:
        nodes, end = self.items()
        if end is not None:
            raise self.error(end[1], f"unexpected {{{{{end[0]}}}}}")
        return nodes

    def items(self) -> tuple[tuple[Any, ...], tuple[str, _Tok] | None]:
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

    def keyword(self, word: str, tok: _Tok) -> Any:
        if word in ("break", "continue"):
            if not self.loops:
                raise self.error(tok, f"{{{{{word}}}}} outside {{{{range}}}}")
            self.expect("close", "}}")
            return Jump(word, tok.pos)
        if word in ("define", "template", "block"):
            raise self.error(tok, f"{{{{{word}}}}} is not supported")
        return self.branch(word, tok)

    def branch(self, kind: str, tok: _Tok) -> Branch:
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

    def pipeline(self, start: _Tok, *, decl_ok: bool = False, range_decl: bool = False) -> Pipe:
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
                raise self.error(_Tok("", None, c.pos), "only a function can follow |")
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


def _describe(tok: _Tok) -> str:
    names = {"close": '"}}"', "eof": "end of template", "rparen": '")"', "pipe": '"|"'}
    return names.get(tok.kind) or f"{tok.kind} {str(tok.value)[:20]!r}"


# ---- evaluation ---------------------------------------------------------------------------


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def truth(value: Any) -> bool:
    """Go's template truth: false, 0, nil and empty strings, slices and maps are false;
    structs are true."""
    if isinstance(value, Struct):
        return True
    if value is None:
        return False
    if isinstance(value, bool | int | float):
        return value != 0
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return True


def _go_float(x: float) -> str:
    """%v of a float64 (%g, shortest): an exponent below 1e-4 and from 1e6."""
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "+Inf" if x > 0 else "-Inf"
    d = Decimal(repr(x))
    exp = d.adjusted()
    if -4 <= exp < 6:
        text = format(d, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    sign, digits, _ = d.as_tuple()
    mant = "".join(map(str, digits)).rstrip("0") or "0"
    body = mant[0] + ("." + mant[1:] if len(mant) > 1 else "")
    return f"{'-' if sign else ''}{body}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"


def to_text(value: Any) -> str:
    """Go's fmt %v for template values."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, Struct):
        return "{" + " ".join(_inner_text(v) for v in value.values()) + "}"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_inner_text(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(_inner_text(v) for v in value) + "]"
    return str(value)


def _inner_text(value: Any) -> str:
    return "<nil>" if value is None else to_text(value)


def _json_ready(value: Any) -> Any:
    if isinstance(value, Struct):
        return {
            value.json_keys.get(k, k): _json_ready(v)
            for k, v in value.items()
            if not (k in value.omit_empty and not truth(v))
        }
    if isinstance(value, dict):  # Go's encoder writes a map's keys sorted
        return {str(k): _json_ready(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def go_json(value: Any) -> str:
    """Go's json.Marshal (Ollama's `json` function): compact, map keys sorted, struct
    fields in order, <, > and & escaped."""
    text = json.dumps(_json_ready(value), ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(ch, esc)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _kind(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


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
        raise self.error(pos, f"can't evaluate field {name} in type {_kind(value)}")

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
            return self.checked_value(_FUNCS[name](self, args), fn.pos)
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


def _want(args: list[Any], n: int, name: str) -> None:
    if len(args) != n:
        raise TypeError(f"wrong number of args for {name}: want {n} got {len(args)}")


def _fn_not(run: _Run, args: list[Any]) -> bool:
    _want(args, 1, "not")
    return not truth(args[0])


def _comparable(a: Any, b: Any) -> None:
    if _kind(a) != _kind(b) and "nil" not in (_kind(a), _kind(b)):
        raise TypeError("incompatible types for comparison")


def _fn_eq(run: _Run, args: list[Any]) -> bool:
    if len(args) < 2:
        raise TypeError("missing argument for comparison")
    first = args[0]
    for other in args[1:]:
        _comparable(first, other)
        if first == other:
            return True
    return False


def _fn_ne(run: _Run, args: list[Any]) -> bool:
    _want(args, 2, "ne")
    return not _fn_eq(run, args)


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[_Run, list[Any]], bool]:
    def compare(run: _Run, args: list[Any]) -> bool:
        _want(args, 2, "comparison")
        a, b = args
        _comparable(a, b)
        if _kind(a) not in ("number", "string"):
            raise TypeError("invalid type for comparison")
        return op(a, b)

    return compare


def _fn_len(run: _Run, args: list[Any]) -> int:
    _want(args, 1, "len")
    v = args[0]
    if isinstance(v, str):
        return len(v.encode("utf-8", "surrogatepass"))
    if isinstance(v, list | tuple) or (isinstance(v, dict) and not isinstance(v, Struct)):
        return len(v)
    raise TypeError(f"len of type {_kind(v)}")


def _fn_index(run: _Run, args: list[Any]) -> Any:
    if not args:
        raise TypeError("wrong number of args for index: want at least 1 got 0")
    value = args[0]
    for key in args[1:]:
        if isinstance(value, dict) and not isinstance(value, Struct):
            value = value.get(key)
        elif isinstance(value, list | tuple | str):
            if not isinstance(key, int) or isinstance(key, bool):
                raise TypeError("cannot index slice/array with non-integer")
            seq = value.encode() if isinstance(value, str) else value
            if not 0 <= key < len(seq):
                raise IndexError(f"index out of range: {key}")
            value = seq[key]
        else:
            raise TypeError(f"can't index item of type {_kind(value)}")
    return value


def _fn_slice(run: _Run, args: list[Any]) -> Any:
    if not args or len(args) > 4:
        raise TypeError("wrong number of args for slice")
    value, bounds = args[0], args[1:]
    if not isinstance(value, list | tuple | str):
        raise TypeError(f"can't slice item of type {_kind(value)}")
    seq: Any = value.encode() if isinstance(value, str) else value
    if any(not isinstance(b, int) or isinstance(b, bool) for b in bounds):
        raise TypeError("cannot slice with non-integer index")
    lo = bounds[0] if bounds else 0
    hi = bounds[1] if len(bounds) > 1 else len(seq)
    if not 0 <= lo <= hi <= len(seq):
        raise IndexError(f"slice bounds out of range [{lo}:{hi}]")
    part = seq[lo:hi]
    return part.decode("utf-8", "replace") if isinstance(value, str) else list(part)


def _fn_print(run: _Run, args: list[Any]) -> str:
    out = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(_inner_text(a))
    return "".join(out)


def _fn_println(run: _Run, args: list[Any]) -> str:
    return " ".join(_inner_text(a) for a in args) + "\n"


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def _fn_printf(run: _Run, args: list[Any]) -> str:
    if not args or not isinstance(args[0], str):
        raise TypeError("printf needs a format string")
    fmt, rest = args[0], list(args[1:])

    def one(m: re.Match[str]) -> str:
        flags, width, prec, verb = m.groups()
        if verb == "%":
            return "%"
        if int(width or 0) > _MAX_WIDTH or int(prec or 0) > _MAX_WIDTH:
            raise ValueError("printf width or precision too large")
        if not rest:
            return f"%!{verb}(MISSING)"
        a = rest.pop(0)
        spec = f"{flags}{width or ''}{'.' + prec if prec is not None else ''}"
        if verb in "vs":
            text = _inner_text(a) if verb == "v" or not isinstance(a, str) else a
            if prec is not None:
                text = text[: int(prec)]
            return format(text, f"{'<' if '-' in flags else '>'}{width or ''}")
        if verb == "q":
            return json.dumps(a if isinstance(a, str) else _inner_text(a), ensure_ascii=False)
        if verb == "t" and isinstance(a, bool):
            return "true" if a else "false"
        if verb in "dxXob" and isinstance(a, int) and not isinstance(a, bool):
            return format(a, spec.replace("-", "<") + verb)
        if verb in "feEgG" and isinstance(a, int | float) and not isinstance(a, bool):
            return format(float(a), spec.replace("-", "<") + verb)
        return f"%!{verb}({_inner_text(a)})"

    text = _VERB.sub(one, fmt)
    if rest:
        text += "%!(EXTRA " + ", ".join(_inner_text(a) for a in rest) + ")"
    return text


def _fn_json(run: _Run, args: list[Any]) -> str:
    _want(args, 1, "json")
    return go_json(args[0])


_FUNCS: dict[str, Callable[[_Run, list[Any]], Any]] = {
    "not": _fn_not,
    "eq": _fn_eq,
    "ne": _fn_ne,
    "lt": _ordered(lambda a, b: a < b),
    "le": _ordered(lambda a, b: a <= b),
    "gt": _ordered(lambda a, b: a > b),
    "ge": _ordered(lambda a, b: a >= b),
    "len": _fn_len,
    "index": _fn_index,
    "slice": _fn_slice,
    "print": _fn_print,
    "println": _fn_println,
    "printf": _fn_printf,
    "json": _fn_json,
}


# ---- the template -------------------------------------------------------------------------


@dataclass(frozen=True)
class GoTemplate:
    """A parsed template; `render` runs it on data (a dict for the top-level values)."""

    source: str
    nodes: tuple[Any, ...]

    @classmethod
    def parse(cls, source: str) -> GoTemplate:
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateError(f"the template is longer than {MAX_TEMPLATE_CHARS} characters")
        toks = _Lexer(source).run()
        return cls(source, _Parser(source, toks).parse())

    def render(
        self, data: Any, *, max_steps: int = MAX_STEPS, max_output: int = MAX_OUTPUT_CHARS
    ) -> str:
        run = _Run(self.source, data, max_steps, max_output)
        try:
            run.nodes(self.nodes, data)
        except RecursionError:
            raise TemplateError("template: nested too deeply") from None
        return "".join(run.out)

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
