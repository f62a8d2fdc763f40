"""Reasoning output on the real engine: the bundled model given a chat template that opens
the `<think>` section for it (per-model settings) writes its answer inside the section; the
routes show it as reasoning, streamed or not, exactly as the raw text splits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from inferd.api.pipeline.reasoning import ReasoningSplitter
from tests.live import AppHandle, bundled_app

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
QUESTION = "Is 17 a prime number? Think step by step."
PROMPT = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n<think>\n"
MAX = 48


@pytest.fixture(scope="module")
async def thinker(model_path: Path) -> AsyncIterator[AppHandle]:
    async with bundled_app(model_path, chat_template=TEMPLATE) as handle:
        yield handle


async def test_reasoning_as_the_raw_text_splits(thinker: AppHandle) -> None:
    greedy = {"max_tokens": MAX, "temperature": 0}
    raw = await thinker.client.post("/v1/completions", json={"prompt": PROMPT, **greedy})
    text = raw.json()["choices"][0]["text"]
    splitter = ReasoningSplitter(inside=True)
    parts = [splitter.feed(text), splitter.flush()]
    expected = ("".join(p.reasoning for p in parts), "".join(p.content for p in parts))
    assert expected[0]  # the model reasons

    messages = [{"role": "user", "content": QUESTION}]
    r = await thinker.client.post("/v1/chat/completions", json={"messages": messages, **greedy})
    message = r.json()["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == expected
    assert "<think>" not in message["content"] and "</think>" not in message["reasoning_content"]

    r = await thinker.client.post(
        "/v1/chat/completions", json={"messages": messages, "stream": True, **greedy}
    )
    deltas = [
        c["choices"][0]["delta"]
        for line in r.text.splitlines()
        if line.startswith("data: {")
        for c in [json.loads(line[6:])]
        if c["choices"]
    ]
    streamed = (
        "".join(d.get("reasoning_content", "") for d in deltas),
        "".join(d.get("content") or "" for d in deltas),
    )
    assert streamed == expected

    r = await thinker.client.post(
        "/api/chat",
        json={
            "model": "smollm2",
            "messages": messages,
            "think": True,
            "stream": False,
            "options": {"temperature": 0, "num_predict": MAX},
        },
    )
    assert (r.json()["message"].get("thinking", ""), r.json()["message"]["content"]) == expected
    show = await thinker.client.post("/api/show", json={"model": "smollm2"})
    assert "thinking" in show.json()["capabilities"]
