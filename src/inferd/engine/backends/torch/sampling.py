"""Sampling on a torch model's logits: inferd's numpy `RowSampler` (logit bias, top-k, top-p,
min-p, temperature, a seeded draw) behind llama.cpp's penalties, with llama.cpp's semantics,
so a request samples alike on either runtime; a grammar's state (`constraint.Constraint`)
for structured output."""

from __future__ import annotations

from collections import Counter, deque
from typing import TYPE_CHECKING

import numpy as np

from inferd.engine.backends.numpy_sampling import RowSampler
from inferd.engine.types import SamplingParams

if TYPE_CHECKING:
    from inferd.engine.backends.torch.constraint import Constraint


class TorchSampler:
    """One sequence's sampler. Penalties look at its last `penalty_last_n` sampled tokens:
    a token seen c times has its logit divided by the repetition penalty (multiplied when not
    positive), then c x frequency + presence subtracted, as llama.cpp's penalties sampler
    does; the rest is the `RowSampler`. With a `constraint` (structured output), the row
    it samples from has been masked by the grammar (`constraint.Grammars.masked`) and the
    token it picks is fed to the grammar."""

    __slots__ = ("_counts", "_params", "_recent", "_rows", "constraint")

    def __init__(
        self,
        params: SamplingParams,
        bias: list[tuple[int, float]],
        constraint: Constraint | None = None,
    ) -> None:
        self._rows = RowSampler(params, bias)
        self.constraint = constraint
        self._params = params
        penalized = (
            params.repetition_penalty != 1.0
            or params.presence_penalty != 0.0
            or params.frequency_penalty != 0.0
        )
        window = max(params.penalty_last_n, 0) if penalized else 0
        self._recent: deque[int] | None = deque(maxlen=window) if window else None
        self._counts: Counter[int] = Counter()

    def sample(self, logits: np.ndarray) -> int:
        row = logits
        if self._recent is not None and self._counts:
            logits = self._penalize(logits)
        token = self._rows.sample(logits)
        if self.constraint is not None:
            token = self.constraint.accept(token, row)
        recent = self._recent
        if recent is not None:
            if len(recent) == recent.maxlen:
                old = recent[0]
                self._counts[old] -= 1
                if not self._counts[old]:
                    del self._counts[old]
            recent.append(token)
            self._counts[token] += 1
        return token

    def _penalize(self, logits: np.ndarray) -> np.ndarray:
        p = self._params
        ids = np.fromiter(self._counts.keys(), dtype=np.intp)
        counts = np.fromiter(self._counts.values(), dtype=np.float32)
        out = logits.copy()
        vals = out[ids]
        vals = np.where(vals <= 0, vals * p.repetition_penalty, vals / p.repetition_penalty)
        vals -= counts * p.frequency_penalty + p.presence_penalty
        out[ids] = vals.astype(np.float32)
        return out

    def close(self) -> None:
        pass
