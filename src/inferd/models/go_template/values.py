"""Template values as Go sees them: `Struct`, truth, `%v` text and `json` output."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any


class Struct(dict[str, Any]):
    """A Go struct: its fields by name; reading an unknown field is an error. `json_keys`
    gives the name of each field in `json` output (fields left out when empty: `omit`)."""

    def __init__(
        self,
        type_name: str,
        fields: Mapping[str, Any],
        json_keys: Mapping[str, str] | None = None,
        omit_empty: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(fields)
        self.type_name = type_name
        self.json_keys = dict(json_keys or {})
        self.omit_empty = omit_empty


def truth(value: Any) -> bool:
    """Go's template truth: false, 0, nil and empty strings, slices and maps are false;
    structs are true."""
    if isinstance(value, Struct):
        return True
    if value is None:
        return False
    if isinstance(value, bool | int | float):
        return value != 0
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return True


def _go_float(x: float) -> str:
    """%v of a float64 (%g, shortest): an exponent below 1e-4 and from 1e6."""
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "+Inf" if x > 0 else "-Inf"
    d = Decimal(repr(x))
    exp = d.adjusted()
    if -4 <= exp < 6:
        text = format(d, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    sign, digits, _ = d.as_tuple()
    mant = "".join(map(str, digits)).rstrip("0") or "0"
    body = mant[0] + ("." + mant[1:] if len(mant) > 1 else "")
    return f"{'-' if sign else ''}{body}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"


def to_text(value: Any) -> str:
    """Go's fmt %v for template values."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, Struct):
        return "{" + " ".join(inner_text(v) for v in value.values()) + "}"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{inner_text(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(inner_text(v) for v in value) + "]"
    return str(value)


def inner_text(value: Any) -> str:
    return "<nil>" if value is None else to_text(value)


def _json_ready(value: Any) -> Any:
    if isinstance(value, Struct):
        return {
            value.json_keys.get(k, k): _json_ready(v)
            for k, v in value.items()
            if not (k in value.omit_empty and not truth(v))
        }
    if isinstance(value, dict):  # Go's encoder writes a map's keys sorted
        return {str(k): _json_ready(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def go_json(value: Any) -> str:
    """Go's json.Marshal (Ollama's `json` function): compact, map keys sorted, struct
    fields in order, <, > and & escaped."""
    text = json.dumps(_json_ready(value), ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(ch, esc)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def kind_of(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"
