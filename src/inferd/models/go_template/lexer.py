"""The lexer: template source to tokens (text, action delimiters with trimming, operands)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

from inferd.models.go_template.errors import TemplateError, position

_WS = " \t\r\n"


@dataclass(frozen=True, slots=True)
class Tok:
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


class Lexer:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks: list[Tok] = []

    def error(self, pos: int, message: str) -> TemplateError:
        return TemplateError(f"template: {position(self.src, pos)}: {message}")

    def run(self) -> list[Tok]:
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
                self.toks.append(Tok("text", text, i))
            if j < 0:
                break
            i, trim_next = self.action(j, left_trim)
        self.toks.append(Tok("eof", None, len(src)))
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
        self.toks.append(Tok("open", None, start))
        spaced = left_trim
        while True:
            if i >= len(src):
                raise self.error(start, "unclosed action")
            c = src[i]
            if c in _WS:
                if src.startswith("-}}", i + 1):
                    self.toks.append(Tok("close", None, i))
                    return i + 4, True
                i += 1
                spaced = True
                continue
            if src.startswith("}}", i):
                self.toks.append(Tok("close", None, i))
                return i + 2, False
            tok, i = self.one(i, spaced)
            self.toks.append(tok)
            spaced = False

    def one(self, i: int, spaced: bool) -> tuple[Tok, int]:
        src = self.src
        c = src[i]
        simple = {"|": "pipe", "(": "lparen", ")": "rparen", ",": "comma", "=": "assign"}
        if c in simple:
            return Tok(simple[c], c, i, spaced), i + 1
        if src.startswith(":=", i):
            return Tok("declare", ":=", i, spaced), i + 2
        if c == ".":
            m = _IDENT.match(src, i + 1)
            if m:
                return Tok("field", m.group(), i, spaced), m.end()
            if i + 1 < len(src) and src[i + 1].isdigit():
                return self.number(i, spaced)
            return Tok("dot", ".", i, spaced), i + 1
        if c == "$":
            m = _IDENT.match(src, i + 1)
            name = "$" + (m.group() if m else "")
            return Tok("var", name, i, spaced), i + len(name)
        if c == '"':
            m = _STRING.match(src, i)
            if not m:
                raise self.error(i, "unterminated quoted string")
            return Tok("str", self.unquote(m.group(), i), i, spaced), m.end()
        if c == "`":
            close = src.find("`", i + 1)
            if close < 0:
                raise self.error(i, "unterminated raw quoted string")
            return Tok("str", src[i + 1 : close], i, spaced), close + 1
        if c == "'":
            m = _CHAR.match(src, i)
            text = self.unquote(m.group(), i) if m else ""
            if len(text) != 1:
                raise self.error(i, "malformed character constant")
            return Tok("num", ord(text), i, spaced), m.end() if m else i + 1
        if c.isdigit() or (c in "+-" and i + 1 < len(src) and (src[i + 1].isdigit())):
            return self.number(i, spaced)
        m = _IDENT.match(src, i)
        if m:
            word = m.group()
            kind = {"true": "bool", "false": "bool", "nil": "nil"}.get(word, "ident")
            value: Any = word == "true" if kind == "bool" else None if kind == "nil" else word
            return Tok(kind, value, i, spaced), m.end()
        raise self.error(i, f"unexpected {c!r} in action")

    def number(self, i: int, spaced: bool) -> tuple[Tok, int]:
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
        return Tok("num", value, i, spaced), end

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
