"""Structured output for every dialect: JSON mode, or JSON matching a client's JSON Schema.

The schema is checked here, before anything reaches the engine: a JSON object, nested at
most `MAX_SCHEMA_DEPTH` levels, only local `$ref`s, bounded repetition counts (a grammar
grows with them), and valid under its JSON Schema metaschema (the `jsonschema` library).
The backend then compiles it into a grammar; what it cannot compile is a 400 as well.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for

from inferd.engine.client import EngineClient
from inferd.engine.types import SamplingParams
from inferd.errors import InvalidRequest

MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_CHARS = 32_768
MAX_REPEAT = 1000
_REPEAT_KEYS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """What the output must be: free text (both unset), any JSON object, or schema-valid JSON."""

    json_mode: bool = False
    json_schema: str | None = None  # the schema as compact JSON text


TEXT = OutputFormat()
JSON_OBJECT = OutputFormat(json_mode=True)


def schema_format(schema: Any, *, param: str) -> OutputFormat:
    """Validate a client's JSON Schema; a 400 naming `param` when it cannot be used."""
    if not isinstance(schema, dict):
        raise _bad(param, "the JSON schema must be a JSON object")
    _check_shape(schema, param)
    text = json.dumps(inline_root_ref(schema), separators=(",", ":"), ensure_ascii=False)
    if len(text) > MAX_SCHEMA_CHARS:
        raise _bad(param, f"the JSON schema is longer than {MAX_SCHEMA_CHARS} characters")
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        raise _bad(param, f"invalid JSON schema: {exc.message[:200]}") from None
    return OutputFormat(json_schema=text)


def inline_root_ref(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with a root `$ref` replaced by what it refers to. pydantic writes a
    recursive model as `{"$ref": "#/$defs/Node", "$defs": {"Node": ...}}`, and the grammar
    converter cannot start from a reference; the definitions stay, for the recursion.
    A reference that cannot be followed is left as it is (the converter says why)."""
    seen: set[str] = set()
    while isinstance(ref := schema.get("$ref"), str) and ref not in seen:
        seen.add(ref)
        target = _resolve(schema, ref)
        if not isinstance(target, dict):
            break
        schema = {k: v for k, v in schema.items() if k != "$ref"} | target
    return schema


def _resolve(schema: dict[str, Any], ref: str) -> Any:
    """`#/$defs/Node` in `schema` (JSON Pointer, with ~0 and ~1), or None."""
    if not ref.startswith("#/"):
        return None
    node: Any = schema
    for part in ref[2:].split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _check_shape(schema: dict[str, Any], param: str) -> None:
    """Depth, references and repetition counts, walked without recursion."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_SCHEMA_DEPTH:
            raise _bad(param, f"the JSON schema is nested more than {MAX_SCHEMA_DEPTH} levels deep")
        if isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
            continue
        ref = node.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
            raise _bad(param, "only local references ($ref starting with #/) are supported")
        for key in _REPEAT_KEYS:
            value = node.get(key)
            if isinstance(value, int) and value > MAX_REPEAT:
                raise _bad(param, f"{key} in the JSON schema may be at most {MAX_REPEAT}")
        stack.extend((v, depth + 1) for v in node.values())


async def check_format(engine: EngineClient, sampling: SamplingParams, *, param: str) -> None:
    """Let the backend compile the grammar now, so a schema it cannot use is a 400 before
    the response starts (not an error in the middle of a stream)."""
    try:
        await engine.check_sampling(sampling)
    except InvalidRequest as exc:
        raise _bad(param, exc.message) from None


def _bad(param: str, message: str) -> InvalidRequest:
    """The message names the parameter too: Ollama's errors carry only a message."""
    return InvalidRequest(f"{param}: {message}", param=param)
