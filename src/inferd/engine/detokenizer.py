"""Incremental detokenization: whole UTF-8 characters only, stop strings never emitted."""

from __future__ import annotations

import codecs
from collections.abc import Callable


class Detokenizer:
    """Turns a token stream into text deltas.

    Bytes of a multi-byte character split across tokens are held until the character is
    whole (and dropped if generation ends first). Text that could be the start of a stop
    string is held back until it is known not to be one; when a stop string completes, the
    text before it is released and the stop string itself is dropped.
    """

    __slots__ = ("_decoder", "_held", "_piece", "_stop")

    def __init__(self, piece: Callable[[int], bytes], stop: tuple[str, ...] = ()) -> None:
        self._piece = piece
        self._stop = tuple(s for s in stop if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""

    def add(self, token: int) -> tuple[str, bool]:
        """Feed one token. Returns (text to emit now, whether a stop string matched)."""
        text = self._held + self._decoder.decode(self._piece(token))
        if not self._stop:
            self._held = ""
            return text, False
        cut = _earliest_match(text, self._stop)
        if cut >= 0:
            self._held = ""
            return text[:cut], True
        keep = _longest_partial_suffix(text, self._stop)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """The rest of the text at the end of generation (no stop string matched). A
        character cut off by the end (a length limit inside a multi-byte character) is
        dropped, never sent as U+FFFD: its bytes are only the start of one."""
        text = self._held
        self._held = ""
        self._decoder.reset()
        return text


def _earliest_match(text: str, stops: tuple[str, ...]) -> int:
    best = -1
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


def _longest_partial_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
