"""Number types every dialect's wire models share.

JSON has one number type: `1.0` is an integer to JSON Schema (what the OpenAPI document says),
so an integer field takes a whole float and refuses a fraction, a string or a bool."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, StrictInt


def _whole(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeInt = Annotated[StrictInt, BeforeValidator(_whole)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
