"""The grammar of `multipleOf` (engine/backends/llamacpp/multiples.py) refuses what it cannot
keep (the API's 400) and stays small for the steps people write; which texts it accepts is
checked by llama.cpp itself in tests/integration/test_multiple_of_real.py."""

from __future__ import annotations

from typing import Any

import pytest

from inferd.engine.backends.llamacpp.multiples import MAX_RULES, multiple_rule


@pytest.mark.parametrize(
    ("schema", "integer"),
    [
        ({"multipleOf": 10, "minimum": 1, "maximum": 9}, True),
        ({"multipleOf": 2.5, "minimum": 1, "maximum": 4}, True),  # an integer's: 5
        ({"multipleOf": 0.5, "exclusiveMinimum": 1, "exclusiveMaximum": 1.5}, False),
    ],
)
def test_a_range_without_a_multiple_is_refused(schema: dict[str, Any], integer: bool) -> None:
    with pytest.raises(ValueError, match="no multiple of multipleOf"):
        multiple_rule(schema, integer=integer)


@pytest.mark.parametrize("step", [0, -2, True, "5", float("inf")])
def test_a_step_that_is_no_positive_number_is_refused(step: Any) -> None:
    with pytest.raises(ValueError, match="multipleOf must be"):
        multiple_rule({"multipleOf": step}, integer=True)


@pytest.mark.parametrize(
    ("schema", "integer", "most"),
    [
        ({"multipleOf": 2}, True, 80),
        ({"multipleOf": 1000}, True, 60),
        ({"multipleOf": 7}, True, 200),
        ({"multipleOf": 12, "minimum": 0}, True, 300),
        ({"multipleOf": 0.01}, False, 60),
        ({"multipleOf": 0.25, "minimum": 0, "maximum": 100}, False, 80),
    ],
)
def test_the_steps_people_write_cost_few_rules(
    schema: dict[str, Any], integer: bool, most: int
) -> None:
    _, rules = multiple_rule(schema, integer=integer)
    assert len(rules) <= most, len(rules)


def test_a_large_modulus_over_a_wide_range_is_refused_naming_multipleof() -> None:
    with pytest.raises(ValueError, match=f"multipleOf 9973 needs a grammar over {MAX_RULES}"):
        multiple_rule({"multipleOf": 9973}, integer=True)
    # narrower bounds fit
    _, rules = multiple_rule({"multipleOf": 9973, "minimum": 0, "maximum": 10**5}, integer=True)
    assert len(rules) <= MAX_RULES


def test_zero_is_a_multiple_of_anything() -> None:
    """A step beyond the 16 digits an integer is written in leaves 0 alone."""
    expr, rules = multiple_rule({"multipleOf": 1e20}, integer=True)
    assert [rules[name] for name in expr.strip("()").split(" | ")] == ["[0]"]


def test_a_step_finer_than_16_decimals_keeps_numbers_at_16() -> None:
    """multipleOf 3e-20: a number of at most 16 decimals is a multiple when its last 16
    digits make a multiple of 3 (the grammar stays 16 decimals deep, no deep recursion)."""
    _, fine = multiple_rule({"multipleOf": 3e-20}, integer=False)
    _, coarse = multiple_rule({"multipleOf": 3e-16}, integer=False)
    assert fine.keys() == coarse.keys()
    multiple_rule({"multipleOf": 5e-324}, integer=False)
