"""Chat templates (Jinja, as in GGUF metadata), rendered in a sandbox."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.exceptions import SecurityError

from inferd.errors import InvalidRequest
from inferd.models.jinja_sandbox import (
    MAX_VALUE_CHARS,
    BoundedSandbox,
    Budget,
    Deadline,
    bounded_filter,
    weight,
)

# Used when a model carries no template of its own.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def with_content(
    messages: list[dict[str, Any]], mark: Callable[[str], str]
) -> list[dict[str, Any]]:
    """`messages` with every string content, and every string in their tool calls, passed
    through `mark` (models.content_marks)."""
    out = []
    for m in messages:
        if isinstance(m.get("content"), str):
            m = {**m, "content": mark(m["content"])}
        if m.get("tool_calls"):
            m = {**m, "tool_calls": marked_strings(m["tool_calls"], mark)}
        out.append(m)
    return out


def marked_strings(value: Any, mark: Callable[[str], str]) -> Any:
    """`value` (JSON-like: tool definitions, call arguments) with every string, keys aside,
    passed through `mark`, in a fixed order."""
    if isinstance(value, str):
        return mark(value)
    if isinstance(value, dict):
        return {k: marked_strings(v, mark) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [marked_strings(v, mark) for v in value]
    return value


# what `render` passes a template itself
_RENDER_VARIABLES = frozenset(
    {"messages", "add_generation_prompt", "bos_token", "eos_token", "range", "tools"}
)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template. Rendering never reaches Python internals (sandboxed)."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = bounded_filter("tojson", _tojson)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
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

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        variables: dict[str, Any] | None = None,
    ) -> str:
        """The prompt; `tools` (OpenAI-style function tools) go to the template's `tools`
        variable, as Hugging Face templates take them, and are left undefined when None;
        `variables` are a request's own (`chat_template_kwargs`), which may not replace
        the renderer's variables or the template's globals (a 400)."""
        taken = sorted(set(variables or ()) & (_RENDER_VARIABLES | self._template.globals.keys()))
        if taken:
            raise InvalidRequest(
                f"chat_template_kwargs may not set {taken[0]!r}: the server sets it",
                param="chat_template_kwargs",
            )
        size = weight(messages) + (weight(tools) if tools else 0)
        if size > MAX_VALUE_CHARS:
            # the real reason, before the template would say that it writes too much
            raise InvalidRequest(
                f"the messages are too long: over {MAX_VALUE_CHARS:,} characters "
                "(no model's context holds a prompt that long)",
                param="messages",
            )
        previous = sys.gettrace()
        sys.settrace(Deadline())
        try:
            return self._render(messages, add_generation_prompt, tools, variables or {})
        finally:
            sys.settrace(previous)

    def _render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None,
        variables: dict[str, Any],
    ) -> str:
        extra = variables if tools is None else {**variables, "tools": tools}
        try:
            out: list[str] = []
            size = 0
            for piece in self._template.generate(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
                range=Budget().range,
                **extra,
            ):
                size += len(piece)
                if size > MAX_VALUE_CHARS:
                    raise SecurityError("the chat template writes too much")
                out.append(piece)
            return "".join(out)
        except (TemplateError, RecursionError, TypeError, ValueError, MemoryError) as exc:
            raise InvalidRequest(
                f"the chat template rejected these messages: {exc}", param="messages"
            ) from None
