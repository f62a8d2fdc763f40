"""GBNF grammars for llama.cpp's grammar sampler: JSON (any object, or valid under a JSON
Schema) and tagged JSON (tool calls: JSON values in literal text, `engine.structural`).
Schemas go through llama.cpp's own converter, with numbers kept within their bounds
(`bounds.py`) and to their `multipleOf` (`multiples.py`), which it leaves out."""

from __future__ import annotations

import json
import re
from typing import Any

import llama_cpp.llama_grammar as llama_grammar

from inferd.engine.backends.llamacpp.bounds import BOUND_KEYS, integer_rule, number_rule
from inferd.engine.backends.llamacpp.multiples import multiple_rule
from inferd.engine.structural import TaggedJson
from inferd.engine.types import SamplingParams

_REGEX_SPECIAL = re.compile(r"[\\^$.|?*+()\[\]{}]")
_LITERAL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# schema keywords the converter handles before a value's type
_BEFORE_TYPE = frozenset({"$ref", "oneOf", "anyOf", "allOf", "const", "enum"})
# keywords on numbers the converter leaves out
_NUMBER_KEYS = BOUND_KEYS | {"multipleOf"}


class _Converter(llama_grammar.SchemaConverter):
    """llama.cpp's converter, with integers and numbers kept within their bounds and to
    their multipleOf (a type list, such as ["integer", "null"], keeps them per type)."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)

    def visit(self, schema: dict[str, Any], name: str) -> str:
        kind = schema.get("type")
        if not _NUMBER_KEYS & schema.keys() or _BEFORE_TYPE & schema.keys():
            return str(super().visit(schema, name))
        rule_name = f"{name}-" if name in llama_grammar.RESERVED_NAMES else name or "root"
        if isinstance(kind, list):
            union = self._generate_union_rule(name, [{**schema, "type": t} for t in kind])
            return str(self._add_rule(rule_name, union))
        if kind not in ("integer", "number"):
            return str(super().visit(schema, name))
        if "multipleOf" in schema:
            rule, rules = multiple_rule(schema, integer=kind == "integer")
            for multiple, body in rules.items():  # named by their text: added once
                self._add_rule(multiple, body)
        else:
            rule = integer_rule(schema) if kind == "integer" else number_rule(schema)
        return str(self._add_rule(rule_name, f"({rule}) space"))


def gbnf(params: SamplingParams) -> str | None:
    """The grammar of a request's structured output, or None for free text. The converter
    raises ValueError, AssertionError, ... on a schema it cannot use."""
    if params.tagged is not None:
        return tagged_gbnf(params.tagged)
    if params.json_schema is not None:
        return schema_gbnf(params.json_schema)
    return llama_grammar.JSON_GBNF if params.json_mode else None


def schema_gbnf(schema: str) -> str:
    """The grammar of JSON valid under a JSON Schema (given as JSON text)."""
    converter = _Converter()
    converter.visit(converter.resolve_refs(json.loads(schema), "stdin"), "")
    return str(converter.format_grammar())


def tagged_gbnf(shape: TaggedJson) -> str:
    """root: prefix, one tag (or tags joined by the separator), suffix; a tag: its begin
    text, a JSON value under its schema, its end text. The schemas share one converter, so
    their rules (and `$ref`s, resolved per tag) get distinct names."""
    converter = _Converter()
    alternatives = []
    for i, tag in enumerate(shape.tags):
        name = f"tag-{i}"
        schema = converter.resolve_refs(json.loads(tag.schema), name)
        value = converter.visit(schema, f"{name}-value")
        converter._add_rule(name, _seq(_literal(tag.begin), value, _literal(tag.end)))
        alternatives.append(name)
    converter._add_rule("tag", " | ".join(alternatives))
    tags = f"tag ({_literal(shape.separator)} tag)*" if shape.repeat else "tag"
    converter._add_rule("root", _seq(_literal(shape.prefix), tags, _literal(shape.suffix)))
    return str(converter.format_grammar())


def trigger_pattern(trigger: str) -> str:
    """llama.cpp's lazy-grammar trigger pattern: it must match the whole text generated so
    far; the grammar applies from the start of the first group."""
    escaped = _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), trigger)
    return rf"[\s\S]*?({escaped})[\s\S]*"


def _literal(text: str) -> str:
    if not text:
        return ""
    return '"' + "".join(_LITERAL_ESCAPES.get(c, c) for c in text) + '"'


def _seq(*parts: str) -> str:
    return " ".join(p for p in parts if p)
