"""Log probabilities and echo through the official openai SDK, against a live inferd: the
SDK's typed objects read them (chat content entries, completions' parallel lists)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import LiveServer

MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{live_server.url}/v1", api_key="unused", timeout=120, max_retries=0
    ) as c:
        yield c


def test_chat_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = r.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    text = b"".join(bytes(e.bytes or []) for e in choice.logprobs.content).decode()
    assert text == choice.message.content
    for e in choice.logprobs.content:
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token  # greedy
        assert e.logprob <= 0 and math.isfinite(e.logprob)

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        stream=True,
    )
    tokens = [
        e.token
        for chunk in stream
        for c in chunk.choices
        if c.logprobs and c.logprobs.content
        for e in c.logprobs.content
    ]
    assert tokens == [e.token for e in choice.logprobs.content]


def test_completion_echo_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt="The sky is blue", echo=True, logprobs=2, max_tokens=0
    )
    choice = r.choices[0]
    assert choice.text == "The sky is blue" and choice.finish_reason == "length"
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert "".join(lp.tokens) == "The sky is blue"
    assert lp.token_logprobs[0] is None and all(v < 0 for v in lp.token_logprobs[1:])
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    assert all(len(t) == 2 for t in lp.top_logprobs[1:])
