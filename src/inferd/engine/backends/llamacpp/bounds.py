"""GBNF for JSON numbers within a JSON Schema's bounds (`minimum`, `maximum`,
`exclusiveMinimum`, `exclusiveMaximum`, the draft-4 boolean forms too), which llama.cpp's
schema converter leaves to validation afterwards.

- Integers: the canonical decimal forms (no leading zeros, no "-0") of a range, split by
  digit count, each count's range digit by digit (`_same_length`).
- Numbers: plain decimal notation (no exponent): an integer part within the range and, at
  the range's two ends, a fraction kept to the bound digit by digit (`_Fraction`).
- A side without a bound stops at 16 digits, as the converter's own integers do; a range
  that holds no value, or only values beyond that, is a ValueError (the API's 400).

Plain text in, plain text out: no llama.cpp here (grammar.py hands the rules to its
converter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from typing import Any

BOUND_KEYS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
DIGITS = 16
_LIMIT = Decimal(10**DIGITS)  # magnitudes stay below this
_FREE_FRACTION = "[0-9]{0,15}"


@dataclass(frozen=True, slots=True)
class Bound:
    value: Decimal
    strict: bool  # exclusive


def integer_rule(schema: dict[str, Any]) -> str:
    """The integers within the schema's bounds, as a GBNF alternation."""
    lo, hi = scaled_range(schema)
    if lo > hi:
        raise ValueError(
            "no integer lies within the schema's minimum and maximum (and below 1e16 in magnitude)"
        )
    alternatives = []
    if lo < 0:
        alternatives.append(f'"-" ({_naturals(max(1, -hi), -lo)})')
    if hi >= 0:
        alternatives.append(_naturals(max(0, lo), hi))
    return " | ".join(f"({a})" for a in alternatives)


def number_rule(schema: dict[str, Any]) -> str:
    """The numbers within the schema's bounds, in plain decimal notation."""
    low, high = _bounds(schema)
    if low.value > high.value or (low.value == high.value and (low.strict or high.strict)):
        raise ValueError(
            "no number lies within the schema's minimum and maximum (and below 1e16 in magnitude)"
        )
    alternatives = []
    if low.value < 0:  # the negative numbers, by magnitude
        least = Bound(-high.value, high.strict) if high.value < 0 else Bound(Decimal(0), True)
        alternatives.append(f'"-" ({_magnitudes(least, Bound(-low.value, low.strict))})')
    if high.value > 0 or (high.value == 0 and not high.strict):
        least = low if low.value >= 0 else Bound(Decimal(0), False)
        alternatives.append(_magnitudes(least, high))
    return " | ".join(f"({a})" for a in alternatives)


def scaled_range(schema: dict[str, Any], places: int = 0) -> tuple[int, int]:
    """The least and the greatest integer j with j * 10**-places within the schema's
    bounds (an integer's range when places is 0; lo > hi when there is none)."""
    low, high = _bounds(schema)
    lo, hi = low.value.scaleb(places), high.value.scaleb(places)
    return (
        math.floor(lo) + 1 if low.strict or lo != math.floor(lo) else int(lo),
        math.ceil(hi) - 1 if high.strict or hi != math.ceil(hi) else int(hi),
    )


def _bounds(schema: dict[str, Any]) -> tuple[Bound, Bound]:
    """The tightest lower and upper bound, each side clamped to 16 digits."""
    low, high = Bound(-_LIMIT, True), Bound(_LIMIT, True)
    minimum, maximum = schema.get("minimum"), schema.get("maximum")
    ex_min, ex_max = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    for value, strict in ((minimum, ex_min is True), (ex_min, True)):
        if (bound := _decimal(value)) is not None:
            low = _tighter(low, Bound(bound, strict), lower=True)
    for value, strict in ((maximum, ex_max is True), (ex_max, True)):
        if (bound := _decimal(value)) is not None:
            high = _tighter(high, Bound(bound, strict), lower=False)
    return _rounded(low, lower=True), _rounded(high, lower=False)


