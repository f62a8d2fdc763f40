"""Reasoning output on the OpenAI and Ollama routes, on the fake backend: a template that opens
the `<think>` section for the model, a model whose settings say it thinks, and one that does
not think (Ollama's 400 for `think`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inferd.config import ModelConfig, Settings
from inferd.engine.backends.fake import FakeBackend
from inferd.models.engines import BackendEngineFactory
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec
from tests.conftest import AppHandle, FakeFactory

# ChatML whose generation prompt opens the reasoning section for the model
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
USER = [{"role": "user", "content": "hi"}]


def app(reply: str, **config: Any) -> AppHandle:
    spec = ModelSpec("thinker", Path("t.gguf"), ModelConfig(path=Path("t.gguf"), **config))
    registry = ModelRegistry([spec], BackendEngineFactory(lambda _s: FakeBackend(reply=reply)))
    return AppHandle(Settings(), registry)


Make = Callable[[], AppHandle]


@pytest.fixture(
    params=[
        # the template opens the section: the model writes reasoning, then closes it
        ("Greet back.\n</think>\n\nHello!", {"chat_template": THINKING_TEMPLATE}),
        # the settings say the model thinks; it opens the section itself
        ("<think>Greet back.</think>Hello!", {"thinking": True}),
    ],
    ids=["template", "setting"],
)
def thinker(request: pytest.FixtureRequest) -> Make:
    reply, config = request.param
    return lambda: app(reply, **config)


async def test_openai_reasoning_content(thinker: Make) -> None:
    async with thinker() as h:
        r = await h.client.post("/v1/chat/completions", json={"messages": USER})
        message = r.json()["choices"][0]["message"]
        assert message["content"] == "Hello!"
        assert message["reasoning_content"].strip() == "Greet back."

        r = await h.client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
        deltas = [
            c["choices"][0]["delta"]
            for line in r.text.splitlines()
            if line.startswith("data: {")
            for c in [json.loads(line[6:])]
            if c["choices"]
        ]
        reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
        content = "".join(d.get("content") or "" for d in deltas)
        assert (reasoning.strip(), content) == ("Greet back.", "Hello!")
        # a text completion is the model's raw text
        r = await h.client.post("/v1/completions", json={"prompt": "x"})
        assert "Hello!" in r.json()["choices"][0]["text"]
        assert "Greet back." in r.json()["choices"][0]["text"]


async def test_ollama_thinking(thinker: Make) -> None:
    async with thinker() as h:
        body = {"model": "thinker", "messages": USER, "think": True, "stream": False}
        r = await h.client.post("/api/chat", json=body)
        assert r.status_code == 200, r.text
        message = r.json()["message"]
        assert message["content"] == "Hello!"
        assert message["thinking"].strip() == "Greet back."

        r = await h.client.post("/api/chat", json={**body, "stream": True})
        lines = [json.loads(x) for x in r.text.splitlines()]
        thinking = "".join(x["message"].get("thinking", "") for x in lines)
        content = "".join(x["message"]["content"] for x in lines)
        assert (thinking.strip(), content) == ("Greet back.", "Hello!")

        r = await h.client.post(
            "/api/generate", json={"model": "thinker", "prompt": "hi", "stream": False}
        )
        assert r.json()["response"] == "Hello!"
        assert r.json()["thinking"].strip() == "Greet back."

        # think: false gives the text as the model wrote it
        r = await h.client.post("/api/chat", json={**body, "think": False})
        assert "Greet back." in r.json()["message"]["content"]
        assert "thinking" not in r.json()["message"]

        show = await h.client.post("/api/show", json={"model": "thinker"})
        assert "thinking" in show.json()["capabilities"]


async def test_a_model_that_does_not_think(fake_app: FakeFactory) -> None:
    async with fake_app(reply="Hello!") as h:
        for path, body in [
            ("/api/chat", {"messages": USER}),
            ("/api/generate", {"prompt": "hi"}),
        ]:
            r = await h.client.post(path, json={"model": "fake", "think": True, **body})
            assert r.status_code == 400, r.text
            assert r.json() == {"error": '"fake" does not support thinking'}
            r = await h.client.post(path, json={"model": "fake", "think": "bogus", **body})
            assert r.status_code == 400, r.text
        r = await h.client.post("/v1/chat/completions", json={"messages": USER})
        assert r.json()["choices"][0]["message"]["reasoning_content"] is None
        show = await h.client.post("/api/show", json={"model": "fake"})
        assert "thinking" not in show.json()["capabilities"]


async def test_the_ollama_client_reads_thinking_and_logprobs(thinker: Make) -> None:
    ollama = pytest.importorskip("ollama")
    import httpx

    async with thinker() as h:
        client = ollama.AsyncClient(
            host="http://127.0.0.1", transport=httpx.ASGITransport(app=h.app)
        )
        r = await client.chat(
            model="thinker", messages=USER, think=True, logprobs=True, top_logprobs=2
        )
        assert r.message.content == "Hello!"
        assert r.message.thinking is not None and r.message.thinking.strip() == "Greet back."
        assert r.logprobs and all(len(lp.top_logprobs or []) == 2 for lp in r.logprobs)
        parts = [p async for p in await client.chat(model="thinker", messages=USER, stream=True)]
        assert "".join(p.message.content for p in parts) == "Hello!"
        assert "".join(p.message.thinking or "" for p in parts).strip() == "Greet back."


async def test_the_ollama_client_gets_the_thinking_400(fake_app: FakeFactory) -> None:
    ollama = pytest.importorskip("ollama")
    import httpx

    async with fake_app() as h:
        client = ollama.AsyncClient(
            host="http://127.0.0.1", transport=httpx.ASGITransport(app=h.app)
        )
        with pytest.raises(ollama.ResponseError) as err:
            await client.chat(model="fake", messages=USER, think=True)
        assert err.value.status_code == 400
        assert err.value.error == '"fake" does not support thinking'
