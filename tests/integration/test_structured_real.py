"""Structured output on the real engine: llama.cpp's grammar sampler keeps the bundled model
to JSON, and to a JSON schema, in both dialects, streaming or not."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from tests.conftest import AppHandle
from tests.schemas import ASK_PERSON, PERSON

pytestmark = pytest.mark.model

MODEL = "smollm2"
COLOR = {"type": "string", "enum": ["red", "green", "blue"]}


def ollama_chat(content: str, fmt: Any, **options: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "stream": False,
        "format": fmt,
        "messages": [{"role": "user", "content": content}],
        "options": {"temperature": 0, "num_predict": 120, **options},
    }


def openai_chat(content: str, response_format: Any, **fields: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "response_format": response_format,
        "temperature": 0,
        "max_tokens": 120,
        **fields,
    }


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "t", "strict": True, "schema": schema}}


async def ndjson(real: AppHandle, path: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    text, last = "", {}
    async with real.client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line:
                last = json.loads(line)
                assert "error" not in last, last
                text += last.get("message", {}).get("content", "") or last.get("response", "")
    return text, last


async def sse(real: AppHandle, body: dict[str, Any]) -> tuple[str, str | None]:
    text, finish = "", None
    async with real.client.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True}
    ) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                for c in chunk["choices"]:
                    text += c["delta"].get("content") or ""
                    finish = c["finish_reason"] or finish
    return text, finish


async def test_ollama_schema(real: AppHandle) -> None:
    r = await real.client.post("/api/chat", json=ollama_chat(ASK_PERSON, PERSON))
    assert r.status_code == 200, r.text
    assert r.json()["done_reason"] == "stop"
    value = json.loads(r.json()["message"]["content"])
    jsonschema.validate(value, PERSON)


async def test_ollama_schema_streaming(real: AppHandle) -> None:
    text, last = await ndjson(real, "/api/chat", ollama_chat(ASK_PERSON, PERSON))
    assert last["done"] is True and last["done_reason"] == "stop"
    jsonschema.validate(json.loads(text), PERSON)


async def test_ollama_generate_with_a_schema(real: AppHandle) -> None:
    body = {
        "model": MODEL,
        "stream": False,
        "prompt": "Which color is the sky?",
        "format": COLOR,
        "options": {"temperature": 0, "num_predict": 20},
    }
    r = await real.client.post("/api/generate", json=body)
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["response"]) in COLOR["enum"]
    text, _ = await ndjson(real, "/api/generate", body)
    assert json.loads(text) in COLOR["enum"]


async def test_ollama_json_mode(real: AppHandle) -> None:
    r = await real.client.post(
        "/api/chat", json=ollama_chat("Give me a JSON object with a list of three fruits.", "json")
    )
    assert r.status_code == 200, r.text
    assert r.json()["done_reason"] == "stop"
    assert isinstance(json.loads(r.json()["message"]["content"]), dict)


async def test_openai_json_schema(real: AppHandle) -> None:
    r = await real.client.post(
        "/v1/chat/completions", json=openai_chat(ASK_PERSON, schema_format(PERSON))
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)


async def test_openai_json_schema_streaming(real: AppHandle) -> None:
    text, finish = await sse(real, openai_chat(ASK_PERSON, schema_format(PERSON)))
    assert finish == "stop"
    jsonschema.validate(json.loads(text), PERSON)


async def test_openai_json_object(real: AppHandle) -> None:
    body = openai_chat(
        "Give me a JSON object with a list of three fruits.", {"type": "json_object"}
    )
    r = await real.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"]), dict)
    text, finish = await sse(real, body)
    assert finish == "stop" and isinstance(json.loads(text), dict)


async def test_sampled_choices_all_follow_the_schema(real: AppHandle) -> None:
    """At temperature 1 with several choices each one still matches: the grammar, not luck."""
    body = openai_chat(ASK_PERSON, schema_format(PERSON), temperature=1.0, n=4, seed=7)
    r = await real.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        if choice["finish_reason"] == "stop":
            jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)
        else:  # cut short by max_tokens: still a prefix of valid JSON, never prose
            assert choice["message"]["content"].lstrip().startswith("{")


async def test_without_a_format_the_model_answers_in_prose(real: AppHandle) -> None:
    """The control: the same prompt unconstrained is not the JSON the schema asks for."""
    r = await real.client.post(
        "/v1/chat/completions",
        json=openai_chat("Which color is the sky? Answer in one sentence.", None),
    )
    content = r.json()["choices"][0]["message"]["content"]
    with pytest.raises((json.JSONDecodeError, jsonschema.ValidationError)):
        jsonschema.validate(json.loads(content), COLOR)
    r = await real.client.post(
        "/v1/chat/completions",
        json=openai_chat("Which color is the sky? Answer in one sentence.", schema_format(COLOR)),
    )
    assert json.loads(r.json()["choices"][0]["message"]["content"]) in COLOR["enum"]


BOUNDED = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 10, "maximum": 20},
        "p": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
    },
    "required": ["n", "p"],
    "additionalProperties": False,
}


async def test_number_bounds_hold_while_sampling(real: AppHandle) -> None:
    """A prompt that asks for values out of range and a hot sampler: every answer keeps
    10 <= n <= 20 and 0 <= p < 1 (the grammar bounds them, bounds.py)."""
    ask = "Reply with JSON where n is 999 and p is 7.5."
    fields = openai_chat(ask, schema_format(BOUNDED), temperature=1.5, seed=7, n=6)
    r = await real.client.post("/v1/chat/completions", json=fields)
    assert r.status_code == 200, r.text
    values = []
    for choice in r.json()["choices"]:
        assert choice["finish_reason"] == "stop", choice
        values.append(json.loads(choice["message"]["content"]))
    assert len(values) == 6
    for value in values:
        jsonschema.validate(value, BOUNDED)


async def test_bounds_without_a_value_are_a_400(real: AppHandle) -> None:
    schema = {"type": "integer", "minimum": 2.1, "maximum": 2.9}
    r = await real.client.post(
        "/v1/chat/completions", json=openai_chat("n?", schema_format(schema))
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (
        error["param"] == "response_format.json_schema.schema" and "no integer" in error["message"]
    )
