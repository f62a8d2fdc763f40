"""Log probabilities in OpenAI's two layouts: chat's `content` entries, and the legacy
completions' parallel lists (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inferd.api.pipeline.logprobs import Describer, ScoredToken, token_entries
from inferd.engine.types import TokenLogprob


def chat_logprobs(describer: Describer, scores: Sequence[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's (or a chunk's) `logprobs` object."""
    return {"content": token_entries(describer.scored(scores)), "refusal": None}


def completion_logprobs(scored: Sequence[ScoredToken]) -> dict[str, Any]:
    """A completion choice's (or a chunk's) `logprobs` object. The prompt's first token
    (echo) has null for its log probability and alternatives."""
    return {
        "tokens": [t.token for t in scored],
        "token_logprobs": [t.logprob for t in scored],
        "top_logprobs": [
            None if t.logprob is None else {a.token: a.logprob for a in t.top} for t in scored
        ],
        "text_offset": [t.offset for t in scored],
    }


def echoed(
    describer: Describer,
    prompt: Sequence[int],
    scores: Sequence[TokenLogprob | None] | None,
    prompt_text: str,
) -> list[ScoredToken]:
    """The prompt's tokens as echoed before a completion (scored when the engine scored
    them); the completion's offsets then start after `prompt_text`, the echoed text."""
    scored = describer.describe(prompt, scores if scores is not None else [None] * len(prompt))
    describer.offset = len(prompt_text)
    return scored
