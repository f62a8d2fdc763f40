"""llguidance grammars (Lark text, JSON Schemas under `%json`) for structured output on
torch logits: any JSON object, JSON valid under a schema, and tagged JSON for tool calls
(`engine.structural`). Text only: compiled against a tokenizer in `constraint.py`.

JSON whitespace is at most one space between tokens, as llama.cpp's schema converter has it,
so a small model cannot pad an answer with blanks until max_tokens, and a schema shapes the
output alike on either runtime. A keyword
llguidance does not enforce (uniqueItems, not, ...) fails the compilation: the request is
refused rather than answered with JSON its schema does not hold.
"""

from __future__ import annotations

import json

from inferd.engine.structural import TaggedJson
from inferd.engine.types import SamplingParams

JSON_OPTIONS = {"whitespace_pattern": " ?"}
_HEADER = "%llguidance {}"
_ANY_OBJECT = '{"type": "object"}'  # json_mode: any JSON object, as on llama.cpp


def lark(params: SamplingParams) -> str | None:
    """The grammar of a request's structured output, or None for free text."""
    if params.tagged is not None:
        return tagged_lark(params.tagged)
    if params.json_schema is not None:
        return f"{_HEADER}\nstart: {json_value(params.json_schema)}\n"
    if params.json_mode:
        return f"{_HEADER}\nstart: {json_value(_ANY_OBJECT)}\n"
    return None


def json_value(schema: str) -> str:
    """A JSON value valid under `schema` (JSON text of an object), with bounded whitespace."""
    value = json.loads(schema)
    return "%json " + json.dumps({**value, "x-guidance": JSON_OPTIONS}, separators=(",", ":"))


def tagged_lark(shape: TaggedJson) -> str:
    """start: prefix, one tag (or tags joined by the separator), suffix; a tag: its begin
    text, a JSON value under its schema, its end text.

    A lazy shape starts with its trigger (`TaggedJson`): the grammar takes any text up to the
    trigger's first occurrence as one lazy lexeme, then the shape after the trigger (the
    prefix's rest, or the first tag with its begin's rest). `constraint.Constraint` starts it
    at the token where the trigger begins, so the text before is free."""
    cut = len(shape.trigger or "")
    lines: list[str] = []
    for i, tag in enumerate(shape.tags):
        lines.append(f"value_{i}: {json_value(tag.schema)}")
        lines.append(f"tag_{i}: {_seq(_literal(tag.begin), f'value_{i}', _literal(tag.end))}")
    lines.append("tag: " + " | ".join(f"tag_{i}" for i in range(len(shape.tags))))
    first, prefix = "tag", shape.prefix[cut:]
    if cut and not shape.prefix:  # each tag's begin starts with the trigger
        first = "first"
        for i, tag in enumerate(shape.tags):
            rest = _seq(_literal(tag.begin[cut:]), f"value_{i}", _literal(tag.end))
            lines.append(f"first_{i}: {rest}")
        lines.append("first: " + " | ".join(f"first_{i}" for i in range(len(shape.tags))))
    calls = f"{first} ({_seq(_literal(shape.separator), 'tag')})*" if shape.repeat else first
    body = _seq(_literal(prefix), calls, _literal(shape.suffix))
    if cut:
        head = [
            "start: trigger shape",
            f"trigger[lazy]: TEXT {_literal(shape.trigger or '')}",
            "TEXT: /(.|\\n)*/",
            f"shape: {body}",
        ]
    else:
        head = [f"start: {body}"]
    return "\n".join([_HEADER, *head, *lines]) + "\n"


def _literal(text: str) -> str:
    return json.dumps(text) if text else ""


def _seq(*parts: str) -> str:
    return " ".join(p for p in parts if p)
