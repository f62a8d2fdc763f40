"""Chat templates (Jinja, as in GGUF metadata), rendered in a sandbox."""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from types import FrameType
from typing import Any

from jinja2 import TemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inferd.errors import InvalidRequest

# Used when a model carries no template of its own.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# Bounds on one rendering: loop iterations over range(), characters of output, and the size of
# a string or list made with `*` (a template from a GGUF file or a config is not trusted).
MAX_RANGE_STEPS = 100_000
MAX_OUTPUT_CHARS = 4_000_000
# Wall-clock bound on one rendering, checked on every line the compiled template runs (nested
# loops over a request's messages, iterating over long strings).
MAX_RENDER_SECONDS = 2.0
# "%999999999s"-style widths in the format filter
_FORMAT_WIDTH = re.compile(r"%[-+ #0]*(\d+)")


def _too_big(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_OUTPUT_CHARS


def _check_args(what: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Widths and counts (center, ljust, indent, wordwrap, ...) that would build huge values."""
    if any(map(_too_big, args)) or any(map(_too_big, kwargs.values())):
        raise SecurityError(f"the chat template asks {what} for too large a size")


def _check_format(fmt: Any) -> None:
    if isinstance(fmt, str) and any(int(w) > MAX_OUTPUT_CHARS for w in _FORMAT_WIDTH.findall(fmt)):
        raise SecurityError("the chat template formats too wide a field")


def _bounded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _check_args(f"the filter {name}", args, kwargs)
        if name == "format":
            for a in args:
                _check_format(a)
        return f(*args, **kwargs)

    return wrapper


class _Deadline:
    """A tracer that stops a rendering past its time: only the compiled template's own frames
    are traced (their code is named "<template>"), so the cost stays in the template."""

    def __init__(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != "<template>":
            return None
        return self._line

    def _line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > self.until:
            raise SecurityError("the chat template takes too long to render")
        return self._line


class _Budget:
    """The range() of one rendering: every iteration of every loop over it counts."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def range(self, *args: int) -> Any:
        for i in range(*args):
            self.steps -= 1
            if self.steps < 0:
                raise SecurityError("the chat template loops too long")
            yield i


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "%":
            _check_format(left)
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise SecurityError("the chat template computes too large a power")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_OUTPUT_CHARS
                ):
                    raise SecurityError("the chat template builds too large a value")
        return super().call_binop(context, operator, left, right)

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_args(f"{getattr(__obj, '__name__', 'a function')}()", args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template. Rendering never reaches Python internals (sandboxed)."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = _tojson
        for name, f in list(env.filters.items()):
            env.filters[name] = _bounded_filter(name, f)
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise InvalidRequest(f"invalid chat template: {exc}", param="chat_template") from None
        except RecursionError:  # Jinja's parser and compiler recurse per nesting level
            raise InvalidRequest(
                "invalid chat template: nested too deeply", param="chat_template"
            ) from None
        self.source = source
        self._bos = bos_token
        self._eos = eos_token

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True) -> str:
        previous = sys.gettrace()
        sys.settrace(_Deadline(MAX_RENDER_SECONDS))
        try:
            return self._render(messages, add_generation_prompt)
        finally:
            sys.settrace(previous)

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        try:
            out: list[str] = []
            size = 0
            for piece in self._template.generate(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
                range=_Budget(MAX_RANGE_STEPS).range,
            ):
                size += len(piece)
                if size > MAX_OUTPUT_CHARS:
                    raise SecurityError("the chat template writes too much")
                out.append(piece)
            return "".join(out)
        except (TemplateError, RecursionError, TypeError, ValueError, MemoryError) as exc:
            raise InvalidRequest(
                f"the chat template rejected these messages: {exc}", param="messages"
            ) from None
