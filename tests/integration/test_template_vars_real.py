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
OFF = ({"enable_thinking": False}, {"chat_template_kwargs": {"enable_thinking": False}})


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


async def test_a_reasoning_effort_of_none_turns_thinking_off(qwenish: AppHandle) -> None:
    """OpenAI's effort "none" (chat's `reasoning_effort`, Responses' `reasoning.effort`) is
    `enable_thinking: false` to the template; another effort leaves thinking on."""
    off = (await chat(qwenish, enable_thinking=False))["choices"][0]["message"]
    none = (await chat(qwenish, reasoning_effort="none"))["choices"][0]["message"]
    assert none["content"] == off["content"] and not none.get("reasoning_content")
    high = (await chat(qwenish, reasoning_effort="high"))["choices"][0]["message"]
    assert high["reasoning_content"] and not high["content"]
    body = {"input": MESSAGES[0]["content"], "max_output_tokens": 12, "temperature": 0}
    r = await qwenish.client.post("/v1/responses", json={**body, "reasoning": {"effort": "none"}})
    assert r.status_code == 200, r.text
    [message] = r.json()["output"]  # no reasoning item
    assert message["type"] == "message" and message["content"][0]["text"] == off["content"]
    r = await qwenish.client.post("/v1/responses", json={**body, "reasoning": {"effort": "low"}})
    assert r.status_code == 200 and r.json()["output"][0]["type"] == "reasoning"


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


async def test_native_routes_and_the_responses_api_take_template_variables(
    qwenish: AppHandle,
) -> None:
    """`chat_template_kwargs` and `enable_thinking` reach the template from the native
    /chat and /generate (through the template) and from the Responses API as from chat
    completions: thinking off, the answer is text; a persona lengthens the prompt alike."""
    native = {"messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    on = (await qwenish.client.post("/chat", json=native)).json()
    assert on["tokens_generated"] == 12 and on["text"] == ""  # all 12 tokens reasoning
    off = await chat(qwenish, enable_thinking=False)
    content, prompt_tokens = off["choices"][0]["message"]["content"], off["usage"]["prompt_tokens"]
    r = await qwenish.client.post("/chat", json={**native, **OFF[1]})
    assert r.status_code == 200, r.text
    assert r.json()["text"] == content and r.json()["prompt_tokens"] == prompt_tokens
    generate = {"prompt": MESSAGES[0]["content"], "raw": False, "max_tokens": 12, "temperature": 0}
    r = await qwenish.client.post("/generate", json={**generate, "enable_thinking": False})
    assert r.status_code == 200 and r.json()["text"] == content
    persona = {"persona": "a careful mathematician", "enable_thinking": False}
    longer = (await chat(qwenish, max_tokens=1, chat_template_kwargs=persona))["usage"]
    r = await qwenish.client.post(
        "/chat", json={**native, "max_tokens": 1, "chat_template_kwargs": persona}
    )
    assert r.json()["prompt_tokens"] == longer["prompt_tokens"] > prompt_tokens
    # a raw prompt has no template to give them to
    r = await qwenish.client.post(
        "/generate", json={"prompt": "Hi", "chat_template_kwargs": {"enable_thinking": False}}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs"

    responses = {"input": MESSAGES[0]["content"], "max_output_tokens": 12, "temperature": 0}
    r = await qwenish.client.post("/v1/responses", json={**responses, **OFF[0]})
    assert r.status_code == 200, r.text
    [message] = r.json()["output"]  # no reasoning item: thinking is off
    assert message["type"] == "message" and message["content"][0]["text"] == content
    assert r.json()["usage"]["input_tokens"] == prompt_tokens
    r = await qwenish.client.post(
        "/v1/responses", json={**responses, "chat_template_kwargs": {"messages": "x"}}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs"
