"""Template variables from requests on the fake backend (a token is a byte, so a prompt's
token count is its length): `chat_template_kwargs` and `enable_thinking` (OpenAI chat),
`think` (Ollama), OpenAI's reasoning effort, and the 400s for what a template may not be
given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inferd.config import ModelConfig, Settings
from inferd.engine.backends.fake import FakeBackend
from inferd.models.engines import BackendEngineFactory
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec
from tests.conftest import AppHandle

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if persona is defined %}persona: {{ persona }}\n{% endif %}"
    "{% if reasoning_effort is defined %}effort: {{ reasoning_effort }}\n{% endif %}"
    "<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% endif %}"
)
OFF = "<think>\n\n</think>\n\n"
USER = [{"role": "user", "content": "Hi"}]


def app() -> AppHandle:
    config = ModelConfig(path=Path("f.gguf"), chat_template=TEMPLATE)
    spec = ModelSpec("fake", Path("f.gguf"), config)
    registry = ModelRegistry([spec], BackendEngineFactory(lambda _s: FakeBackend(reply="ok")))
    return AppHandle(Settings(), registry)


async def prompt_tokens(h: AppHandle, **fields: Any) -> int:
    body = {"model": "fake", "messages": USER, "max_tokens": 2, **fields}
    r = await h.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return int(r.json()["usage"]["prompt_tokens"])


async def test_variables_reach_the_template() -> None:
    async with app() as h:
        plain = await prompt_tokens(h)
        off = await prompt_tokens(h, enable_thinking=False)
        assert off - plain == len(OFF)
        assert await prompt_tokens(h, chat_template_kwargs={"enable_thinking": False}) == off
        assert await prompt_tokens(h, enable_thinking=True) == plain
        persona = await prompt_tokens(h, chat_template_kwargs={"persona": "a pirate", "n": 3})
        assert persona - plain == len("persona: a pirate\n")


def effort(name: str) -> int:
    return len(f"effort: {name}\n")


async def test_a_reasoning_effort_is_the_thinking_switch_and_the_effort() -> None:
    async with app() as h:
        plain = await prompt_tokens(h)
        # "none" turns thinking off and names no effort; any other turns it on at that effort
        assert await prompt_tokens(h, reasoning_effort="none") == plain + len(OFF)
        for name in ("minimal", "low", "medium", "high", "xhigh", "max"):
            assert await prompt_tokens(h, reasoning_effort=name) == plain + effort(name)


async def test_what_the_request_sets_itself_wins_over_its_effort() -> None:
    async with app() as h:
        plain = await prompt_tokens(h)
        on = {"enable_thinking": True}
        assert await prompt_tokens(h, reasoning_effort="none", chat_template_kwargs=on) == plain
        assert await prompt_tokens(h, reasoning_effort="none", **on) == plain
        off = {"enable_thinking": False}
        both = plain + len(OFF) + effort("high")
        assert await prompt_tokens(h, reasoning_effort="high", chat_template_kwargs=off) == both
        assert await prompt_tokens(h, reasoning_effort="high", **off) == both
        low = {"reasoning_effort": "low"}
        assert await prompt_tokens(h, reasoning_effort="high", chat_template_kwargs=low) == (
            plain + effort("low")
        )


async def test_the_responses_api_reasoning_effort() -> None:
    async with app() as h:
        plain = await prompt_tokens(h)
        for reasoning, tokens in (
            ({"effort": "none"}, plain + len(OFF)),
            ({"effort": "low", "summary": "auto"}, plain + effort("low")),
            ({}, plain),
            (None, plain),
        ):
            body = {"model": "fake", "input": "Hi", "max_output_tokens": 2, "reasoning": reasoning}
            r = await h.client.post("/v1/responses", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["input_tokens"] == tokens, reasoning
            said = (reasoning or {}).get("effort")
            assert r.json()["reasoning"] == {"effort": said, "summary": None}


@pytest.mark.parametrize(
    ("route", "fields", "param"),
    [
        ("/v1/chat/completions", {"reasoning_effort": "extreme"}, "reasoning_effort"),
        ("/v1/chat/completions", {"reasoning_effort": 3}, "reasoning_effort"),
        ("/v1/responses", {"reasoning": {"effort": "huge"}}, "reasoning.effort"),
        ("/v1/responses", {"reasoning": "high"}, "reasoning"),
    ],
)
async def test_a_bad_reasoning_effort_is_a_400(
    route: str, fields: dict[str, Any], param: str
) -> None:
    async with app() as h:
        prompt = {"messages": USER} if route == "/v1/chat/completions" else {"input": "Hi"}
        r = await h.client.post(route, json={"model": "fake", **prompt, **fields})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error


async def test_ollama_think_is_enable_thinking() -> None:
    async with app() as h:
        counts = []
        for think in (None, False):
            body: dict[str, Any] = {"model": "fake", "messages": USER, "stream": False}
            if think is not None:
                body["think"] = think
            r = await h.client.post("/api/chat", json=body)
            assert r.status_code == 200, r.text
            counts.append(r.json()["prompt_eval_count"])
        assert counts[1] - counts[0] == len(OFF)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"chat_template_kwargs": {"messages": "x"}}, "chat_template_kwargs"),
        ({"chat_template_kwargs": {"range": 1}}, "chat_template_kwargs"),
        ({"chat_template_kwargs": {"raise_exception": 1}}, "chat_template_kwargs"),
        ({"chat_template_kwargs": {"bad name": 1}}, "chat_template_kwargs"),
        ({"chat_template_kwargs": {"x": [1, 2]}}, "chat_template_kwargs.x"),
        ({"chat_template_kwargs": {"x": {"a": 1}}}, "chat_template_kwargs.x"),
        ({"chat_template_kwargs": {"x": "y" * 5000}}, "chat_template_kwargs.x"),
        ({"chat_template_kwargs": {"x": 2**60}}, "chat_template_kwargs.x"),
        ({"chat_template_kwargs": {f"v{i}": i for i in range(17)}}, "chat_template_kwargs"),
        ({"chat_template_kwargs": [1]}, "chat_template_kwargs"),
        (
            {"enable_thinking": True, "chat_template_kwargs": {"enable_thinking": False}},
            "enable_thinking",
        ),
        ({"enable_thinking": "yes"}, "enable_thinking"),
    ],
)
async def test_what_a_template_may_not_be_given_is_a_400(
    fields: dict[str, Any], param: str
) -> None:
    async with app() as h:
        body = {"model": "fake", "messages": USER, **fields}
        r = await h.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