def _rounded(bound: Bound, *, lower: bool) -> Bound:
    """A bound with more than 16 fraction digits (`minimum: 5e-324`), moved inward to 16:
    generated numbers keep to 16 fraction digits anyway, and the grammar stays a few
    digits deep however many digits the schema writes."""
    step = Decimal(1).scaleb(-DIGITS)
    with localcontext(prec=3 * DIGITS):
        moved = bound.value.quantize(step, rounding=ROUND_CEILING if lower else ROUND_FLOOR)
    return bound if moved == bound.value else Bound(moved.normalize(), False)


def _decimal(value: Any) -> Decimal | None:
    """A bound's exact value; None for what is no number (a draft-4 boolean)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a bound must be a finite number")
    return Decimal(value) if isinstance(value, int) else Decimal(repr(value))


def _tighter(a: Bound, b: Bound, *, lower: bool) -> Bound:
    if a.value == b.value:
        return Bound(a.value, a.strict or b.strict)
    return max(a, b, key=lambda x: x.value) if lower else min(a, b, key=lambda x: x.value)


# ---- integers ----------------------------------------------------------------------------


def _naturals(lo: int, hi: int) -> str:
    """0 <= lo <= hi: their decimal forms, one alternative per digit count (a run of
    counts taken whole in one)."""
    alternatives: list[str] = []
    whole: list[int] = []  # the current run of whole digit counts (2 digits or more)
    for n in range(len(str(lo)), len(str(hi)) + 1):
        a, b = max(lo, 10 ** (n - 1) if n > 1 else 0), min(hi, 10**n - 1)
        if n > 1 and (a, b) == (10 ** (n - 1), 10**n - 1):
            whole.append(n)
            continue
        if whole:
            alternatives.append(_whole(whole))
            whole = []
        alternatives.append(_same_length(str(a), str(b)))
    if whole:
        alternatives.append(_whole(whole))
    return " | ".join(alternatives)


def _whole(counts: list[int]) -> str:
    """All numbers of these digit counts (consecutive, 2 or more digits)."""
    low, high = counts[0] - 1, counts[-1] - 1
    return f"[1-9] {_any_digits(low) if low == high else f'[0-9]{{{low},{high}}}'}"


def _any_digits(n: int) -> str:
    return "[0-9]" if n == 1 else f"[0-9]{{{n}}}"


def _same_length(a: str, b: str) -> str:
    """The digit strings from a to b, both of the same length."""
    if a == b:
        return f'"{a}"'
    i = next(k for k in range(len(a)) if a[k] != b[k])
    head = f'"{a[:i]}" ' if i else ""
    x, y, rest_a, rest_b = a[i], b[i], a[i + 1 :], b[i + 1 :]
    n = len(rest_a)
    if n == 0:
        return f"{head}[{x}-{y}]"
    low_full, high_full = rest_a == "0" * n, rest_b == "9" * n
    first = x if low_full else chr(ord(x) + 1)
    last = y if high_full else chr(ord(y) - 1)
    alternatives = []
    if not low_full:
        alternatives.append(f'"{x}" {_same_length(rest_a, "9" * n)}')
    if first <= last:
        alternatives.append(f"{_digits(first, last)} {_any_digits(n)}")
    if not high_full:
        alternatives.append(f'"{y}" {_same_length("0" * n, rest_b)}')
    return f"{head}({' | '.join(alternatives)})"


def _digits(first: str, last: str) -> str:
    return f"[{first}]" if first == last else f"[{first}-{last}]"


# ---- numbers -----------------------------------------------------------------------------


def _magnitudes(low: Bound, high: Bound) -> str:
    """Non-negative decimals from low to high (low.value <= high.value, not both strict
    at one value): an integer part, then a fraction kept to the bound at either end."""
    a, a_digits = _split(low.value)
    b, b_digits = _split(high.value)
    low_frac = _Fraction.lower(a_digits, low.strict)
    if not b_digits and high.strict:  # below an integer: b itself is out, any fraction below
        b, high_frac = b - 1, _Fraction()
    else:
        high_frac = _Fraction.upper(b_digits, high.strict)
    if a == b:
        return f'"{a}" {_Fraction.both(low_frac, high_frac).rule()}'
    alternatives = [f'"{a}" {low_frac.rule()}']
    if a + 1 <= b - 1:
        alternatives.append(f"({_naturals(a + 1, b - 1)}) {_Fraction().rule()}")
    alternatives.append(f'"{b}" {high_frac.rule()}')
    return " | ".join(alternatives)


def _split(value: Decimal) -> tuple[int, str]:
    """A non-negative decimal's integer part and its fraction digits (no trailing zeros)."""
    whole = int(value)
    fraction = format(value - whole, "f").partition(".")[2].rstrip("0")
    return whole, fraction


