"""Chat templates (Jinja, as in GGUF metadata), rendered in a sandbox."""

from __future__ import annotations

import json
from datetime import datetime
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
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
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
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise InvalidRequest(f"invalid chat template: {exc}", param="chat_template") from None
        self.source = source
        self._bos = bos_token
        self._eos = eos_token

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True) -> str:
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
