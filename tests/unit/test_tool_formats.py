"""Call formats: parsing each family's calls, choosing a model's format, holding back a
stream's possible marker, the fallback description."""

from __future__ import annotations

import json

import pytest

from inferd.models.tool_formats import (
    FORMATS,
    RawCall,
    calls_start,
    describe_tools,
    detect,
    held_back,
    parse_calls,
    tool_support,
)

PARIS = RawCall("get_weather", {"city": "Paris"})
ROME = RawCall("get_weather", {"city": "Rome", "unit": "c"})


@pytest.mark.parametrize(
    ("text", "calls"),
    [
        (
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
            [PARIS],
        ),
        (
            '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>\n'
            '<tool_call>{"name":"get_weather","arguments":{"city":"Rome","unit":"c"}}</tool_call>',
            [PARIS, ROME],
        ),
        ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', [PARIS]),
        (
            '{"name": "get_weather", "parameters": {"city": "Paris"}}; '
            '{"name": "get_weather", "parameters": {"city": "Rome", "unit": "c"}}',
            [PARIS, ROME],
        ),
        (
            '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
            '{"name": "get_weather", "arguments": {"city": "Rome", "unit": "c"}}]',
            [PARIS, ROME],
        ),
        ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', [PARIS]),
        ('[{"name": "get_weather", "arguments": {"city": "Paris"}}]', [PARIS]),
    ],
)
def test_each_familys_calls_parse(text: str, calls: list[RawCall]) -> None:
    assert parse_calls(text) == calls


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>\nnot json\n</tool_call>",
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Par',
        '{"name": 3, "arguments": {}}',
        '{"name": "f", "arguments": [1]}',
        '{"name": "f", "arguments": {}} and then some words',
        "<tool_call></tool_call>",
        "",
    ],
)
def test_anything_else_is_not_a_call(text: str) -> None:
    assert parse_calls(text) is None


def test_an_answer_cut_short_keeps_its_complete_calls() -> None:
    text = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"ci'
    )
    assert parse_calls(text) is None
    assert parse_calls(text, truncated=True) == [PARIS]


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("{% for t in tools %}...{% endfor %}<tool_call>", "hermes"),
        ("{{ '[TOOL_CALLS]' }}{{ tools }}", "mistral"),
        ("<|start_header_id|>ipython{% if tools %}<|python_tag|>{% endif %}", "llama3"),
        ("<|start_header_id|>{% if tools is not none %}{{ tools }}{% endif %}", "llama3"),
        ("{% if tools %}{{ tools | tojson }}{% endif %}", "json"),
        ("{% for message in messages %}{{ message.content }}{% endfor %}", "hermes"),
    ],
)
def test_the_format_is_read_from_the_template(source: str, name: str) -> None:
    assert detect(source) == name


def test_the_setting_chooses_or_turns_tools_off() -> None:
    plain = "{% for m in messages %}{{ m.content }}{% endfor %}"
    auto = tool_support("auto", plain)
    assert auto is not None and auto.format.name == "hermes" and not auto.in_template
    forced = tool_support("mistral", "{{ tools }}")
    assert forced is not None and forced.format.name == "mistral" and forced.in_template
    assert tool_support("off", "{{ tools }}") is None


def test_a_call_is_written_as_the_grammar_constrains_it() -> None:
    for fmt in FORMATS.values():
        text = fmt.render_calls([("get_weather", {"city": "Paris"})])
        assert text.startswith(fmt.prefix + fmt.call_begin("get_weather"))
        assert text.startswith(fmt.trigger)
        assert parse_calls(text[calls_start(text, fmt) :]) == [PARIS], fmt.name


@pytest.mark.parametrize(
    ("text", "held"), [("Hello <tool", 5), ("Hello <", 1), ("Hello", 0), ('x {"na', 4)]
)
def test_a_possible_marker_is_held_back(text: str, held: int) -> None:
    assert held_back(text, FORMATS["hermes"]) == held


def test_the_fallback_description_lists_the_tools_and_the_format() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    text = describe_tools([tool], FORMATS["hermes"])
    assert json.dumps(tool) in text
    assert '<tool_call>\n{"name": "<function-name>", "arguments": <arguments-object>}' in text
