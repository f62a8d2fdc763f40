"""The grammar of bounded numbers refuses ranges that hold no value (the API's 400); which
texts its grammars accept is checked by llama.cpp itself in
tests/integration/test_number_bounds_real.py."""

from __future__ import annotations

from typing import Any

import pytest

from inferd.engine.backends.llamacpp.bounds import integer_rule, number_rule


@pytest.mark.parametrize(
    "bounds",
    [
        {"minimum": 5, "maximum": 4},
        {"minimum": 2.1, "maximum": 2.9},  # no integer between
        {"exclusiveMinimum": 3, "exclusiveMaximum": 4},
        {"minimum": 1e17},  # beyond the 16 digits a grammar writes
    ],
)
def test_integer_ranges_without_a_value_are_refused(bounds: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="no integer"):
        integer_rule(bounds)


@pytest.mark.parametrize(
    "bounds",
    [
        {"minimum": 5, "maximum": 4.5},
        {"exclusiveMinimum": 1.5, "maximum": 1.5},
        {"maximum": -1e20},
    ],
)
def test_number_ranges_without_a_value_are_refused(bounds: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="no number"):
        number_rule(bounds)


def test_the_draft_4_boolean_exclusive_bounds() -> None:
    draft4 = integer_rule({"minimum": 3, "exclusiveMinimum": True, "maximum": 6})
    assert draft4 == integer_rule({"minimum": 4, "maximum": 6}) == "([4-6])"


def test_a_single_value() -> None:
    assert integer_rule({"minimum": 42, "maximum": 42}) == '("42")'
    assert number_rule({"minimum": 0.5, "maximum": 0.5}) == '("0" "." ([5] ("0"+)?))'


def test_bounds_with_more_fraction_digits_than_a_number_writes_move_inward() -> None:
    """`minimum: 5e-324` writes 324 fraction digits: the grammar keeps to 16 (a few
    digits deep, not one rule per digit) and stays within the schema's range."""
    tiny = number_rule({"minimum": 5e-324, "maximum": 1})
    assert tiny == number_rule({"minimum": 1e-16, "maximum": 1})
    assert len(tiny) < 1000
    # exclusive, rounded up: the rounded bound itself is in range, so it is inclusive
    assert number_rule({"exclusiveMinimum": 0.12345678901234567, "maximum": 0.2}) == (
        number_rule({"minimum": 0.1234567890123457, "maximum": 0.2})
    )
    # no 16-digit number lies strictly between two bounds closer than that
    with pytest.raises(ValueError, match="no number"):
        number_rule({"minimum": 1e-300, "maximum": 2e-300})
