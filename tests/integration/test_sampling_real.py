"""Greedy sampling in numpy picks exactly the tokens llama.cpp's own greedy chain picks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inferd.engine.backends.llamacpp import (
    LlamaCppBackend,
    LlamaCppOptions,
    LlamaCppSampler,
    NumpySampler,
)
from inferd.engine.types import SamplingParams

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "1, 2, 3, 4,",
]


@pytest.fixture(scope="module")
def backend(model_path: Path) -> Iterator[LlamaCppBackend]:
    b = LlamaCppBackend(model_path, LlamaCppOptions(n_ctx=512, max_seqs=4))
    yield b
    b.close()


def _run_both(backend: LlamaCppBackend, params: SamplingParams, steps: int) -> list[list[int]]:
    """Decode the prompts together for `steps` steps; at every row compare the numpy pick
    with the llama.cpp chain's pick. Returns each sequence's generated tokens."""
    fast = [backend.new_sampler(params) for _ in PROMPTS]
    chain = [backend.new_sampler(params, llama_chain=True) for _ in PROMPTS]
    assert all(isinstance(s, NumpySampler) for s in fast)
    assert all(isinstance(s, LlamaCppSampler) for s in chain)
    prompts = [backend.tokenize(p, add_special=True, parse_special=False) for p in PROMPTS]
    out: list[list[int]] = [[] for _ in PROMPTS]
    try:
        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        logits: list[bool] = []
        for s, p in enumerate(prompts):
            tokens += p
            positions += range(len(p))
            seq_ids += [s] * len(p)
            logits += [False] * (len(p) - 1) + [True]
        rows = [i for i, flag in enumerate(logits) if flag]
        pos = [len(p) for p in prompts]
        for _ in range(steps):
            assert backend.decode(tokens, positions, seq_ids, logits)
            picks = [fast[s].sample(row) for s, row in enumerate(rows)]
            assert picks == [chain[s].sample(row) for s, row in enumerate(rows)]
            for s, t in enumerate(picks):
                out[s].append(t)
            tokens, positions = picks, list(pos)
            seq_ids, logits = list(range(len(PROMPTS))), [True] * len(PROMPTS)
            rows = list(range(len(PROMPTS)))
            pos = [p + 1 for p in pos]
    finally:
        for s in range(len(PROMPTS)):
            fast[s].close()
            chain[s].close()
            backend.free_seq(s)
    return out


def test_greedy_argmax_matches_llama_chain(backend: LlamaCppBackend) -> None:
    out = _run_both(backend, SamplingParams(temperature=0.0), steps=24)
    assert all(len(set(toks)) > 1 for toks in out)  # real text, not one repeated token


def test_greedy_with_ignore_eos_and_bias_matches_llama_chain(backend: LlamaCppBackend) -> None:
    plain = _run_both(backend, SamplingParams(temperature=0.0), steps=3)
    first = plain[0][0]
    # banning the token it would pick, and pushing another one up, change the answer; the
    # numpy argmax must agree with llama.cpp's logit-bias sampler, repeated ids adding up
    bias = ((first, float("-inf")), (first + 1, 5.0), (first + 1, 5.0))
    params = SamplingParams(temperature=0.0, ignore_eos=True, logit_bias=bias)
    biased = _run_both(backend, params, steps=12)
    assert biased[0][0] != first
    assert not any(backend.is_eog(t) for toks in biased for t in toks)


def test_greedy_with_only_bans_matches_llama_chain(backend: LlamaCppBackend) -> None:
    """Bans alone take the argmax of the row as it is unless that token is banned: both
    ways must agree with llama.cpp's chain."""
    plain = _run_both(backend, SamplingParams(temperature=0.0), steps=3)
    assert _run_both(backend, SamplingParams(temperature=0.0, ignore_eos=True), steps=3) == plain
    bans = tuple((toks[0], float("-inf")) for toks in plain)  # every sequence's first pick
    params = SamplingParams(temperature=0.0, ignore_eos=True, logit_bias=bans)
    banned = _run_both(backend, params, steps=6)
    assert all(toks[0] != p[0] for toks, p in zip(banned, plain, strict=True))
    assert not {t for t, _ in bans} & {t for toks in banned for t in toks}


def test_samplers_that_keep_state_stay_llama_chains(backend: LlamaCppBackend) -> None:
    cases = [
        SamplingParams(temperature=0.0, repetition_penalty=1.2),
        SamplingParams(temperature=0.0, json_mode=True),
        SamplingParams(temperature=0.7, seed=1, presence_penalty=0.5),
    ]
    for params in cases:
        sampler = backend.new_sampler(params)
        try:
            assert isinstance(sampler, LlamaCppSampler), params
        finally:
            sampler.close()


def test_greedy_sampler_reads_the_requested_row(backend: LlamaCppBackend) -> None:
    p = backend.tokenize(PROMPTS[0], add_special=True, parse_special=False)
    assert backend.decode(p, list(range(len(p))), [0] * len(p), [True] * len(p))
    try:
        sampler = backend.new_sampler(SamplingParams(temperature=0.0))
        picks = [sampler.sample(i) for i in range(len(p))]
        chain = backend.new_sampler(SamplingParams(temperature=0.0), llama_chain=True)
        assert picks == [chain.sample(i) for i in range(len(p))]
        chain.close()
        assert len(set(picks)) > 1
        assert np.all(np.array(picks) >= 0)
    finally:
        backend.free_seq(0)


def _draws(backend: LlamaCppBackend, params: SamplingParams, n: int) -> list[int]:
    """`n` draws from one sampler on every row of one decoded prompt."""
    p = backend.tokenize(PROMPTS[2], add_special=True, parse_special=False)
    assert backend.decode(p, list(range(len(p))), [0] * len(p), [True] * len(p))
    sampler = backend.new_sampler(params)
    try:
        assert isinstance(sampler, NumpySampler)
        return [sampler.sample(i % len(p)) for i in range(n)]
    finally:
        sampler.close()
        backend.free_seq(0)


def test_a_seed_repeats_its_draws_and_another_seed_does_not(backend: LlamaCppBackend) -> None:
    a = _draws(backend, SamplingParams(temperature=1.0, seed=7), 200)
    assert a == _draws(backend, SamplingParams(temperature=1.0, seed=7), 200)
    assert a != _draws(backend, SamplingParams(temperature=1.0, seed=8), 200)
    assert len(set(a)) > 20  # really drawn, not the argmax every time


def test_banned_tokens_are_never_drawn(backend: LlamaCppBackend) -> None:
    free = _draws(backend, SamplingParams(temperature=1.5, seed=3), 300)
    banned = sorted(set(free))[:5]
    params = SamplingParams(
        temperature=1.5,
        seed=3,
        ignore_eos=True,
        logit_bias=tuple((t, float("-inf")) for t in banned),
    )
    drawn = _draws(backend, params, 2000)
    assert not set(drawn) & set(banned)
    assert not any(backend.is_eog(t) for t in drawn)
