"""The GBNF the llama.cpp backend makes of a tagged-JSON shape (tool calls); the real model
runs these grammars in tests/integration/test_tools_real.py."""

from __future__ import annotations

import json
import re

from inferd.engine.backends.llamacpp.grammar import tagged_gbnf, trigger_pattern
from inferd.engine.structural import JsonTag, TaggedJson


def rules(gbnf: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in gbnf.splitlines())


def schema_with_def(definition: dict[str, object]) -> str:
    return json.dumps(
        {
            "type": "object",
            "properties": {"x": {"$ref": "#/$defs/D"}},
            "required": ["x"],
            "$defs": {"D": definition},
        }
    )


def test_tags_frame_each_schema_and_repeat_with_the_separator() -> None:
    shape = TaggedJson(
        (
            JsonTag('{"name": "a", "arguments": ', schema_with_def({"type": "integer"}), "}"),
            JsonTag('{"name": "b", "arguments": ', schema_with_def({"type": "boolean"}), "}"),
        ),
        prefix="[TOOL_CALLS][",
        separator=", ",
        suffix="]",
        repeat=True,
    )
    r = rules(tagged_gbnf(shape))
    assert r["root"] == '"[TOOL_CALLS][" tag (", " tag)* "]"'
    assert r["tag"] == "tag-0 | tag-1"
    assert r["tag-0"] == '"{\\"name\\": \\"a\\", \\"arguments\\": " tag-0-value "}"'
    # each tag's $ref resolves to its own definition
    assert (r["tag-0-value-x"], r["tag-1-value-x"]) == ("integer", "boolean")


def test_one_tag_and_literals_are_escaped() -> None:
    shape = TaggedJson((JsonTag('<call>\n"\\', '{"type": "string"}', "\t</call>"),))
    r = rules(tagged_gbnf(shape))
    assert r["root"] == "tag"
    assert r["tag-0"] == '"<call>\\n\\"\\\\" string "\\t</call>"'


def test_trigger_patterns_match_the_whole_text_and_capture_the_trigger() -> None:
    for trigger in ("<tool_call>", "[TOOL_CALLS]", '{"name"', "<|python_tag|>"):
        pattern = re.compile(trigger_pattern(trigger))
        text = f"Sure. {trigger} more"
        match = pattern.fullmatch(text)
        assert match is not None and match.start(1) == 6, trigger
        assert pattern.fullmatch("no trigger here") is None
