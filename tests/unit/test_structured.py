"""Structured output: schema checks, and `format` / `response_format` reaching the engine's
sampling parameters (the fake backend ignores the grammar but records what it was given)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inferd.api.structured import JSON_OBJECT, MAX_SCHEMA_DEPTH, TEXT, schema_format
from inferd.engine.backends.fake import FakeBackend
from inferd.engine.types import SamplingParams
from inferd.errors import InvalidRequest
from tests.conftest import AppHandle, FakeFactory

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
USER = [{"role": "user", "content": "Hi"}]


def nested(levels: int) -> dict[str, Any]:
    """A schema whose JSON is nested `levels` containers deep."""
    schema: dict[str, Any] = {"type": "string"}
    depth = 1
    while depth + 3 <= levels:
        schema = {"type": "array", "items": {"anyOf": [schema]}}
        depth += 3
    return schema


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def test_schema_format_keeps_the_schema_as_json() -> None:
    fmt = schema_format(PERSON, param="p")
    assert not fmt.json_mode and fmt.json_schema is not None
    assert json.loads(fmt.json_schema) == PERSON


def test_depth_limit_is_exact() -> None:
    ok: dict[str, Any] = {"type": "string"}
    while depth(ok) < MAX_SCHEMA_DEPTH:
        ok = {"not": ok}
    assert depth(ok) == MAX_SCHEMA_DEPTH
    schema_format(ok, param="p")
    too_deep = {"not": ok}
    assert depth(too_deep) == MAX_SCHEMA_DEPTH + 1
    with pytest.raises(InvalidRequest) as info:
        schema_format(too_deep, param="p")
    assert info.value.param == "p" and str(MAX_SCHEMA_DEPTH) in info.value.message


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ([], "JSON object"),
        (True, "JSON object"),
        ({"type": "strin"}, "invalid"),
        ({"properties": {"a": {"minimum": "0"}}}, "invalid"),
        ({"$ref": "#"}, "local"),
        ({"$ref": "https://example.com/schema.json"}, "local"),
        ({"items": {"$ref": "file:///etc/passwd"}}, "local"),
        ({"type": "array", "maxItems": 100_000}, "maxItems"),
        ({"type": "string", "minLength": 5000}, "minLength"),
        ({"enum": ["x" * 40_000]}, "characters"),
    ],
)
def test_bad_schemas(schema: Any, says: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        schema_format(schema, param="response_format.json_schema.schema")
    assert info.value.param == "response_format.json_schema.schema"
    assert says.lower() in info.value.message.lower()


# ---- through the app, to the engine -----------------------------------------------------------


def seen(h: AppHandle) -> list[SamplingParams]:
    backend = h.engine().backend
    assert isinstance(backend, FakeBackend)
    return backend.sampling_seen


@pytest.mark.parametrize("stream", [False, True])
async def test_ollama_format_reaches_the_engine(fake_app: FakeFactory, stream: bool) -> None:
    async with fake_app() as h:
        for path, body in (
            ("/api/chat", {"messages": USER}),
            ("/api/generate", {"prompt": "Hi"}),
        ):
            for fmt, want in (("json", JSON_OBJECT), (PERSON, schema_format(PERSON, param="f"))):
                r = await h.client.post(
                    path, json={"model": "fake", "stream": stream, "format": fmt, **body}
                )
                assert r.status_code == 200, r.text
                sp = seen(h)[-1]
                assert (sp.json_mode, sp.json_schema) == (want.json_mode, want.json_schema)
        r = await h.client.post(
            "/api/chat", json={"model": "fake", "stream": False, "messages": USER}
        )
        assert r.status_code == 200
        assert not seen(h)[-1].constrained


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_response_format_reaches_the_engine(
    fake_app: FakeFactory, stream: bool
) -> None:
    async with fake_app() as h:
        cases: list[tuple[dict[str, Any], Any]] = [
            ({"type": "text"}, TEXT),
            ({"type": "json_object"}, JSON_OBJECT),
            (
                {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
                schema_format(PERSON, param="f"),
            ),
        ]
        for rf, want in cases:
            r = await h.client.post(
                "/v1/chat/completions",
                json={"model": "fake", "stream": stream, "messages": USER, "response_format": rf},
            )
            assert r.status_code == 200, r.text
            sp = seen(h)[-1]
            assert (sp.json_mode, sp.json_schema) == (want.json_mode, want.json_schema)


@pytest.mark.parametrize("stream", [False, True])
async def test_bad_format_is_an_ollama_400_before_the_stream(
    fake_app: FakeFactory, stream: bool
) -> None:
    async with fake_app() as h:
        for fmt in ("yaml", 5, ["json"], {"type": "nope"}, nested(40)):
            r = await h.client.post(
                "/api/chat",
                json={"model": "fake", "stream": stream, "messages": USER, "format": fmt},
            )
            assert r.status_code == 400, r.text
            body = r.json()
            assert set(body) == {"error"} and "format" in body["error"], body
        assert seen(h) == []
