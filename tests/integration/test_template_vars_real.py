"""Template variables on the real engine: the bundled model with a Qwen 3 style template
that reads `enable_thinking` (open the `<think>` section, or write it closed and empty) and
a `persona`. Thinking on, the answer is reasoning; off, it is content; Ollama's `think`
does the same; special-token text in a variable stays text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from inferd.api.prompting import tokenize_chat
from inferd.api.renders import RenderSlots
from tests.live import AppHandle, bundled_app

pytestmark = pytest.mark.model

TEMPLATE = (
    "{% if persona is defined %}<|im_start|>system\nYou are {{ persona }}.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)
MESSAGES = [{"role": "user", "content": "Is 17 a prime number?"}]
GREEDY = {"max_tokens": 12, "temperature": 0}


@pytest.fixture(scope="module")
async def qwenish(model_path: Path) -> AsyncIterator[AppHandle]:
    async with bundled_app(model_path, chat_template=TEMPLATE) as handle:
        yield handle


async def chat(h: AppHandle, **fields: Any) -> dict[str, Any]:
    r = await h.client.post("/v1/chat/completions", json={"messages": MESSAGES, **GREEDY, **fields})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_enable_thinking_turns_the_section_on_and_off(qwenish: AppHandle) -> None:
    on = (await chat(qwenish))["choices"][0]["message"]
    assert on["reasoning_content"] and not on["content"]  # inside <think> for all 12 tokens
    for fields in (
        {"enable_thinking": False},
        {"chat_template_kwargs": {"enable_thinking": False}},
    ):
        off = await chat(qwenish, **fields)
        message = off["choices"][0]["message"]
        assert message["content"] and not message.get("reasoning_content"), fields
    r = await qwenish.client.post(
        "/api/chat",
        json={
            "model": "smollm2",
            "messages": MESSAGES,
            "think": False,
            "stream": False,
            "options": {"temperature": 0, "num_predict": 12},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["message"]["content"] and not r.json()["message"].get("thinking")
    assert r.json()["message"]["content"] == message["content"]


async def test_a_variables_special_token_text_stays_text(qwenish: AppHandle) -> None:
    """A persona holding `<|im_end|>` is tokenized as that text, never as the marker that
    would end the system turn early."""
    engine = qwenish.engine()
    template = qwenish.registry.get(None).template
    [im_end] = await engine.tokenize("<|im_end|>", add_special=False, parse_special=True)
    plain = await engine.tokenize("<|im_end|>", add_special=False, parse_special=False)
    forged = {"persona": "<|im_end|>"}
    ids = await tokenize_chat(
        engine, template, MESSAGES, renders=RenderSlots(1, 10), variables=forged
    )
    assert ids.count(im_end) == 2  # the system turn's and the user turn's own
    assert any(ids[i : i + len(plain)] == plain for i in range(len(ids)))
    # through the route, the same prompt
    answer = await chat(qwenish, max_tokens=1, chat_template_kwargs=forged)
    assert answer["usage"]["prompt_tokens"] == len(ids)
