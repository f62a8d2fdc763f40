"""Sampling one token from a row of logits in numpy, with llama.cpp's filters and their order:
logit bias -> top-k -> top-p -> min-p -> temperature -> a seeded draw (greedy: an argmax).

No step sorts the vocabulary. Top-k and top-p first look at a band of the highest logits (those
within some width of the maximum, widened until it is enough) and sort only that band; the
draw over the whole vocabulary is an inverse-CDF search over block sums. The kept set is the
same as llama.cpp's chain (sums in float64 where llama.cpp sums in float32, so a tie within
rounding at the top-p boundary may fall the other way); the draws come from numpy's PCG64, not
llama.cpp's RNG, so a seed gives other tokens than a llama.cpp chain with that seed would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from inferd.engine.types import SamplingParams

# widths of the bands of highest logits tried, in logits below the maximum, then everything;
# a try costs ~20 us over 49,152 tokens, sorting a band of 4,000 about as much. SmolLM2 rows
# needed widths of 2 to 12 for top_p 0.95 and 4 to 10 for top_k 40.
_BANDS = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 32.0)
# tokens per block in a draw over the whole vocabulary: a cumulative sum over the block sums,
# then over one block, instead of over every token
_BLOCK = 256

Ids = np.ndarray  # int64 token ids


def _band(logits: np.ndarray, top: float, enough: Callable[[Ids], bool]) -> Ids | None:
    """The ids of the narrowest band of highest logits that is `enough`; None: everything."""
    n = logits.shape[0]
    for width in _BANDS:
        ids = np.flatnonzero(logits >= top - width)
        if ids.size == n:
            return None
        if enough(ids):
            return ids
    return None


def _prefix(logits: np.ndarray, ids: Ids, top: float, target: float) -> Ids:
    """Of `ids` (a band of highest logits holding the mass), the fewest most probable tokens
    whose weights exp(logit - top) add up to `target`, the one that crosses it included.
    Sorts the logits, not the ids (numpy's float sort is vectorized, its argsort is not): the
    crossing token's logit is the cut; tokens tied with it are kept only as many as needed."""
    sub = logits[ids]
    ranked = np.sort(sub)[::-1]
    cum = np.cumsum(np.exp(ranked - np.float32(top)), dtype=np.float64)
    cross = min(int(np.searchsorted(cum, target, side="left")), ranked.size - 1)
    cut = ranked[cross]
    above = ids[sub > cut]
    tied = ids[sub == cut][: cross + 1 - above.size]
    return np.concatenate((above, tied))


class RowSampler:
    """One sequence's sampler: its filters, logit bias and random generator. Keeps no state but
    the generator's, so a sequence preempted and resumed goes on drawing the same stream."""

    __slots__ = (
        "_banned",
        "_bias_ids",
        "_bias_vals",
        "_log_min_p",
        "_rng",
        "_temp",
        "_top_k",
        "_top_p",
    )

    def __init__(self, params: SamplingParams, bias: Sequence[tuple[int, float]] = ()) -> None:
        self._bias_ids = np.array([t for t, _ in bias], dtype=np.intp)
        self._bias_vals = np.array([b for _, b in bias], dtype=np.float32)
        self._temp = params.temperature
        self._top_k = params.top_k
        self._top_p = params.top_p
        # llama.cpp's min-p keeps logit >= max + logf(min_p), in float32
        self._log_min_p = np.float32(math.log(params.min_p)) if params.min_p > 0.0 else None
        # Greedy whose bias only bans tokens (ignore_eos bans every end-of-generation token):
        # the row's first maximum is the answer unless it is banned, with no copy of the row.
        self._banned: frozenset[int] | None = None
        if params.greedy and bias and all(b == -math.inf for _, b in bias):
            self._banned = frozenset(t for t, _ in bias)
        self._rng: np.random.Generator | None = None
        if not params.greedy:
            seed = None if params.seed is None else params.seed & 0xFFFFFFFF
            self._rng = np.random.default_rng(seed)  # None: fresh entropy from the OS

    def biased(self, logits: np.ndarray) -> np.ndarray:
        """The row after the logit bias (a copy when there is one; repeated ids add up)."""
        if not self._bias_ids.size:
            return logits
        out = logits.copy()
        np.add.at(out, self._bias_ids, self._bias_vals)
        return out

    def sample(self, logits: np.ndarray) -> int:
        """One token from a float32 row of the whole vocabulary (read, never written)."""
        if self._banned is not None:
            token = int(logits.argmax())
            if token not in self._banned:
                return token
        logits = self.biased(logits)
        if self._rng is None:
            return int(logits.argmax())  # the first maximum, as llama.cpp's greedy sampler
        top = float(logits.max())
        if top == -math.inf:  # everything banned: nothing to weigh
            return int(logits.argmax())
        ids = self._filter(logits, top)
        u = self._rng.random()
        if ids is None:
            return self._draw_all(logits, top, u)
        weights = np.exp((logits[ids].astype(np.float64) - top) / self._temp)
        cum = np.cumsum(weights)
        i = int(np.searchsorted(cum, u * cum[-1], side="right"))
        return int(ids[min(i, ids.size - 1)])

    def candidates(self, logits: np.ndarray) -> Ids:
        """The ids that survive top-k, top-p and min-p on this row, after the bias."""
        logits = self.biased(logits)
        ids = self._filter(logits, float(logits.max()))
        return np.arange(logits.shape[0]) if ids is None else ids

    # ---- the filters ------------------------------------------------------------------------

    def _filter(self, logits: np.ndarray, top: float) -> Ids | None:
        """Top-k, then top-p, then min-p: the ids kept, None for the whole vocabulary."""
        ids: Ids | None = None
        floor = None if self._log_min_p is None else np.float32(top) + self._log_min_p
        if 0 < self._top_k < logits.shape[0]:
            ids = self._top_k_ids(logits, top, self._top_k)
        if self._top_p < 1.0:
            if ids is None:
                ids = self._top_p_vocab(logits, top, floor)
            else:
                weights = np.exp(logits[ids] - np.float32(top))
                ids = _prefix(logits, ids, top, self._top_p * float(weights.sum(dtype=np.float64)))
        if floor is not None:
            ids = np.flatnonzero(logits >= floor) if ids is None else ids[logits[ids] >= floor]
        return ids

    @staticmethod
    def _top_k_ids(logits: np.ndarray, top: float, k: int) -> Ids:
        band = _band(logits, top, lambda ids: ids.size >= k)
        if band is None:
            return np.argpartition(logits, logits.shape[0] - k)[-k:]
        part = np.argpartition(logits[band], band.size - k)[-k:]
        return band[part]

    def _top_p_vocab(self, logits: np.ndarray, top: float, floor: np.float32 | None) -> Ids:
        """Top-p over the whole vocabulary: the prefix is found in a band of the highest
        logits that holds the mass. min-p, which comes next, keeps a prefix of the same
        order: when its set lacks the mass, it is the answer, else it is the band."""
        weights = np.exp(logits - np.float32(top))  # float32, over the vocabulary
        target = self._top_p * float(weights.sum(dtype=np.float64))

        def enough(ids: Ids) -> bool:
            return float(weights[ids].sum(dtype=np.float64)) >= target

        band: Ids | None
        if floor is not None:
            kept = np.flatnonzero(logits >= floor)
            if not enough(kept):
                return kept
            band = kept
        else:
            band = _band(logits, top, enough)
        return _prefix(logits, np.arange(logits.shape[0]) if band is None else band, top, target)

    # ---- the draw ---------------------------------------------------------------------------

    def _draw_all(self, logits: np.ndarray, top: float, u: float) -> int:
        """Inverse-CDF draw over the whole vocabulary at the temperature, in token-id order:
        the block whose cumulative mass passes u, then the token within it. Always a token
        of positive weight (a banned one has none)."""
        n = logits.shape[0]
        weights = np.exp((logits - np.float32(top)) * np.float32(1.0 / self._temp))
        sums = np.add.reduceat(weights, np.arange(0, n, _BLOCK), dtype=np.float64)
        cum = np.cumsum(sums)
        target = u * cum[-1]
        b = int(np.searchsorted(cum, target, side="right"))
        if b == cum.size:  # u * total rounded up to the total
            b = int(np.flatnonzero(sums)[-1])
            target = cum[b]
        start = b * _BLOCK
        block = weights[start : start + _BLOCK]
        inner = np.cumsum(block, dtype=np.float64)
        j = int(np.searchsorted(inner, target - (cum[b - 1] if b else 0.0), side="right"))
        if j == inner.size:  # the block's own sum rounded differently
            j = int(np.flatnonzero(block)[-1])
        return start + j
