"""Prompts for a benchmark: random text of a given length, or shared prefixes."""

from __future__ import annotations

import random
from dataclasses import dataclass

_WORDS = [
    "river",
    "mountain",
    "lantern",
    "quiet",
    "harbor",
    "silver",
    "garden",
    "winter",
    "orchard",
    "signal",
    "paper",
    "window",
    "engine",
    "market",
    "forest",
    "copper",
    "meadow",
    "thunder",
    "pocket",
    "violin",
    "candle",
    "bridge",
    "anchor",
    "saddle",
    "marble",
    "feather",
    "compass",
    "island",
    "ladder",
    "meteor",
    "basket",
    "canyon",
    "glacier",
    "whistle",
    "puzzle",
    "kettle",
    "falcon",
    "velvet",
    "pepper",
    "rocket",
    "tunnel",
    "walnut",
    "pillow",
    "shadow",
    "cobalt",
    "saffron",
    "harvest",
]


@dataclass(frozen=True)
class Workload:
    """`n` prompts of about `prompt_words` words; with `shared_prefixes` > 0 every prompt
    starts with one of that many `prefix_words`-word prefixes, interleaved."""

    prompt_words: int = 32
    max_tokens: int = 128
    shared_prefixes: int = 0
    prefix_words: int = 600
    seed: int = 0

    def prompts(self, n: int) -> list[str]:
        rng = random.Random(self.seed)

        def text(words: int) -> str:
            return " ".join(rng.choice(_WORDS) for _ in range(words))

        prefixes = [
            f"Document {k}: {text(self.prefix_words)}\n\n" for k in range(self.shared_prefixes)
        ]
        out = []
        for i in range(n):
            head = prefixes[i % len(prefixes)] if prefixes else ""
            out.append(f"{head}Request {i}: {text(self.prompt_words)}. Continue the story:")
        return out
