"""The sandboxed Jinja environment chat templates render in, and its bounds.

A template from a GGUF file, a config or a request is not trusted. Beyond Jinja's sandbox
(no attribute walks to Python internals, no mutation of lists and dicts), one rendering may
not loop past `MAX_RANGE_STEPS`, run past `MAX_RENDER_SECONDS`, or build any value larger than
`MAX_VALUE_CHARS`: every value a filter, a call, an operator (`+ * % ** ~`), a macro, a block
or an output makes is weighed (a list weighs what it would be written out as, so 250 copies
of one 4 MB string weigh 1 GB), and operations whose result can outgrow their operands many
times (`*`, `join` and `replace` with a separator, widths and padding) are weighed before
they run. Memory stays at a small multiple of the bound.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

MAX_RANGE_STEPS = 100_000
# the output, and any one value built while rendering (characters, when written out)
MAX_VALUE_CHARS = 4_000_000
# Wall-clock bound on one rendering, checked on every line the compiled template runs (nested
# loops over a request's messages, iterating over long strings).
MAX_RENDER_SECONDS = 2.0
MAX_INT_BITS = 4096
MAX_JSON_INDENT = 64
# "%999999999s"-style widths in % formatting, "{:>999999999}" in str.format
_PERCENT_WIDTH = re.compile(r"%[-+ #0]*(\d+)")
_BRACE_NUMBER = re.compile(r"\{[^{}]*?(\d+)[^{}]*\}")


def weight(value: Any, limit: int = MAX_VALUE_CHARS) -> int:
    """About how many characters `value` is when written out, counting every reference (a
    list of one string 250 times weighs 250 strings); counting stops once past `limit`."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, list | tuple | dict):
            total += len(v) + 1
            if total <= limit:  # not a long list's items when its length alone is too long
                stack.extend(v.items() if isinstance(v, dict) else v)
        elif isinstance(v, Namespace):
            stack.append(object.__getattribute__(v, "_Namespace__attrs"))
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1  # decimal digits
        else:
            total += 1
    return total


def _refuse_over(size: int, what: str) -> None:
    if size > MAX_VALUE_CHARS:
        raise SecurityError(f"the chat template {what} too large a value")


def bounded(value: Any) -> Any:
    _refuse_over(weight(value), "builds")
    return value


