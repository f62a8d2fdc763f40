"""The transformers backend's sampler: llama.cpp's penalty semantics in front of the numpy
row sampler, over the last `penalty_last_n` sampled tokens."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.engine.types import SamplingParams

pytest.importorskip("torch", reason="needs the hf extra: pip install 'inferd[hf]'")

from inferd.engine.backends.torch.sampling import TorchSampler


def test_penalties_follow_llama_cpp_over_the_last_n_sampled_tokens() -> None:
    params = SamplingParams(
        temperature=0.0,
        repetition_penalty=2.0,
        frequency_penalty=0.5,
        presence_penalty=0.25,
        penalty_last_n=2,
    )
    sampler = TorchSampler(params, [])
    logits = np.array([3.0, 2.9, -1.0, 0.0], dtype=np.float32)
    assert sampler.sample(logits) == 0  # nothing seen yet: the plain argmax
    # token 0 seen once: 3.0 / 2 - 0.5 - 0.25 = 0.75 < 2.9
    assert sampler.sample(logits) == 1
    # 0 and 1 seen once each: 0.75 and 2.9 / 2 - 0.75 = 0.7; 0 wins back
    assert sampler.sample(logits) == 0
    # the window is the last 2 sampled tokens (1, 0): as before, 0 penalized to 0.75, 1 to 0.7
    out = sampler._penalize(logits)
    assert out[0] == pytest.approx(0.75) and out[1] == pytest.approx(0.7)
    assert out[2] == -1.0 and out[3] == 0.0  # unseen tokens untouched
    seen_negative = TorchSampler(params, [])
    seen_negative._counts.update({2: 2})
    assert seen_negative._penalize(logits)[2] == pytest.approx(-1.0 * 2.0 - 2 * 0.5 - 0.25)


def test_no_penalties_no_window_and_a_seed_repeats() -> None:
    rows = np.random.default_rng(0).standard_normal((8, 100)).astype(np.float32)
    a = TorchSampler(SamplingParams(temperature=1.0, seed=5), [])
    b = TorchSampler(SamplingParams(temperature=1.0, seed=5), [])
    assert a._recent is None
    assert [a.sample(r) for r in rows] == [b.sample(r) for r in rows]
    banned = TorchSampler(SamplingParams(temperature=0.0), [(int(rows[0].argmax()), -np.inf)])
    assert banned.sample(rows[0]) != int(rows[0].argmax())
