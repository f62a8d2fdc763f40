"""Telling a rendered prompt's template text from the message content in it.

A template (Jinja or Go) renders with some content strings replaced by placeholders that the
content cannot forge (a random number between two private-use characters); the rendered text
is then cut at the placeholders, each put back as its content. Leading and trailing
whitespace stays outside the placeholder, so a template that trims content (`| trim`, as
Llama 3 and Gemma do) is followed too. The pieces are checked against the rendering with the
real content: a template that changes content in any other way (slicing, `split`, case) gives
no pieces.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection

Segments = list[tuple[str, bool]]  # (text, whether it is message content), in prompt order


class ContentMarks:
    """The placeholders of one rendering. Call it on every content string, in the same order
    on every rendering of the same input: it gives the content back unchanged, or, for the
    strings numbered in `marked`, a placeholder; `seen` is every string it was given."""

    def __init__(self, marked: Collection[int] = ()) -> None:
        nonce = secrets.randbelow(10**12)
        self._pattern = re.compile(f"\ue000{nonce}\\.(\\d+)\ue001")
        self._nonce = nonce
        self._marked = marked
        self._cores: dict[int, str] = {}
        self.seen: list[str] = []

    def __call__(self, text: str) -> str:
        i = len(self.seen)
        self.seen.append(text)
        core = text.strip()
        if i not in self._marked or not core:
            return text
        self._cores[i] = core
        start = text.index(core)
        return f"{text[:start]}\ue000{self._nonce}.{i}\ue001{text[start + len(core) :]}"

    def segments(self, rendered: str, expected: str) -> Segments | None:
        """`rendered` (with placeholders) in pieces, each placeholder back as its content;
        None unless the pieces make up `expected` (the rendering with the real content)."""
        parts = self._pattern.split(rendered)
        out: Segments = []
        for j, part in enumerate(parts):
            if j % 2 == 0:
                if part:
                    out.append((part, False))
                continue
            core = self._cores.get(int(part))
            if core is None:
                return None
            out.append((core, True))
        return out if "".join(text for text, _ in out) == expected else None
