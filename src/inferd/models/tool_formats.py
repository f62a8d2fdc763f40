"""How model families write tool calls, and how a model's format is chosen.

A format says where calls start (`markers`), how a call is laid out (a JSON object with the
function's `name` and its arguments under `arguments_key`, framed by `begin`/`end`, joined by
`separator`, all after `prefix`), and the trigger text after which output is constrained.
The format is chosen once per model: the `tool_format` setting, or else from the chat
template's text; a template that does not take a `tools` variable gets the tools described
in a system prompt (`describe_tools`) and answers in the Hermes format.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# the tool_format setting: "auto" detects; "off" serves no tools
TOOL_FORMATS = ("hermes", "llama3", "mistral", "json")
_JSON_START = '{"name"'
_TAKES_TOOLS = re.compile(r"\btools\b")


@dataclass(frozen=True, slots=True)
class ToolFormat:
    name: str
    trigger: str  # where a constrained call starts (`auto`: output is free until then)
    markers: tuple[str, ...]  # texts that start the calls part of an answer
    prefix: str = ""  # before all calls
    begin: str = ""  # before each call's JSON
    end: str = ""  # after each call's JSON
    separator: str = "\n"
    suffix: str = ""  # after all calls
    arguments_key: str = "arguments"

    def call_begin(self, name: str) -> str:
        """A call's text up to its arguments: the grammar's literal, the parser's input."""
        return f'{self.begin}{{"name": {json.dumps(name)}, "{self.arguments_key}": '

    def call_end(self) -> str:
        return "}" + self.end

    def render_calls(self, calls: list[tuple[str, Any]]) -> str:
        """(name, arguments) pairs as the model writes them (history for the fallback)."""
        body = self.separator.join(
            self.call_begin(name) + json.dumps(args, ensure_ascii=False) + self.call_end()
            for name, args in calls
        )
        return self.prefix + body + self.suffix


FORMATS = {
    "hermes": ToolFormat(
        "hermes",
        trigger="<tool_call>",
        markers=("<tool_call>", _JSON_START),
        begin="<tool_call>\n",
        end="\n</tool_call>",
    ),
    "llama3": ToolFormat(
        "llama3",
        trigger=_JSON_START,
        markers=("<|python_tag|>", _JSON_START),
        separator="; ",
        arguments_key="parameters",
    ),
    "mistral": ToolFormat(
        "mistral",
        trigger="[TOOL_CALLS]",
        markers=("[TOOL_CALLS]", _JSON_START),
        prefix="[TOOL_CALLS][",
        separator=", ",
        suffix="]",
    ),
    "json": ToolFormat("json", trigger=_JSON_START, markers=(_JSON_START, '[{"name"')),
}
# the texts between calls that the parser skips, whatever the format
_WRAPPERS = ("<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "<|eom_id|>")


@dataclass(frozen=True, slots=True)
class ToolSupport:
    """A model's tool calling: its call format, and whether its chat template renders the
    tools itself (else they are described in a system prompt). With
    `exclude_when_none`, a request whose tool_choice is "none" tells the model no tools."""

    format: ToolFormat
    in_template: bool
    exclude_when_none: bool = False


def tool_support(
    setting: str, template_source: str, *, exclude_when_none: bool = False
) -> ToolSupport | None:
    """From the model's `tool_format` setting ("auto", a format's name, "off") and its chat
    template; None: the model serves no tools."""
    if setting == "off":
        return None
    in_template = bool(_TAKES_TOOLS.search(template_source))
    name = setting if setting in FORMATS else detect(template_source)
    return ToolSupport(FORMATS[name], in_template, exclude_when_none)


def detect(template_source: str) -> str:
    """The format a chat template's text shows; Hermes for a template without tools."""
    if "<tool_call>" in template_source:
        return "hermes"
    if "[TOOL_CALLS]" in template_source:
        return "mistral"
    if "<|python_tag|>" in template_source or (
        "<|start_header_id|>" in template_source and _TAKES_TOOLS.search(template_source)
    ):
        return "llama3"
    if _TAKES_TOOLS.search(template_source):
        return "json"
    return "hermes"


def describe_tools(tools: list[dict[str, Any]], fmt: ToolFormat) -> str:
    """The system prompt that tells a model without a tool-aware template what it may call
    (docs/api.md shows it)."""
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    example = fmt.render_calls([("<function-name>", "<arguments-object>")]).replace(
        '"<arguments-object>"', "<arguments-object>"
    )
    return (
        "# Tools\n\n"
        "You may call one or more functions to assist with the user query. "
        "The functions you may call, as JSON schemas:\n"
        f"<tools>\n{listing}\n</tools>\n\n"
        "To call functions, answer with nothing but the calls, each a JSON object with the "
        "function's name and its arguments, like this:\n"
        f"{example}"
    )


@dataclass(frozen=True, slots=True)
class RawCall:
    name: str
    arguments: dict[str, Any]


def calls_start(text: str, fmt: ToolFormat, since: int = 0) -> int:
    """Where the calls part of `text` starts (at `since` or later), or -1."""
    found = [i for i in (text.find(m, since) for m in fmt.markers) if i >= 0]
    return min(found, default=-1)


def held_back(text: str, fmt: ToolFormat) -> int:
    """How many characters at the end of `text` could be the start of a marker (a stream
    holds them until it knows)."""
    held = 0
    for marker in fmt.markers:
        for k in range(min(len(marker) - 1, len(text)), held, -1):
            if text.endswith(marker[:k]):
                held = k
                break
    return held


def parse_calls(text: str, *, truncated: bool = False) -> list[RawCall] | None:
    """The calls in the calls part of an answer (from its first marker on): JSON objects
    with a name and arguments (or parameters), alone or in arrays, between any format's
    wrappers and separators. None when anything else is there, or when none is; in an
    answer cut short (`truncated`), the complete calls before the cut."""
    decoder = json.JSONDecoder()
    calls: list[RawCall] = []
    i = 0
    while i < len(text):
        if text[i].isspace() or text[i] in ",;":
            i += 1
            continue
        wrapper = next((w for w in _WRAPPERS if text.startswith(w, i)), None)
        if wrapper is not None:
            i += len(wrapper)
            continue
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return (calls or None) if truncated else None
        for item in value if isinstance(value, list) else [value]:
            call = _call(item)
            if call is None:
                return None
            calls.append(call)
    return calls or None


def _call(item: Any) -> RawCall | None:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return None
    args = item.get("arguments", item.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return RawCall(item["name"], args)
