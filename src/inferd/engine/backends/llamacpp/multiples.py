"""GBNF for JSON numbers that are multiples of a JSON Schema's `multipleOf`, within its
bounds, which llama.cpp's schema converter leaves to validation afterwards (llguidance, the
transformers backend's, constrains them too).

A multiple of m = c * 10**-e is j * 10**-e for an integer j that c divides: its text is j's
digits with a point before the last e (at least one digit before the point), the fraction's
trailing zeros optional (`1.5`, `1.50` and `2` for 0.25 with e = 2). An integer's multiple
of m is one of c / gcd(c, 10**e) (every integer is a multiple of 0.5). Divisibility is
regular: read digit by digit, what a reader keeps is the remainder that the digits still to
come must leave. The grammar is that reader crossed with the bounds read digit by digit, per
digit count (as `bounds._naturals` splits a range): one rule per state (digits left, the
bounds' digits still binding, the remainder needed). Every path ends after its digits, so a
rule named after its text is one rule for all the states with the same continuations: the
smallest such grammar, built bottom-up.

A multipleOf whose grammar needs more than MAX_RULES rules (a large modulus prime to 10 on a
wide range: 997 over 16 digits) is a ValueError (the API's 400), as is a range that holds no
multiple. Plain text in, plain text out, as in `bounds.py`.
"""

from __future__ import annotations

import hashlib
import math
from decimal import Decimal
from typing import Any

from inferd.engine.backends.llamacpp.bounds import DIGITS, scaled_range

MAX_RULES = 4096


def multiple_rule(schema: dict[str, Any], *, integer: bool) -> tuple[str, dict[str, str]]:
    """The multiples of the schema's multipleOf within its bounds, as a GBNF alternation,
    and the rules it names (name -> body; a name is its body's hash)."""
    step = schema["multipleOf"]
    modulus, places = _ratio(step)
    # an integer has no decimals, a number at most 16 (as the bounds' grammar writes them):
    # the multiples with fewer are those of the step's factor left after dropping the rest
    most = 0 if integer else DIGITS
    if places > most:
        modulus, places = modulus // math.gcd(modulus, 10 ** (places - most)), most
    lo, hi = scaled_range(schema, places)
    reader = _Reader(modulus, places, step)
    alternatives = []
    if lo < 0 and (negative := reader.naturals(max(1, -hi), -lo)):
        alternatives.append(f'"-" ({negative})')
    if hi >= 0 and (positive := reader.naturals(max(0, lo), hi)):
        alternatives.append(positive)
    if not alternatives:
        raise ValueError(
            f"no multiple of multipleOf {step} lies within the schema's minimum and maximum"
            " (and below 1e16 in magnitude)"
        )
    return " | ".join(f"({a})" for a in alternatives), reader.rules


def _ratio(step: Any) -> tuple[int, int]:
    """c and e with step == c * 10**-e, c a positive integer."""
    if isinstance(step, bool) or not isinstance(step, int | float) or not step > 0:
        raise ValueError("multipleOf must be a number above 0")
    if isinstance(step, float) and not math.isfinite(step):
        raise ValueError("multipleOf must be a finite number")
    exact = (Decimal(step) if isinstance(step, int) else Decimal(repr(step))).normalize()
    _, digits, exponent = exact.as_tuple()
    assert isinstance(exponent, int)  # finite
    c = int("".join(map(str, digits)))
    return (c * 10**exponent, 0) if exponent >= 0 else (c, -exponent)


class _Reader:
    """The digit strings of the multiples, rule by rule."""

    def __init__(self, modulus: int, places: int, step: Any) -> None:
        self.modulus, self.places, self.step = modulus, places, step
        self.rules: dict[str, str] = {}
        self._states: dict[tuple[str | None, str | None, int, int], str | None] = {}

    def naturals(self, lo: int, hi: int) -> str:
        """The texts of the multiples j * 10**-places with lo <= j <= hi (0 <= lo): one
        alternative per digit count of j, zero-padded to one digit before the point."""
        shortest = self.places + 1
        names = []
        for n in range(max(shortest, len(str(lo))), len(str(hi)) + 1):
            a, b = max(lo, 10 ** (n - 1) if n > shortest else 0), min(hi, 10**n - 1)
            if a <= b and (name := self._state(str(a).zfill(n), str(b).zfill(n), n, 0)):
                names.append(name)
        return " | ".join(names)

    def _state(self, low: str | None, high: str | None, left: int, need: int) -> str | None:
        """The rule of the last `left` digits: at least `low` and at most `high` (digit
        strings of that length; None when that side no longer binds), their value
        congruent to `need` modulo the modulus. "" when nothing is left to write, None
        when nothing can be written."""
        if low is not None and not low.strip("0"):
            low = None
        if high is not None and not high.strip("9"):
            high = None
        if left == 0:
            return "" if need == 0 else None
        if low is None and high is None and need >= 10**left:  # the least such digits
            return None
        key = (low, high, left, need)
        if key not in self._states:
            if len(self._states) >= MAX_RULES:
                raise ValueError(
                    f"multipleOf {self.step} needs a grammar over {MAX_RULES} rules in this"
                    " range (a narrower minimum and maximum, or a multipleOf dividing a power"
                    " of 10, fits)"
                )
            self._states[key] = self._rule(low, high, left, need)
        return self._states[key]

    def _rule(self, low: str | None, high: str | None, left: int, need: int) -> str | None:
        children: dict[str, list[int]] = {}
        place = 10 ** (left - 1)
        for d in range(int(low[0]) if low else 0, int(high[0]) + 1 if high else 10):
            child = self._state(
                low[1:] if low and d == int(low[0]) else None,
                high[1:] if high and d == int(high[0]) else None,
                left - 1,
                (need - d * place) % self.modulus,
            )
            if child is not None:
                children.setdefault(child, []).append(d)
        if not children:
            return None
        body = " | ".join(f"{_digit_class(ds)} {child}".rstrip() for child, ds in children.items())
        # the rest may be left out when it is all zeros: the fraction's trailing zeros
        stop = left <= self.places and need == 0 and low is None
        if left == self.places:
            body = f'("." ({body}))?' if stop else f'"." ({body})'
        elif stop:
            body = f"({body})?"
        name = "multiple-" + hashlib.blake2s(body.encode(), digest_size=6).hexdigest()
        self.rules[name] = body
        return name


def _digit_class(digits: list[int]) -> str:
    """[0-4], [2468], ...: the digits (ascending) as one character class."""
    runs: list[tuple[int, int]] = []
    for d in digits:
        if runs and runs[-1][1] == d - 1:
            runs[-1] = (runs[-1][0], d)
        else:
            runs.append((d, d))
    return "[" + "".join(f"{a}-{b}" if b > a else str(a) for a, b in runs) + "]"
