"""Tool calling, once for every dialect.

An adapter turns its wire `tools` and `tool_choice` into a `ToolRequest` (`tool_request`,
or `function_tool` for one tool at a time). For the run, `tool_use` joins it with the
model's `ToolSupport` (its call format, `models.tool_formats`) into a `ToolUse`, which:

- puts the tools in the prompt: the chat template's `tools` variable, or a system prompt
  describing them (and history calls and results in the model's format) when the template
  has no place for them;
- constrains the output: `required` and a named function with a grammar from the tools'
  JSON schemas from the first token, `auto` lazily from the format's trigger text on;
- parses the answer into content and calls (`parse`, or `stream` for pieces as they come),
  each call's arguments validated against its schema. What cannot be parsed or validated
  is returned as text.

Requests without tools never reach this module: nothing here runs per token for them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from jsonschema.validators import Draft202012Validator, validator_for

from inferd.api.pipeline.request import ChatPrompt, Prompt
from inferd.api.structured import TEXT, OutputFormat, schema_format
from inferd.engine.structural import JsonTag, TaggedJson
from inferd.engine.types import SamplingParams
from inferd.errors import InvalidRequest, UnsupportedParameter
from inferd.models.registry import LoadedModel
from inferd.models.tool_formats import (
    RawCall,
    ToolFormat,
    ToolSupport,
    calls_start,
    describe_tools,
    held_back,
    parse_calls,
)

MAX_TOOLS = 128
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
CHOICES = ("none", "auto", "required")


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; `parameters` is a JSON Schema (checked)."""

    name: str
    description: str
    parameters: dict[str, Any]
    schema: str  # the parameters as compact JSON text, for the grammar

    def spec(self) -> dict[str, Any]:
        """As chat templates (and the fallback description) take it: OpenAI's shape."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """The tools of a request and how they may be used: `choice` none, auto, required, or
    `function` (then `function` names the one to call)."""

    tools: tuple[Tool, ...]
    choice: str = "auto"
    function: str | None = None
    parallel: bool = True
    param: str = "tools"
    choice_param: str = "tool_choice"

    @property
    def offered(self) -> tuple[Tool, ...]:
        """The tools the model may call."""
        if self.choice == "none":
            return ()
        if self.choice == "function":
            return tuple(t for t in self.tools if t.name == self.function)
        return self.tools


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """An answer: its text (what precedes the calls, or all of it) and its calls."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)


# ---- from the wire -----------------------------------------------------------------------


