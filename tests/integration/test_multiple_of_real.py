"""`multipleOf` kept while sampling: the grammars are checked by llama.cpp's own grammar
engine on the bundled model's vocabulary (every candidate text accepted exactly when it is a
multiple within the bounds, written with no more decimals than multipleOf has), and the real
model, sampling hot, answers only multiples in structured output and tool arguments."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import jsonschema
import pytest

from inferd.engine.backends.llamacpp.grammar import schema_gbnf
from tests.conftest import AppHandle
from tests.integration.test_number_bounds_real import Vocab, accepts, number_texts, vocab, within

pytestmark = pytest.mark.model
__all__ = ["vocab"]  # the vocabulary fixture, one for this module

INTEGER_SCHEMAS = [
    {"multipleOf": 5},
    {"multipleOf": 7, "minimum": -50, "maximum": 100},
    {"multipleOf": 3, "exclusiveMinimum": 9, "exclusiveMaximum": 30},
    {"multipleOf": 12, "minimum": 5},
    {"multipleOf": 1000, "maximum": 5000},
    {"multipleOf": 0.5, "minimum": -3, "maximum": 3},  # every integer
    {"multipleOf": 2.5, "minimum": 0},  # an integer's: the multiples of 5
    {"multipleOf": 64, "minimum": -320, "maximum": 320},
]


def multiple(value: Decimal, schema: dict[str, Any]) -> bool:
    return value % Decimal(repr(schema["multipleOf"])) == 0 and within(value, schema)


@pytest.mark.parametrize("keywords", INTEGER_SCHEMAS, ids=json.dumps)
def test_integers_are_accepted_exactly_when_multiples(vocab: Vocab, keywords: dict) -> None:
    schema = {"type": "integer", **keywords}
    grammar = schema_gbnf(json.dumps(schema))
    for n in [*range(-330, 331), 1000, 5000, 5005, 6000, 12345, 10**15, 10**16]:
        expected = multiple(Decimal(n), schema) and abs(n) < 10**16
        assert accepts(vocab, grammar, str(n)) is expected, (schema, n)
    for text in ("015", "-0", "10.0", "1e1", "+10"):
        assert not accepts(vocab, grammar, text), (schema, text)


NUMBER_SCHEMAS = [
    {"multipleOf": 0.25},
    {"multipleOf": 0.1, "minimum": 0, "maximum": 1},
    {"multipleOf": 1.5, "minimum": -4.5, "exclusiveMaximum": 4.5},
    {"multipleOf": 0.01, "exclusiveMinimum": 0, "maximum": 2.5},
    {"multipleOf": 3},
    {"multipleOf": 0.05, "minimum": -1.02, "maximum": 3.97},
]


@pytest.mark.parametrize("keywords", NUMBER_SCHEMAS, ids=json.dumps)
def test_numbers_are_accepted_exactly_when_multiples(vocab: Vocab, keywords: dict) -> None:
    schema = {"type": "number", **keywords}
    places = max(0, -Decimal(repr(schema["multipleOf"])).normalize().as_tuple().exponent)
    grammar = schema_gbnf(json.dumps(schema))
    for text in set(number_texts()):
        value = Decimal(text)
        decimals = len(text.partition(".")[2])
        expected = (
            multiple(value, schema)
            and decimals <= places  # no more decimals than multipleOf has
            and not (text.startswith("-") and value == 0)
        )
        assert accepts(vocab, grammar, text) is expected, (schema, text)
    for text in ("1e0", "01", "1.", ".5", "-0"):
        assert not accepts(vocab, grammar, text), (schema, text)


def test_multiples_inside_objects_and_type_lists(vocab: Vocab) -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": ["integer", "null"], "multipleOf": 4, "maximum": 10},
            "b": {"type": "number", "multipleOf": 0.5},
        },
        "required": ["a", "b"],
    }
    grammar = schema_gbnf(json.dumps(schema))
    for a, b, ok in ((8, 1.5, True), (None, -2, True), (6, 1.5, False), (12, 1, False)):
        assert accepts(vocab, grammar, json.dumps({"a": a, "b": b}, separators=(",", ":"))) is ok
    assert not accepts(vocab, grammar, '{"a":8,"b":1.25}')


SHOP = {
    "type": "object",
    "properties": {
        "boxes": {"type": "integer", "multipleOf": 6, "minimum": 6, "maximum": 600},
        "price": {"type": "number", "multipleOf": 0.25, "minimum": 0, "maximum": 1000},
    },
    "required": ["boxes", "price"],
    "additionalProperties": False,
}


ASK = [{"role": "user", "content": "Order 7 boxes at a price of 3.14159, as JSON."}]
HOT = {"messages": ASK, "temperature": 1.5, "seed": 7, "n": 3, "max_tokens": 64}


async def test_json_output_holds_only_multiples_sampling_hot(real: AppHandle) -> None:
    """A prompt that asks for values that are no multiples, and a hot sampler (three answers
    at temperature 1.5): the grammar keeps them multiples."""
    shaped = {"type": "json_schema", "json_schema": {"name": "order", "schema": SHOP}}
    r = await real.client.post("/v1/chat/completions", json={**HOT, "response_format": shaped})
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), SHOP)


async def test_tool_arguments_hold_only_multiples_sampling_hot(real: AppHandle) -> None:
    tool = {"type": "function", "function": {"name": "order", "parameters": SHOP}}
    named = {"type": "function", "function": {"name": "order"}}  # one call each
    r = await real.client.post(
        "/v1/chat/completions", json={**HOT, "tools": [tool], "tool_choice": named}
    )
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        assert choice["finish_reason"] == "tool_calls", choice
        for call in choice["message"]["tool_calls"]:
            jsonschema.validate(json.loads(call["function"]["arguments"]), SHOP)


async def test_a_range_without_a_multiple_or_too_large_a_grammar_is_a_400(
    real: AppHandle,
) -> None:
    for keywords, words in (
        ({"multipleOf": 10, "minimum": 1, "maximum": 9}, "no multiple"),
        ({"multipleOf": 9973}, "multipleOf 9973 needs a grammar"),
    ):
        schema = {"type": "object", "properties": {"n": {"type": "integer", **keywords}}}
        shaped = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
        body = {"messages": [{"role": "user", "content": "A number?"}], "response_format": shaped}
        r = await real.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text
        assert words in r.json()["error"]["message"], r.text
