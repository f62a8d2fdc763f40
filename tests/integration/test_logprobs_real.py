"""Log probabilities on the real engine and the bundled model, held to llama.cpp itself: the
prompt's (echo) against a direct llama.cpp evaluation of the same tokens with logits for every
position, and the generated tokens' against the greedy choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import AppHandle

TEXT = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with "
    "a single step. Knowledge is power, and time is money; the early bird catches the worm. "
)


def log_softmax(rows: np.ndarray) -> np.ndarray:
    x = rows.astype(np.float64)
    top = x.max(axis=1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=1, keepdims=True))


@pytest.fixture(scope="module")
def direct(model_path: Path):  # type: ignore[no-untyped-def]
    """llama.cpp's own high-level API, logits at every position."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(model_path), n_ctx=1024, logits_all=True, verbose=False, seed=0
    )
    yield llm
    llm.close()


def reference(llm, tokens: list[int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Log probabilities after each position (rows x vocabulary)."""
    llm.reset()
    llm.eval(tokens)
    return log_softmax(np.array(llm.scores[: len(tokens)]))


async def test_echo_prompt_logprobs_match_llama_cpp(real: AppHandle, direct) -> None:  # type: ignore[no-untyped-def]
    tokens = await real.engine().tokenize(TEXT * 5, add_special=False, parse_special=False)
    assert len(tokens) > 128  # fed over several steps (128 tokens each on a CPU)
    r = await real.client.post(
        "/v1/completions",
        json={"prompt": tokens, "echo": True, "logprobs": 3, "max_tokens": 0},
    )
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(tokens)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    expected = reference(direct, tokens)
    got = np.array(lp["token_logprobs"][1:], dtype=np.float64)
    want = expected[np.arange(len(tokens) - 1), tokens[1:]]
    assert np.abs(got - want).max() < 1e-3
    for p in range(1, len(tokens)):  # the alternatives are the row's three best
        best = np.sort(expected[p - 1])[::-1][:3]
        assert sorted(lp["top_logprobs"][p].values(), reverse=True) == pytest.approx(best, abs=1e-3)
    assert "".join(lp["tokens"]) == r.json()["choices"][0]["text"]


async def test_generated_logprobs_match_llama_cpp(real: AppHandle, direct) -> None:  # type: ignore[no-untyped-def]
    tokens = await real.engine().tokenize(TEXT, add_special=False, parse_special=False)
    r = await real.client.post(
        "/v1/completions",
        json={"prompt": tokens, "logprobs": 2, "max_tokens": 8, "temperature": 0},
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    # the first generated token comes from the row after the prompt: the best one (greedy)
    row = reference(direct, tokens)[-1]
    assert lp["token_logprobs"][0] == pytest.approx(row.max(), abs=1e-3)
    assert lp["tokens"][0] == direct.detokenize([int(row.argmax())]).decode()
    for value, top in zip(lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert max(top.values()) == pytest.approx(value, abs=1e-6)
        assert len(top) == 2


async def test_chat_logprobs_greedy_and_streamed_agree(real: AppHandle) -> None:
    body = {
        "messages": [{"role": "user", "content": "Name three colors."}],
        "max_tokens": 12,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    r = await real.client.post("/v1/chat/completions", json=body)
    choice = r.json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert b"".join(bytes(e["bytes"]) for e in content).decode() == choice["message"]["content"]
    for e in content:
        assert e["top_logprobs"][0]["token"] == e["token"]
        assert e["top_logprobs"][0]["logprob"] == pytest.approx(e["logprob"])
    s = await real.client.post("/v1/chat/completions", json={**body, "stream": True})
    streamed = [
        e
        for line in s.text.splitlines()
        if line.startswith("data: {")
        for c in [json.loads(line[6:])]
        for ch in c["choices"]
        if ch.get("logprobs")
        for e in ch["logprobs"]["content"]
    ]
    assert [e["token"] for e in streamed] == [e["token"] for e in content]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in content])
