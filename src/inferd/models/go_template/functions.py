"""The builtin functions (`and` and `or` short-circuit in the evaluator; the rest are here)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from inferd.models.go_template.values import Struct, go_json, inner_text, kind_of, truth

_MAX_WIDTH = 10_000  # printf field width and precision


def _want(args: list[Any], n: int, name: str) -> None:
    if len(args) != n:
        raise TypeError(f"wrong number of args for {name}: want {n} got {len(args)}")


def _fn_not(args: list[Any]) -> bool:
    _want(args, 1, "not")
    return not truth(args[0])


def _comparable(a: Any, b: Any) -> None:
    if kind_of(a) != kind_of(b) and "nil" not in (kind_of(a), kind_of(b)):
        raise TypeError("incompatible types for comparison")


def _fn_eq(args: list[Any]) -> bool:
    if len(args) < 2:
        raise TypeError("missing argument for comparison")
    first = args[0]
    for other in args[1:]:
        _comparable(first, other)
        if first == other:
            return True
    return False


def _fn_ne(args: list[Any]) -> bool:
    _want(args, 2, "ne")
    return not _fn_eq(args)


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[list[Any]], bool]:
    def compare(args: list[Any]) -> bool:
        _want(args, 2, "comparison")
        a, b = args
        _comparable(a, b)
        if kind_of(a) not in ("number", "string"):
            raise TypeError("invalid type for comparison")
        return op(a, b)

    return compare


def _fn_len(args: list[Any]) -> int:
    _want(args, 1, "len")
    v = args[0]
    if isinstance(v, str):
        return len(v.encode("utf-8", "surrogatepass"))
    if isinstance(v, list | tuple) or (isinstance(v, dict) and not isinstance(v, Struct)):
        return len(v)
    raise TypeError(f"len of type {kind_of(v)}")


def _fn_index(args: list[Any]) -> Any:
    if not args:
        raise TypeError("wrong number of args for index: want at least 1 got 0")
    value = args[0]
    for key in args[1:]:
        if isinstance(value, dict) and not isinstance(value, Struct):
            value = value.get(key)
        elif isinstance(value, list | tuple | str):
            if not isinstance(key, int) or isinstance(key, bool):
                raise TypeError("cannot index slice/array with non-integer")
            seq = value.encode() if isinstance(value, str) else value
            if not 0 <= key < len(seq):
                raise IndexError(f"index out of range: {key}")
            value = seq[key]
        else:
            raise TypeError(f"can't index item of type {kind_of(value)}")
    return value


def _fn_slice(args: list[Any]) -> Any:
    if not args or len(args) > 4:
        raise TypeError("wrong number of args for slice")
    value, bounds = args[0], args[1:]
    if not isinstance(value, list | tuple | str):
        raise TypeError(f"can't slice item of type {kind_of(value)}")
    seq: Any = value.encode() if isinstance(value, str) else value
    if any(not isinstance(b, int) or isinstance(b, bool) for b in bounds):
        raise TypeError("cannot slice with non-integer index")
    lo = bounds[0] if bounds else 0
    hi = bounds[1] if len(bounds) > 1 else len(seq)
    if not 0 <= lo <= hi <= len(seq):
        raise IndexError(f"slice bounds out of range [{lo}:{hi}]")
    part = seq[lo:hi]
    return part.decode("utf-8", "replace") if isinstance(value, str) else list(part)


def _fn_print(args: list[Any]) -> str:
    out = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(inner_text(a))
    return "".join(out)


def _fn_println(args: list[Any]) -> str:
    return " ".join(inner_text(a) for a in args) + "\n"


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def _fn_printf(args: list[Any]) -> str:
    if not args or not isinstance(args[0], str):
        raise TypeError("printf needs a format string")
    fmt, rest = args[0], list(args[1:])

    def one(m: re.Match[str]) -> str:
        flags, width, prec, verb = m.groups()
        if verb == "%":
            return "%"
        if int(width or 0) > _MAX_WIDTH or int(prec or 0) > _MAX_WIDTH:
            raise ValueError("printf width or precision too large")
        if not rest:
            return f"%!{verb}(MISSING)"
        a = rest.pop(0)
        spec = f"{flags}{width or ''}{'.' + prec if prec is not None else ''}"
        if verb in "vs":
            text = inner_text(a) if verb == "v" or not isinstance(a, str) else a
            if prec is not None:
                text = text[: int(prec)]
            return format(text, f"{'<' if '-' in flags else '>'}{width or ''}")
        if verb == "q":
            return json.dumps(a if isinstance(a, str) else inner_text(a), ensure_ascii=False)
        if verb == "t" and isinstance(a, bool):
            return "true" if a else "false"
        if verb in "dxXob" and isinstance(a, int) and not isinstance(a, bool):
            return format(a, spec.replace("-", "<") + verb)
        if verb in "feEgG" and isinstance(a, int | float) and not isinstance(a, bool):
            return format(float(a), spec.replace("-", "<") + verb)
        return f"%!{verb}({inner_text(a)})"

    text = _VERB.sub(one, fmt)
    if rest:
        text += "%!(EXTRA " + ", ".join(inner_text(a) for a in rest) + ")"
    return text


def _fn_json(args: list[Any]) -> str:
    _want(args, 1, "json")
    return go_json(args[0])


FUNCS: Mapping[str, Callable[[list[Any]], Any]] = MappingProxyType(
    {
        "not": _fn_not,
        "eq": _fn_eq,
        "ne": _fn_ne,
        "lt": _ordered(lambda a, b: a < b),
        "le": _ordered(lambda a, b: a <= b),
        "gt": _ordered(lambda a, b: a > b),
        "ge": _ordered(lambda a, b: a >= b),
        "len": _fn_len,
        "index": _fn_index,
        "slice": _fn_slice,
        "print": _fn_print,
        "println": _fn_println,
        "printf": _fn_printf,
        "json": _fn_json,
    }
)

# every function a template may call: `and` and `or` take their arguments unevaluated
FUNCTIONS = frozenset({"and", "or"} | FUNCS.keys())