def function_tool(name: Any, description: Any, parameters: Any, *, param: str) -> Tool:
    """One function tool, checked; 400s name `param` (the tool's place on the wire)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequest(
            "a function's name must be 1 to 64 letters, digits, '_', '-', '.' or ':'",
            param=f"{param}.name",
        )
    if description is not None and not isinstance(description, str):
        raise InvalidRequest("description must be a string", param=f"{param}.description")
    if parameters is None:
        parameters = _NO_PARAMETERS
    schema = schema_format(parameters, param=f"{param}.parameters").json_schema or "{}"
    return Tool(name, description or "", parameters, schema)


def tool_request(
    tools: Any,
    choice: Any = None,
    parallel: bool | None = None,
    *,
    param: str = "tools",
    choice_param: str = "tool_choice",
) -> ToolRequest | None:
    """`tools` as OpenAI and Ollama send them (`{"type": "function", "function": {name,
    description, parameters}}`, or Responses' flat `{"type": "function", name, ...}`) and
    `tool_choice` ("none", "auto", "required", `{"type": "function", "function": {"name"}}`
    or `{"type": "function", "name"}`, or the legacy `{"name"}`). None without tools."""
    if not tools:
        if choice not in (None, "none", "auto"):
            raise InvalidRequest(f"{choice_param} needs tools", param=choice_param)
        return None
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list", param=param)
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"at most {MAX_TOOLS} tools are allowed", param=param)
    parsed = tuple(_wire_tool(t, f"{param}[{i}]") for i, t in enumerate(tools))
    names = [t.name for t in parsed]
    if len(set(names)) != len(names):
        raise InvalidRequest("tools must have distinct names", param=param)
    mode, function = _choice(choice, choice_param)
    if function is not None and function not in names:
        raise InvalidRequest(
            f"{choice_param} names {function!r}, not one of the tools", param=choice_param
        )
    return ToolRequest(
        parsed, mode, function, True if parallel is None else parallel, param, choice_param
    )


def _wire_tool(tool: Any, param: str) -> Tool:
    if not isinstance(tool, dict):
        raise InvalidRequest("a tool must be an object", param=param)
    if tool.get("type", "function") != "function":
        raise UnsupportedParameter(
            f"tools of type {str(tool.get('type'))[:40]!r} are not supported (only function)",
            param=f"{param}.type",
        )
    function = tool.get("function", tool if "name" in tool else None)
    where = f"{param}.function" if "function" in tool else param
    if not isinstance(function, dict):
        raise InvalidRequest("a function tool needs a function object", param=where)
    return function_tool(
        function.get("name"),
        function.get("description"),
        function.get("parameters"),
        param=where,
    )


def _choice(choice: Any, param: str) -> tuple[str, str | None]:
    if choice is None:
        return "auto", None
    if isinstance(choice, str):
        if choice not in CHOICES:
            raise InvalidRequest(f"{param} must be none, auto, required or a function", param=param)
        return choice, None
    if isinstance(choice, dict):
        named = choice.get("function", choice)
        name = named.get("name") if isinstance(named, dict) else None
        if isinstance(name, str):
            return "function", name
    raise InvalidRequest(
        f'{param} must be "none", "auto", "required" or {{"type": "function", '
        '"function": {"name": ...}}',
        param=param,
    )


# ---- for a run ---------------------------------------------------------------------------


def tool_use(model: LoadedModel, request: ToolRequest, output: OutputFormat) -> ToolUse:
    """The request's tools on this model; Ollama's 400 when its settings turn tools off."""
    support = model.tools
    if support is None:
        raise UnsupportedParameter(f"{model.name} does not support tools", param=request.param)
    if request.choice in ("required", "function") and output != TEXT:
        raise InvalidRequest(
            f"{request.choice_param} {request.choice} cannot be combined with a JSON output format",
            param=request.choice_param,
        )
    grammars = model.engine.info.grammars
    if request.choice in ("required", "function") and not grammars:
        raise InvalidRequest(
            f"{request.choice_param} {request.choice} needs constrained decoding, which "
            f'{model.name}\'s runtime does not have: use "auto" or "none"',
            param=request.choice_param,
        )
    # without grammars, auto still offers the tools and parses the calls the model writes
    # (validated against their schemas; anything else is returned as text)
    return ToolUse(request, support, constrain_calls=output == TEXT and grammars)


@dataclass(frozen=True, slots=True)
class ToolUse:
    request: ToolRequest
    support: ToolSupport
    constrain_calls: bool = True  # False: a JSON output format has the grammar, or no grammars

    @property
    def format(self) -> ToolFormat:
        return self.support.format

    def prompt(self, prompt: Prompt) -> Prompt:
        """The chat prompt with the tools: in the template's `tools` variable, or described
        in the system prompt (then the history's calls and results are written out too).
        Every tool the request declares, whatever `tool_choice` says (as OpenAI and vLLM
        do: "none" and a named function decide what the answer may be, not what the model
        is told; a model that still writes a call under "none" has it returned as text),
        unless the model's settings exclude them under "none" (`exclude_when_none`)."""
        if not isinstance(prompt, ChatPrompt):
            return prompt
        excluded = self.request.choice == "none" and self.support.exclude_when_none
        specs = None if excluded else [t.spec() for t in self.request.tools] or None
        if self.support.in_template:
            return dataclasses.replace(prompt, tools=specs)
        messages = _written_history(prompt.messages, self.format)
        if specs:
            messages = _with_system(messages, describe_tools(specs, self.format))
        return dataclasses.replace(prompt, messages=messages)

    def constrain(self, sampling: SamplingParams) -> SamplingParams:
        """The sampling with the calls' grammar: from the first token (required, a named
        function) or from the format's trigger on (auto)."""
        req = self.request
        if req.choice == "none" or not self.constrain_calls:
            return sampling
        if sampling.ignore_eos:
            # the grammar ends the answer with EOS after the calls
            raise InvalidRequest(
                f"ignore_eos cannot be combined with tools (tool_choice {req.choice}); "
                'use tool_choice "none"',
                param=req.choice_param,
            )
        fmt = self.format
        shape = TaggedJson(
            tuple(JsonTag(fmt.call_begin(t.name), t.schema, fmt.call_end()) for t in req.offered),
            prefix=fmt.prefix,
            separator=fmt.separator,
            suffix=fmt.suffix,
            repeat=req.parallel and req.choice != "function",
            trigger=fmt.trigger if req.choice == "auto" else None,
        )
        return dataclasses.replace(sampling, tagged=shape)

    def parse(self, text: str, *, truncated: bool = False) -> ToolOutput:
        """An answer's content and calls; all text when it holds no valid calls. An answer
        cut short (`truncated`: it reached max_tokens) keeps its complete calls."""
        if self.request.choice == "none":
            return ToolOutput(text)
        start = calls_start(text, self.format)
        calls = self._calls(text[start:], truncated) if start >= 0 else None
        return ToolOutput(text) if calls is None else ToolOutput(text[:start], calls)

    def stream(self) -> ToolStream:
        return ToolStream(self)

    def _calls(self, text: str, truncated: bool) -> list[ToolCall] | None:
        raw = parse_calls(text, truncated=truncated)
        if raw is None:
            return None
        offered = {t.name: t for t in self.request.offered}
        calls = []
        for call in raw if self.request.parallel else raw[:1]:
            tool = offered.get(call.name)
            if tool is None or not _valid(tool, call):
                return None
            calls.append(ToolCall(f"call_{secrets.token_hex(12)}", call.name, call.arguments))
        return calls


def _valid(tool: Tool, call: RawCall) -> bool:
    validator = validator_for(tool.parameters, default=Draft202012Validator)(tool.parameters)
    return bool(validator.is_valid(call.arguments))


class ToolStream:
    """An answer's pieces as they come: `feed` returns the text that can be sent now (text
    that may start a call is held back), `finish` the rest and the calls."""

    def __init__(self, use: ToolUse) -> None:
        self._use = use
        self._text = ""
        self._sent = 0
        self._start = -1

    def feed(self, piece: str) -> str:
        self._text += piece
        fmt = self._use.format
        if self._start >= 0 or self._use.request.choice == "none":
            return "" if self._start >= 0 else self._send(len(self._text))
        # a marker can only start in what was held back or just came
        self._start = calls_start(self._text, fmt, self._sent)
        if self._start >= 0:
            return self._send(self._start)
        return self._send(len(self._text) - held_back(self._text, fmt))

    def finish(self, *, truncated: bool = False) -> ToolOutput:
        """The text not sent yet and the calls (none: that text holds them, unparsed)."""
        out = self._use.parse(self._text, truncated=truncated)
        rest = self._text[self._sent :]
        return ToolOutput("", out.calls) if out.calls else ToolOutput(rest)

    def _send(self, end: int) -> str:
        out = self._text[self._sent : end]
        self._sent = max(self._sent, end)
        return out


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """`text` at the start of the system message (a new one when there is none)."""
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        return [{**first, "content": f"{text}\n\n{first.get('content') or ''}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _written_history(messages: list[dict[str, Any]], fmt: ToolFormat) -> list[dict[str, Any]]:
    """For a template without tools: an assistant's calls as text in the model's format,
    tool results as user turns in <tool_response> blocks (consecutive ones in one turn)."""
    out: list[dict[str, Any]] = []
    results = False
    for m in messages:
        role = m.get("role")
        if role == "tool":
            block = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            if results:
                out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n{block}"}
            else:
                out.append({"role": "user", "content": block})
            results = True
            continue
        results = False
        calls = m.get("tool_calls")
        if role == "assistant" and calls:
            written = fmt.render_calls(
                [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
            )
            content = m.get("content") or ""
            out.append({"role": "assistant", "content": f"{content}\n{written}".lstrip("\n")})
            continue
        out.append(m)
    return out
