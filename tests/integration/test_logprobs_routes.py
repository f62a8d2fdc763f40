"""Log probabilities and echo on every dialect's routes, on the fake backend (whose logits are
known: `fake_logits`): the wire layouts, streaming, and the 400s."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from inferd.engine.backends.fake import fake_logits
from tests.conftest import FakeFactory

REPLY = "Hi there"


def logprob(after: int, token: int) -> float:
    x = fake_logits([after])[0].astype(np.float64)
    return float(x[token] - (x.max() + math.log(np.exp(x - x.max()).sum())))


def ids(text: str) -> list[int]:
    return [b + 1 for b in text.encode()]


async def sse(response_text: str) -> list[dict]:  # type: ignore[type-arg]
    return [
        json.loads(line[6:])
        for line in response_text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


async def test_chat_logprobs_entries(fake_app: FakeFactory) -> None:
    async with fake_app(reply=REPLY) as h:
        r = await h.client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "hi"}],
                "logprobs": True,
                "top_logprobs": 3,
            },
        )
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        content = choice["logprobs"]["content"]
        assert "".join(e["token"] for e in content) == REPLY == choice["message"]["content"]
        assert [bytes(e["bytes"]).decode() for e in content] == list(REPLY)
        # each token's score comes from the logits after the token before it (the first
        # one's is after the template's last token)
        for prev, e in zip(REPLY, content[1:], strict=False):
            assert e["logprob"] == pytest.approx(logprob(ord(prev) + 1, ord(e["token"]) + 1))
        for e in content:
            top = e["top_logprobs"]
            assert len(top) == 3
            assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
            assert all(t["logprob"] <= 0 for t in top)

        plain = await h.client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
        assert plain.json()["choices"][0]["logprobs"] is None


async def test_chat_logprobs_stream(fake_app: FakeFactory) -> None:
    async with fake_app(reply=REPLY) as h:
        r = await h.client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "hi"}],
                "logprobs": True,
                "stream": True,
            },
        )
        chunks = await sse(r.text)
        entries = [
            e
            for c in chunks
            for ch in c["choices"]
            if ch.get("logprobs")
            for e in ch["logprobs"]["content"]
        ]
        assert "".join(e["token"] for e in entries) == REPLY
        assert all(e["top_logprobs"] == [] for e in entries)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": "yes"}, "logprobs"),
    ],
)
async def test_chat_logprobs_bad_values(fake_app: FakeFactory, body: dict, param: str) -> None:  # type: ignore[type-arg]
    async with fake_app() as h:
        r = await h.client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], **body}
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param


async def test_completion_logprobs_layout(fake_app: FakeFactory) -> None:
    async with fake_app(reply=REPLY) as h:
        r = await h.client.post("/v1/completions", json={"prompt": "abc", "logprobs": 2})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        lp = choice["logprobs"]
        assert "".join(lp["tokens"]) == REPLY == choice["text"]
        assert lp["text_offset"] == list(range(len(REPLY)))
        prev = "c"
        for tok, value, top in zip(
            lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True
        ):
            assert value == pytest.approx(logprob(ord(prev) + 1, ord(tok) + 1))
            assert len(top) == 2
            prev = tok


async def test_echo_with_logprobs_and_max_tokens_zero(fake_app: FakeFactory) -> None:
    async with fake_app(reply=REPLY) as h:
        r = await h.client.post(
            "/v1/completions",
            json={"prompt": "hello", "echo": True, "logprobs": 1, "max_tokens": 0},
        )
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["text"] == "hello" and choice["finish_reason"] == "length"
        lp = choice["logprobs"]
        assert lp["tokens"] == list("hello")
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert lp["text_offset"] == [0, 1, 2, 3, 4]
        for i in range(1, 5):
            expected = logprob(ord("hello"[i - 1]) + 1, ord("hello"[i]) + 1)
            assert lp["token_logprobs"][i] == pytest.approx(expected)
        assert r.json()["usage"]["completion_tokens"] == 0

        # token prompts, several, echoed with completions after them
        r = await h.client.post(
            "/v1/completions",
            json={"prompt": [ids("ab"), ids("xyz")], "echo": True, "logprobs": 0, "max_tokens": 2},
        )
        choices = r.json()["choices"]
        assert [c["text"] for c in choices] == ["abHi", "xyzHi"]
        assert choices[1]["logprobs"]["tokens"] == ["x", "y", "z", "H", "i"]
        assert choices[1]["logprobs"]["text_offset"] == [0, 1, 2, 3, 4]

        # echo without logprobs: text only
        r = await h.client.post(
            "/v1/completions", json={"prompt": "q", "echo": True, "max_tokens": 1}
        )
        assert r.json()["choices"][0]["text"] == "qH"
        assert r.json()["choices"][0]["logprobs"] is None


async def test_echo_stream_starts_with_the_prompt(fake_app: FakeFactory) -> None:
    async with fake_app(reply=REPLY) as h:
        r = await h.client.post(
            "/v1/completions",
            json={"prompt": "hey", "echo": True, "logprobs": 1, "max_tokens": 3, "stream": True},
        )
        chunks = await sse(r.text)
        texts = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        assert texts == "heyHi "
        tokens = [t for c in chunks if c["choices"] for t in c["choices"][0]["logprobs"]["tokens"]]
        assert tokens == ["h", "e", "y", "H", "i", " "]
        first = chunks[0]["choices"][0]["logprobs"]
        assert first["token_logprobs"][0] is None and first["text_offset"][:3] == [0, 1, 2]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "logprobs": -1}, "logprobs"),
    ],
)
async def test_completion_bad_values(fake_app: FakeFactory, body: dict, param: str) -> None:  # type: ignore[type-arg]
    async with fake_app() as h:
        r = await h.client.post("/v1/completions", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param


async def test_ollama_logprobs_chat_and_generate(fake_app: FakeFactory) -> None:
    async with fake_app(reply=REPLY) as h:
        r = await h.client.post(
            "/api/chat",
            json={
                "model": "fake",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": False,
                "logprobs": True,
                "top_logprobs": 2,
            },
        )
        assert r.status_code == 200, r.text
        entries = r.json()["logprobs"]
        assert "".join(e["token"] for e in entries) == REPLY
        assert all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in entries)
        assert entries[0]["bytes"] == [ord("H")]

        r = await h.client.post(
            "/api/generate",
            json={"model": "fake", "prompt": "abc", "raw": True, "logprobs": True},
        )
        lines = [json.loads(x) for x in r.text.splitlines()]
        entries = [e for x in lines for e in x.get("logprobs", [])]
        assert "".join(e["token"] for e in entries) == REPLY
        assert entries[0]["logprob"] == pytest.approx(logprob(ord("c") + 1, ord("H") + 1))
        assert all(e["top_logprobs"] == [] for e in entries)

        plain = await h.client.post(
            "/api/generate", json={"model": "fake", "prompt": "abc", "stream": False}
        )
        assert "logprobs" not in plain.json()


@pytest.mark.parametrize("body", [{"logprobs": True, "top_logprobs": 21}, {"top_logprobs": 3}])
async def test_ollama_logprobs_bad_values(fake_app: FakeFactory, body: dict) -> None:  # type: ignore[type-arg]
    async with fake_app() as h:
        r = await h.client.post("/api/generate", json={"model": "fake", "prompt": "x", **body})
        assert r.status_code == 400, r.text
        assert "top_logprobs" in r.json()["error"]
