"""Number types every dialect's wire models share.

JSON has one number type: `1.0` is an integer to JSON Schema (what the OpenAPI document says),
so an integer field takes a whole float and refuses a fraction, a string or a bool."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, GetPydanticSchema, StrictInt, WithJsonSchema
from pydantic_core import core_schema


def _whole(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _whole_float(value: float) -> int:
    if value.is_integer():
        return int(value)
    raise ValueError("Input should be a valid integer, got a number with a fractional part")


WholeInt = Annotated[StrictInt, BeforeValidator(_whole)]
# A token id, as WholeInt, for the arrays of ids a body may hold by the million: an int is
# checked inside pydantic-core, with no Python call per element; only a float reaches Python.
TokenId = Annotated[
    int,
    GetPydanticSchema(
        lambda _type, _handler: core_schema.union_schema(
            [
                core_schema.int_schema(strict=True),
                core_schema.no_info_after_validator_function(
                    _whole_float, core_schema.float_schema(strict=True)
                ),
            ]
        )
    ),
    WithJsonSchema({"type": "integer"}),
]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
