"""Chat template variables a request sets: `chat_template_kwargs` as vLLM and llama-server
take it (`{"enable_thinking": false}` turns Qwen 3's thinking off in its template), the
`enable_thinking` shorthand, Ollama's `think`, and OpenAI's reasoning effort
(`reasoning_effort`, the Responses API's `reasoning.effort`) as vLLM and llama-server map it:
the template sees `reasoning_effort` (gpt-oss's templates read it) and `enable_thinking`,
false for "none" and true for any other effort, unless the request sets either variable
itself (what it sets wins).

Only scalars (strings, numbers, booleans, null) with identifier names, at most
`MAX_VARIABLES` of them and `MAX_STRING` characters a string: a template sees nothing a
client could use to make it loop or grow (its render budget applies as ever). String values
are content, marked while the template renders (api/prompting.py), so special-token text
in them stays text. A name the renderer sets itself (messages, tools, bos_token, ...) or a
template global (range, raise_exception, ...) is refused by the template (`ChatTemplate`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from inferd.errors import InvalidRequest

MAX_VARIABLES = 16
MAX_STRING = 4096
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MAX_INT = 2**53


def template_variables(
    kwargs: Any,
    *,
    enable_thinking: bool | None = None,
    reasoning_effort: str | None = None,
    param: str = "chat_template_kwargs",
    thinking_param: str = "enable_thinking",
) -> dict[str, Any] | None:
    """The checked variables (None: none given); `enable_thinking` adds that one (a 400
    when `kwargs` says otherwise); a `reasoning_effort` (checked by the dialect's schema)
    adds the variables it implies that neither says."""
    if kwargs is None and enable_thinking is None and reasoning_effort is None:
        return None
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise InvalidRequest(f"{param} must be an object", param=param)
    if len(kwargs) > MAX_VARIABLES:
        raise InvalidRequest(f"{param} may set at most {MAX_VARIABLES} variables", param=param)
    for name, value in kwargs.items():
        if not _NAME.fullmatch(name):
            raise InvalidRequest(
                f"{param}: a variable's name must be a letter or _ then up to 63 letters, "
                "digits or _",
                param=param,
            )
        _check_value(value, f"{param}.{name}")
    if enable_thinking is not None:
        if kwargs.get("enable_thinking", enable_thinking) != enable_thinking:
            raise InvalidRequest(
                f"{thinking_param} and {param}.enable_thinking disagree", param=thinking_param
            )
        kwargs = {**kwargs, "enable_thinking": enable_thinking}
    if reasoning_effort is not None:
        kwargs = {**_effort_variables(reasoning_effort), **kwargs}
    return dict(kwargs)


def _effort_variables(effort: str) -> dict[str, Any]:
    """What a reasoning effort says to a template: "none" turns thinking off (and names no
    effort, as llama-server), any other turns it on at that effort."""
    if effort == "none":
        return {"enable_thinking": False}
    return {"enable_thinking": True, "reasoning_effort": effort}


def _check_value(value: Any, param: str) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > _MAX_INT:
            raise InvalidRequest(f"{param} must be within ±2^53", param=param)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(f"{param} must be a finite number", param=param)
        return
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise InvalidRequest(f"{param} may be at most {MAX_STRING} characters", param=param)
        return
    raise InvalidRequest(
        f"{param} must be a string, a number, a boolean or null (not an object or a list)",
        param=param,
    )
