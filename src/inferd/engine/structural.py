"""Output shaped as literal text around JSON values: what tool calls need from a sampler.

The shape follows the "structural tags" of xgrammar and vLLM, so a backend can hand it to
its own grammar engine: `prefix`, then one tag (or several, `repeat`, joined by
`separator`), then `suffix`, where a tag is its `begin` text, a JSON value valid under its
schema, and its `end` text. A lazy shape (`trigger` set) leaves the output free until the
trigger text appears, and applies from the trigger on: `prefix` (or, without one, every
tag's `begin`) starts with the trigger.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JsonTag:
    begin: str
    schema: str  # a JSON Schema as compact JSON text, validated by the API layer
    end: str


@dataclass(frozen=True, slots=True)
class TaggedJson:
    tags: tuple[JsonTag, ...]
    prefix: str = ""
    separator: str = ""
    suffix: str = ""
    repeat: bool = False  # one tag, or one or more
    trigger: str | None = None  # None: the whole output has this shape

    def __post_init__(self) -> None:
        if self.trigger is not None:
            starts = [self.prefix] if self.prefix else [t.begin for t in self.tags]
            if not self.trigger or not all(s.startswith(self.trigger) for s in starts):
                raise ValueError(
                    "a lazy shape's prefix (or each tag's begin) starts with its trigger"
                )
