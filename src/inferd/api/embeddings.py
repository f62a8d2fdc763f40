"""Embeddings for every dialect: check and tokenize the inputs, embed them in one engine
call (the backend packs several inputs per decode), normalize, encode."""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inferd.config import Settings
from inferd.engine.client import EngineClient
from inferd.errors import ContextTooLong, InvalidRequest


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


async def embed(
    engine: EngineClient,
    inputs: Sequence[str | Sequence[int]],
    settings: Settings,
    *,
    param: str,
    indexed: bool = False,
    n_ctx: int | None = None,
    truncate: bool = False,
    normalize: bool = True,
    dimensions: int | None = None,
) -> Embeddings:
    """Embed texts or token-id lists. Each input must be non-empty and fit `n_ctx` (capped
    by the model's embeddings limit) unless `truncate`, which keeps its first tokens.
    `dimensions`: each vector's first values, normalized again (as OpenAI and Ollama
    shorten embeddings). Errors are 400s naming `param`, or `param[i]` for the i-th input
    when `indexed` (the client sent a list of inputs), or `dimensions`."""
    info = engine.info
    if dimensions is not None and not 1 <= dimensions <= info.n_embd:
        raise InvalidRequest(
            f"dimensions must be between 1 and {info.n_embd}, the model's embedding size",
            param="dimensions",
        )
    if not inputs:
        raise InvalidRequest(f"{param} must not be empty", param=param)
    if len(inputs) > settings.max_embedding_inputs:
        raise InvalidRequest(
            f"{param} may hold at most {settings.max_embedding_inputs} inputs", param=param
        )
    limit = min(n_ctx or info.embed_limit, info.embed_limit)
    token_lists: list[list[int]] = []
    for i, item in enumerate(inputs):
        where = f"{param}[{i}]" if indexed else param
        if isinstance(item, str):
            if not item:
                raise InvalidRequest(f"{where} is an empty string", param=where)
            tokens = await engine.tokenize(item, add_special=True, parse_special=False)
        else:
            tokens = list(item)
            bad = next((t for t in tokens if not 0 <= t < info.n_vocab), None)
            if bad is not None:
                raise InvalidRequest(
                    f"token id {bad} in {where} is outside the vocabulary (0..{info.n_vocab - 1})",
                    param=where,
                )
        if not tokens:
            raise InvalidRequest(f"{where} is empty", param=where)
        if len(tokens) > limit:
            if not truncate:
                raise ContextTooLong(
                    f"{where} has {len(tokens)} tokens, more than the embeddings context "
                    f"of {limit}",
                    param=where,
                )
            tokens = tokens[:limit]
        token_lists.append(tokens)
    vectors = await engine.embed(token_lists)
    if dimensions is not None:
        vectors = [v[:dimensions] for v in vectors]
    if normalize or dimensions is not None:
        vectors = [l2_normalize(v) for v in vectors]
    return Embeddings(vectors, sum(len(t) for t in token_lists))


def l2_normalize(vector: list[float]) -> list[float]:
    """Unit length, as Ollama's /api/embed and OpenAI return them (a zero vector stays zero)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)


def to_base64(vector: list[float]) -> str:
    """OpenAI's `encoding_format: base64`: little-endian float32 values, base64-encoded."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
