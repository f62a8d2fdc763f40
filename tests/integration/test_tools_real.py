"""Tool calling on the real engine: the grammar built from the tools' schemas keeps the
bundled model's calls valid (required, a named function; its own template and the fallback
description), streaming gives the calls the answer gives, and `auto`'s lazy grammar applies
from its trigger on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from inferd.engine.structural import JsonTag, TaggedJson
from inferd.engine.types import GenerateRequest, SamplingParams
from tests.live import AppHandle, bundled_app
from tests.schemas import ASK_BOOKING, SCHEMAS, TOOLS
from tests.tool_templates import HERMES_CHATML
from tests.unit.test_tools_api import reassemble

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
async def templated(model_path: Path) -> AsyncIterator[AppHandle]:
    """The bundled model with a tool-capable (Hermes-style ChatML) template."""
    async with bundled_app(model_path, chat_template=HERMES_CHATML) as handle:
        yield handle


def body(**fields: Any) -> dict[str, Any]:
    return {
        "model": "smollm2",
        "messages": ASK_BOOKING,
        "tools": TOOLS,
        "temperature": 0,
        "max_tokens": 48,
        **fields,
    }


def check_calls(calls: list[dict[str, Any]], names: set[str]) -> None:
    assert calls
    for call in calls:
        name = call["function"]["name"]
        assert name in names
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])


@pytest.mark.parametrize("which", ["templated", "fallback"])
@pytest.mark.parametrize("choice", ["required", "book_hotel"])
async def test_required_and_named_calls_are_schema_valid(
    which: str, choice: str, templated: AppHandle, real: AppHandle
) -> None:
    h = templated if which == "templated" else real
    tool_choice = (
        choice
        if choice == "required"
        else {
            "type": "function",
            "function": {"name": choice},
        }
    )
    r = await h.client.post(
        "/v1/chat/completions",
        json=body(tool_choice=tool_choice, temperature=1.0, seed=1, parallel_tool_calls=False),
    )
    assert r.status_code == 200, r.text
    choice_out = r.json()["choices"][0]
    assert choice_out["finish_reason"] == "tool_calls"
    names = set(SCHEMAS) if choice == "required" else {choice}
    check_calls(choice_out["message"]["tool_calls"], names)


@pytest.mark.parametrize("fmt", ["llama3", "mistral", "json"])
async def test_every_formats_grammar_gives_valid_calls(model_path: Path, fmt: str) -> None:
    """The other families' call formats, forced by the tool_format setting on the bundled
    model (the fallback description shows it the format)."""
    async with bundled_app(model_path, tool_format=fmt) as h:
        r = await h.client.post(
            "/v1/chat/completions",
            json=body(tool_choice={"type": "function", "function": {"name": "book_hotel"}}),
        )
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        check_calls(choice["message"]["tool_calls"], {"book_hotel"})


async def test_streamed_calls_are_the_answers_calls(templated: AppHandle) -> None:
    fields = body(tool_choice="required", parallel_tool_calls=False)
    r = await templated.client.post("/v1/chat/completions", json=fields)
    whole = r.json()["choices"][0]
    async with templated.client.stream(
        "POST", "/v1/chat/completions", json={**fields, "stream": True}
    ) as s:
        lines = [x[6:] async for x in s.aiter_lines() if x.startswith("data: ")]
    content, calls, reason = reassemble([json.loads(x) for x in lines[:-1]])
    assert reason == whole["finish_reason"] == "tool_calls"
    assert content == (whole["message"]["content"] or "")
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in whole["message"]["tool_calls"]
    ]
    check_calls(whole["message"]["tool_calls"], set(SCHEMAS))


async def test_ollama_calls_are_schema_valid(real: AppHandle) -> None:
    """Ollama has no tool_choice: auto, on the fallback description."""
    r = await real.client.post(
        "/api/chat",
        json={
            "model": "smollm2",
            "messages": ASK_BOOKING,
            "tools": TOOLS,
            "stream": False,
            "options": {"temperature": 0, "num_predict": 48},
        },
    )
    assert r.status_code == 200, r.text
    for call in r.json()["message"].get("tool_calls") or []:
        function = call["function"]
        jsonschema.validate(function["arguments"], SCHEMAS[function["name"]])


async def test_a_lazy_grammar_applies_from_its_trigger_on(real: AppHandle) -> None:
    """The greedy answer to this prompt starts "Paris, ..."; with "Paris" as the trigger the
    text after it must be the tag's JSON, and nothing after that."""
    engine = real.engine()
    prompt = await engine.tokenize(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        add_special=True,
        parse_special=True,
    )
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "boolean"}, "country": {"enum": ["France", "Peru"]}},
        "required": ["capital", "country"],
        "additionalProperties": False,
    }
    free = SamplingParams(max_tokens=40, temperature=0)
    lazy = TaggedJson((JsonTag("Paris", json.dumps(schema), ""),), trigger="Paris")

    async def answer(params: SamplingParams) -> str:
        text = ""
        async for out in engine.generate(
            GenerateRequest(f"lazy-{id(params)}", tuple(prompt), params)
        ):
            text += out.text
        return text

    before = await answer(free)
    assert "Paris" in before and not before.startswith("Paris{")
    constrained = await answer(SamplingParams(max_tokens=40, temperature=0, tagged=lazy))
    head, _, tail = constrained.partition("Paris")
    assert head == before.partition("Paris")[0]
    jsonschema.validate(json.loads(tail), schema)


async def test_bounded_arguments_stay_in_range_at_a_high_temperature(templated: AppHandle) -> None:
    """The prompt asks for 300 nights and the sampler is hot: the grammar keeps nights in
    1..14 in every call, where validation alone would return most answers as text."""
    fields = body(
        messages=[{"role": "user", "content": "Book a hotel in Oslo for 300 nights."}],
        tool_choice={"type": "function", "function": {"name": "book_hotel"}},
        temperature=1.5,
        seed=3,
        n=6,
    )
    r = await templated.client.post("/v1/chat/completions", json=fields)
    assert r.status_code == 200, r.text
    nights = []
    for choice in r.json()["choices"]:
        assert choice["finish_reason"] == "tool_calls", choice
        check_calls(choice["message"]["tool_calls"], {"book_hotel"})
        nights += [
            json.loads(c["function"]["arguments"])["nights"]
            for c in choice["message"]["tool_calls"]
        ]
    assert len(nights) == 6 and all(1 <= n <= 14 for n in nights), nights