def _too_big(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_VALUE_CHARS


def _check_args(what: str, args: Iterable[Any]) -> None:
    """Widths and counts (center, ljust, indent, wordwrap, ...) that would build huge values."""
    if any(map(_too_big, args)):
        raise SecurityError(f"the chat template asks {what} for too large a size")


def _check_format(fmt: Any) -> None:
    if not isinstance(fmt, str):
        return
    widths = _PERCENT_WIDTH.findall(fmt) + _BRACE_NUMBER.findall(fmt)
    if any(len(w) > 7 or int(w) > MAX_VALUE_CHARS for w in widths):
        raise SecurityError("the chat template formats too wide a field")


def _check_join(sep: Any, items: Any) -> None:
    if isinstance(items, list | tuple | dict | str):
        size = weight(items) + len(sep if isinstance(sep, str) else "") * len(items)
        _refuse_over(size, "joins")


def _check_replace(s: Any, old: Any, new: Any, count: Any = -1) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        n = s.count(old) if old else len(s) + 1
        if isinstance(count, int) and count >= 0:
            n = min(n, count)
        _refuse_over(len(s) + n * max(0, len(new) - len(old)), "replaces into")


def _check_lines(s: Any, prefix: Any) -> None:
    """indent/wordwrap with a string: it is added once per line (or wrap)."""
    if isinstance(s, str) and isinstance(prefix, str):
        _refuse_over(len(s) + (s.count("\n") + len(s) // 8 + 1) * len(prefix), "indents into")


def _precheck(name: str, operands: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """What a filter or str method may build beyond its operands (the value, or the string
    the method is called on, first), weighed before it runs."""
    _check_args(f"the filter or method {name}", [*operands, *kwargs.values()])
    first = operands[0] if operands else None
    if name in ("format", "format_map"):
        _check_format(first)
    elif name == "replace" and len(operands) >= 3:
        _check_replace(*operands[:4])
    elif name in ("indent", "wordwrap"):
        for extra in (*operands[1:], *kwargs.values()):
            _check_lines(first, extra)
    elif name == "expandtabs" and isinstance(first, str):
        tabsize = operands[1] if len(operands) > 1 else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            _refuse_over(len(first) + first.count("\t") * tabsize, "expands")
    elif name == "tojson":
        indent = operands[1] if len(operands) > 1 else kwargs.get("indent")
        if isinstance(indent, int) and indent > MAX_JSON_INDENT:
            raise SecurityError("the chat template indents JSON too deeply")


def bounded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    """A filter weighed before (what it may build) and after (what it built)."""
    # Jinja passes some filters its context or environment first (they carry the mark)
    skip = 1 if getattr(f, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        operands = args[skip:]
        _precheck(name, operands, kwargs)
        if name == "join" and operands:
            _check_join(operands[1] if len(operands) > 1 else kwargs.get("d", ""), operands[0])
        return bounded(f(*args, **kwargs))

    return wrapper


class Deadline:
    """A tracer that stops a rendering past its time: only the compiled template's own frames
    are traced (their code is named "<template>"), so the cost stays in the template."""

    def __init__(self, seconds: float = MAX_RENDER_SECONDS) -> None:
        self.until = time.monotonic() + seconds

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != "<template>":
            return None
        return self._line

    def _line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > self.until:
            raise SecurityError("the chat template takes too long to render")
        return self._line


class Budget:
    """The range() of one rendering: every iteration of every loop over it counts."""

    def __init__(self, steps: int = MAX_RANGE_STEPS) -> None:
        self.steps = steps

    def range(self, *args: int) -> Any:
        for i in range(*args):
            self.steps -= 1
            if self.steps < 0:
                raise SecurityError("the chat template loops too long")
            yield i


class _BoundedCodeGenerator(CodeGenerator):
    """`a ~ b` through the environment's bounded concatenation, not Jinja's plain join."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.concat_values((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "%":
        _check_format(left)
        _refuse_over(weight(left) + weight(right), "formats")
    elif operator == "**" and isinstance(right, int | float):
        bits = abs(left).bit_length() if isinstance(left, int) else 64
        if abs(right) > 64 or bits * abs(right) > MAX_INT_BITS:
            raise SecurityError("the chat template computes too large a power")
    elif operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise SecurityError("the chat template computes too large a number")
            return
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(times, int):
                _refuse_over(weight(seq) * times, "repeats into")
    elif operator == "+":
        _refuse_over(weight(left) + weight(right), "adds up to")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with every value it builds weighed (see the module)."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=bounded, **options)
        del self.globals["lipsum"]  # lorem ipsum of any length; no chat template uses it
        for name, f in list(self.filters.items()):
            self.filters[name] = bounded_filter(name, f)

    def concat(self, pieces: Iterable[str]) -> str:
        """Joins what a macro, a `{% set %}` block or a `{% filter %}` block wrote."""
        written = list(pieces)
        _refuse_over(sum(map(len, written)), "writes")
        return "".join(written)

    def concat_values(self, values: tuple[Any, ...]) -> str:
        _refuse_over(sum(weight(v) for v in values), "concatenates")
        return "".join(map(str, values))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`"...".format(...)` (sandboxed by Jinja at attribute access): widths bounded."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            _check_format(fmt)
            _refuse_over(len(fmt) + weight(args) + weight(kwargs), "formats")
            return wrapped(*args, **kwargs)

        return checked

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(__obj, "__name__", "a function")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):  # a str method: the string is its first operand
            _precheck(name, (owner, *args), kwargs)
            if name == "join" and args:
                _check_join(owner, args[0])
        else:
            _check_args(f"{name}()", [*args, *kwargs.values()])
        return bounded(super().call(__context, __obj, *args, **kwargs))