@dataclass(frozen=True, slots=True)
class _Fraction:
    """Which fraction digits D may follow an integer part, read digit by digit: `low`
    (D's value 0.D must be at least / above 0.low), `high` (at most / below 0.high); None
    where that side is free. low ("", strict) asks for any non-zero digit still to come;
    high ("", not strict) allows only zeros."""

    low: tuple[str, bool] | None = None
    high: tuple[str, bool] | None = None

    @staticmethod
    def lower(digits: str, strict: bool) -> _Fraction:
        return _Fraction(low=(digits, strict) if digits or strict else None)

    @staticmethod
    def upper(digits: str, strict: bool) -> _Fraction:
        return _Fraction(high=(digits, strict))

    @staticmethod
    def both(low: _Fraction, high: _Fraction) -> _Fraction:
        return _Fraction(low.low, high.high)

    def rule(self) -> str:
        """The optional fraction, "." and digits, that this state allows after an integer
        part (required when the integer part alone is out of range)."""
        if self.low is None and self.high is None:
            return f'("." [0-9] {_FREE_FRACTION})?'
        digits = self._nonempty()
        return f'("." {digits})?' if self.low is None else f'"." {digits}'

    def _next(self, d: str) -> _Fraction | None:
        """The state after digit d, None when no value can be in range any more."""
        low = self.low
        if low is not None:
            digits, strict = low
            if not digits:  # strict: any non-zero digit satisfies it
                low = None if d != "0" else low
            elif d < digits[0]:
                return None
            elif d > digits[0]:
                low = None
            else:
                low = (digits[1:], strict) if digits[1:] or strict else None
        high = self.high
        if high is not None:
            digits, strict = high
            if not digits:  # only zeros may follow
                if d != "0":
                    return None
            elif d > digits[0]:
                return None
            elif d < digits[0]:
                high = None
            elif digits[1:] or not strict:
                high = (digits[1:], strict)
            else:  # the bound itself, exclusive: nothing after it stays below
                return None
        return _Fraction(low, high)

    def _any(self) -> str:
        """Digits D, possibly none, that this state allows."""
        if self.low is None and self.high is None:
            return _FREE_FRACTION
        digits = self._nonempty()
        return f"({digits})?" if self.low is None else digits

    def _nonempty(self) -> str:
        """One or more digits this state allows."""
        groups: list[tuple[str, str, _Fraction]] = []
        loops = False
        for d in "0123456789":
            after = self._next(d)
            if after is None:
                continue
            if after == self:
                loops = True
            elif groups and groups[-1][2] == after and ord(groups[-1][1]) + 1 == ord(d):
                groups[-1] = (groups[-1][0], d, after)
            else:
                groups.append((d, d, after))
        rest = " | ".join(f"{_digits(first, last)} {after._any()}" for first, last, after in groups)
        if not loops:
            return f"({rest})"
        # only two states keep themselves on "0": low ("", strict), which then needs a
        # non-zero digit, and high ("", not strict) alone, which allows nothing else
        return f'"0"* ({rest})' if self.low is not None else '"0"+'
