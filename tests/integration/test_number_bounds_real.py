"""Numbers within JSON Schema bounds, checked by llama.cpp's own grammar engine: every
candidate text is fed character by character to a grammar sampler over the bundled model's
vocabulary (loaded alone, no weights), and must be accepted exactly when it is in range."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from inferd.engine.backends.llamacpp.grammar import schema_gbnf

Vocab = Any


@pytest.fixture(scope="module")
def vocab(model_path: Path) -> Iterator[Vocab]:
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
    assert model
    yield llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


def token(vocab: Vocab, char: str) -> int:
    ids = (llama_cpp.llama_token * 8)()
    data = char.encode()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), ids, 8, False, False)
    assert n == 1, char
    return int(ids[0])


def allowed(sampler: Any, tok: int) -> bool:
    one = llama_cpp.llama_token_data(tok, 1.0, 0.0)
    arr = llama_cpp.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
    return one.logit != float("-inf")


def accepts(vocab: Vocab, grammar: str, text: str) -> bool:
    """Whether llama.cpp's grammar lets the model write exactly `text`, then stop."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler, grammar
    try:
        for char in text:
            tok = token(vocab, char)
            if not allowed(sampler, tok):
                return False
            llama_cpp.llama_sampler_accept(sampler, tok)
        return allowed(sampler, llama_cpp.llama_vocab_eos(vocab))
    finally:
        llama_cpp.llama_sampler_free(sampler)


def within(value: Decimal, schema: dict[str, Any]) -> bool:
    checks = (
        ("minimum", lambda b: value >= b),
        ("maximum", lambda b: value <= b),
        ("exclusiveMinimum", lambda b: value > b),
        ("exclusiveMaximum", lambda b: value < b),
    )
    return all(check(Decimal(repr(schema[k]))) for k, check in checks if k in schema)


INTEGER_SCHEMAS = [
    {"minimum": 10, "maximum": 20},
    {"minimum": -123, "maximum": 45},
    {"minimum": -45, "maximum": -7},
    {"exclusiveMinimum": 9, "exclusiveMaximum": 101},
    {"minimum": 0},
    {"maximum": 37},
    {"minimum": 2.5, "maximum": 99.5},  # fractional bounds on an integer
    {"minimum": 5, "exclusiveMinimum": 5, "maximum": 250, "exclusiveMaximum": 300},
]


@pytest.mark.parametrize("bounds", INTEGER_SCHEMAS, ids=json.dumps)
def test_integers_are_accepted_exactly_within_the_bounds(vocab: Vocab, bounds: dict) -> None:
    schema = {"type": "integer", **bounds}
    grammar = schema_gbnf(json.dumps(schema))
    for n in [*range(-320, 321), 999, 1000, 12345, -12345, 10**15, 10**16]:
        expected = within(Decimal(n), schema) and abs(n) < 10**16
        assert accepts(vocab, grammar, str(n)) is expected, (schema, n)
    # canonical forms only: no leading zeros, no minus zero, no fraction
    for text in ("015", "-0", "15.0", "1e1", "+15"):
        assert not accepts(vocab, grammar, text), (schema, text)


NUMBER_SCHEMAS = [
    {"minimum": 0, "maximum": 1},
    {"exclusiveMinimum": 0, "exclusiveMaximum": 1},
    {"exclusiveMinimum": 0.1, "maximum": 0.95},
    {"minimum": -2.5, "exclusiveMaximum": 3},
    {"minimum": -3.25, "maximum": -1.05},
    {"minimum": 1.05, "maximum": 1.3},
    {"exclusiveMinimum": -0.5},
    {"maximum": 12.75},
    {"minimum": 0.005, "maximum": 2},
]


def number_texts() -> Iterator[str]:
    """JSON numbers from -4.2 to 4.2: with two decimals, as short as can be, with a
    trailing zero, and with one more digit."""
    for k in range(-420, 421):
        value = Decimal(k) / 100
        two = format(value, ".2f")
        yield from (two, format(value.normalize(), "f"), f"{two}0", f"{two}1")
    yield from ("0.005", "0.0049", "0.0051", "1.05", "1.0500", "1.049999", "12.75", "12.751")


@pytest.mark.parametrize("bounds", NUMBER_SCHEMAS, ids=json.dumps)
def test_numbers_are_accepted_exactly_within_the_bounds(vocab: Vocab, bounds: dict) -> None:
    schema = {"type": "number", **bounds}
    grammar = schema_gbnf(json.dumps(schema))
    for text in set(number_texts()):
        value = Decimal(text)
        # zero is written without a sign
        expected = within(value, schema) and not (text.startswith("-") and value == 0)
        assert accepts(vocab, grammar, text) is expected, (schema, text)
    for text in ("1e0", "01", "1.", ".5"):
        assert not accepts(vocab, grammar, text), (schema, text)


def test_bounds_kept_inside_objects_and_type_lists(vocab: Vocab) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": ["integer", "null"], "minimum": 3, "maximum": 5}},
        "required": ["n"],
    }
    grammar = schema_gbnf(json.dumps(schema))
    for n, ok in ((2, False), (3, True), (5, True), (6, False), (None, True)):
        text = json.dumps({"n": n}, separators=(",", ":"))
        assert accepts(vocab, grammar, text) is ok, text
