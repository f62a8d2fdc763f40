"""Log probabilities from rows of raw logits, for the backends that compute logits in numpy
reach (llama.cpp's logits buffer, a torch tensor's `.numpy()`).

A log probability is the log-softmax of the model's raw logits: before logit bias,
penalties, temperature, top-k/p and grammars, so it says what the model thinks of a token,
not how likely the sampler was to pick it (the same definition as vLLM's default and
llama.cpp's server `n_probs` before sampling). Computed only for the sequences whose
SamplingParams ask for them (see `Backend.execute`). A token the model rules out (a raw
logit of -inf, e.g. a padded vocabulary's unused rows) scores FLOOR, as OpenAI and vLLM
write it: JSON has no infinity.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import numpy as np

from inferd.engine.sequence import Chunk
from inferd.engine.types import TokenLogprob

FLOOR = -9999.0


def token_logprobs(rows: np.ndarray, tokens: Seq[int], k: int) -> list[TokenLogprob]:
    """For each row of logits (2-D: rows x vocabulary) the log probability of the token at
    the same index of `tokens`, with the `k` most likely tokens of that row."""
    x = np.asarray(rows, dtype=np.float32)
    top = x.max(axis=1, keepdims=True)
    lse = top[:, 0].astype(np.float64) + np.log(
        np.exp(x - top, dtype=np.float32).sum(axis=1, dtype=np.float64)
    )
    ids = np.asarray(tokens, dtype=np.intp)
    chosen = np.maximum(x[np.arange(len(ids)), ids].astype(np.float64) - lse, FLOOR)
    best: np.ndarray | None = None
    if k > 0:
        k = min(k, x.shape[1])
        part = np.argpartition(x, x.shape[1] - k, axis=1)[:, -k:]
        order = np.argsort(-np.take_along_axis(x, part, axis=1), axis=1, kind="stable")
        best = np.take_along_axis(part, order, axis=1)
    out = []
    for i, token in enumerate(ids.tolist()):
        alts: tuple[tuple[int, float], ...] = ()
        if best is not None:
            alts = tuple((int(t), max(float(x[i, t] - lse[i]), FLOOR)) for t in best[i])
        out.append(TokenLogprob(token, float(chosen[i]), alts))
    return out


def prompt_positions(chunk: Chunk) -> range:
    """Positions of `chunk` whose logits score a prompt token not yet scored: position p
    scores token p + 1. Empty unless the sequence asked for its prompt's log probabilities
    (`seq.prompt_logprobs`, which holds the scores so far; a preempted sequence fed again
    scores nothing twice)."""
    seq = chunk.seq
    scored = seq.prompt_logprobs
    if scored is None:
        return range(0)
    return range(max(chunk.start, len(scored) - 1), min(chunk.end, seq.n_prompt - 1))
