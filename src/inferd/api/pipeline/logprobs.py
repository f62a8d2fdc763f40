"""Log probabilities as the dialects show them: each token with its text, bytes and place in
the text, once for every dialect (the adapters only lay them out).

The numbers are the engine's (`engine.backends.logprobs`): the log-softmax of the model's
raw logits, before logit bias, penalties, temperature and filters.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inferd.engine.client import EngineClient
from inferd.engine.types import TokenLogprob


@dataclass(frozen=True, slots=True)
class Alternative:
    token: str
    bytes: bytes
    logprob: float


@dataclass(frozen=True, slots=True)
class ScoredToken:
    """A token of the text: its text (a piece of a multi-byte character shows as U+FFFD;
    `bytes` has it whole), where its text starts in the text (`offset`, in characters),
    its log probability (None: the prompt's first token) and the most likely
    alternatives."""

    token: str
    bytes: bytes
    offset: int
    logprob: float | None
    top: tuple[Alternative, ...]


class Describer:
    """Turns an engine's token log probabilities into `ScoredToken`s, keeping the text
    offset across calls (a stream's outputs, or a prompt and then its completion)."""

    def __init__(self, engine: EngineClient, offset: int = 0) -> None:
        self._engine = engine
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.offset = offset

    def _piece(self, token: int) -> tuple[str, bytes]:
        data = self._engine.token_bytes(token)
        return data.decode("utf-8", "replace"), data

    def describe(
        self, tokens: Sequence[int], scores: Sequence[TokenLogprob | None]
    ) -> list[ScoredToken]:
        """`tokens` with their `scores` (one each, in order; None: not scored)."""
        out = []
        for token, lp in zip(tokens, scores, strict=True):
            text, data = self._piece(token)
            top = () if lp is None else tuple(Alternative(*self._piece(t), v) for t, v in lp.top)
            out.append(
                ScoredToken(text, data, self.offset, None if lp is None else lp.logprob, top)
            )
            self.offset += len(self._decoder.decode(data))
        return out

    def scored(self, scores: Sequence[TokenLogprob]) -> list[ScoredToken]:
        """Generated tokens, each with its score."""
        return self.describe([lp.token for lp in scores], scores)


def token_entries(scored: Sequence[ScoredToken]) -> list[dict[str, Any]]:
    """Tokens as OpenAI's chat and Ollama lay them out: `token`, `logprob`, `bytes` (a list
    of byte values) and `top_logprobs` (the same, without alternatives)."""
    return [
        {
            "token": t.token,
            "logprob": t.logprob,
            "bytes": list(t.bytes),
            "top_logprobs": [
                {"token": a.token, "logprob": a.logprob, "bytes": list(a.bytes)} for a in t.top
            ],
        }
        for t in scored
    ]
