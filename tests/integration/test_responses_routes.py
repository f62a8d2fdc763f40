"""The Responses API on the fake backend with a SQLite store: the response object, the
stream's events, previous_response_id, GET, store: false, text.format, the 400s."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from inferd.config import ModelConfig, Settings
from inferd.engine.backends.fake import FakeBackend
from inferd.models.engines import BackendEngineFactory
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec
from inferd.storage.records import MessageRecord
from tests.conftest import AppHandle, FakeFactory, open_store

REPLY = "Hello there!"


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[AppHandle]:
    store = open_store(f"sqlite:///{tmp_path / 'inferd.db'}", tmp_path / "spool.jsonl")
    await store.start()
    backend = FakeBackend(reply=REPLY)
    spec = ModelSpec("fake", Path("f.gguf"), ModelConfig(path=Path("f.gguf")), ("default",))
    registry = ModelRegistry([spec], BackendEngineFactory(lambda _s: backend))
    handle = AppHandle(Settings(), registry, store)
    handle.backend = backend  # type: ignore[attr-defined]
    async with handle:
        yield handle
    await store.close()


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(x[6:]) for x in text.splitlines() if x.startswith("data: ")]


async def test_response_object(app: AppHandle) -> None:
    r = await app.client.post(
        "/v1/responses", json={"input": "hi", "instructions": "Be brief.", "metadata": {"a": "b"}}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "response" and body["status"] == "completed"
    assert body["id"].startswith("resp_") and body["model"] == "fake"
    [message] = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0] == {
        "type": "output_text",
        "text": REPLY,
        "annotations": [],
        "logprobs": [],
    }
    usage = body["usage"]
    assert usage["output_tokens"] == len(REPLY) + 1
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert body["instructions"] == "Be brief." and body["metadata"] == {"a": "b"}

    got = await app.client.get(f"/v1/responses/{body['id']}")
    assert got.status_code == 200, got.text
    assert got.json() == body  # as it was sent: usage, instructions, metadata and all
    assert (await app.client.get("/v1/responses/resp_nope")).status_code == 404
    assert (await app.client.get("/v1/responses/other")).status_code == 404


async def test_incomplete_at_max_output_tokens(app: AppHandle) -> None:
    r = await app.client.post("/v1/responses", json={"input": "hi", "max_output_tokens": 3})
    body = r.json()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["content"][0]["text"] == REPLY[:3]


async def test_previous_response_id_continues_the_conversation(app: AppHandle) -> None:
    first = (await app.client.post("/v1/responses", json={"input": "one"})).json()
    second = await app.client.post(
        "/v1/responses",
        json={
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "two"}]}],
            "previous_response_id": first["id"],
        },
    )
    assert second.status_code == 200, second.text
    # the prompt holds the first exchange: its question and answer (tokens are bytes)
    grown = second.json()["usage"]["input_tokens"] - first["usage"]["input_tokens"]
    assert grown > len(REPLY) + len("two")
    third = await app.client.post(
        "/v1/responses",
        json={"input": "three", "previous_response_id": second.json()["id"], "store": False},
    )
    assert third.json()["usage"]["input_tokens"] > second.json()["usage"]["input_tokens"]
    assert (await app.client.get(f"/v1/responses/{third.json()['id']}")).status_code == 404

    r = await app.client.post(
        "/v1/responses", json={"input": "x", "previous_response_id": "resp_missing"}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "previous_response_id"


async def test_stream_events(app: AppHandle) -> None:
    r = await app.client.post("/v1/responses", json={"input": "hi", "stream": True})
    assert r.status_code == 200, r.text
    evs = events(r.text)
    kinds = [e["type"] for e in evs]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
    text = "".join(e["delta"] for e in evs if e["type"] == "response.output_text.delta")
    assert text == REPLY
    final = evs[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == REPLY and final["usage"]["output_tokens"]
    assert len({e["response"]["id"] for e in evs if "response" in e}) == 1
    got = await app.client.get(f"/v1/responses/{final['id']}")
    assert got.json() == final


async def test_text_format_json_schema(app: AppHandle) -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    r = await app.client.post(
        "/v1/responses",
        json={
            "input": "hi",
            "text": {"format": {"type": "json_schema", "name": "t", "schema": schema}},
        },
    )
    assert r.status_code == 200, r.text
    seen = app.backend.sampling_seen[-1]  # type: ignore[attr-defined]
    assert seen.json_schema is not None and json.loads(seen.json_schema)["required"] == ["x"]
    assert r.json()["text"]["format"]["type"] == "json_schema"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "tools": [{"type": "function", "name": "f f"}]}, "tools[0].name"),
        ({"input": [{"type": "function_call_output", "output": "1"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call", "call_id": "c"}]}, "input[0].name"),
        ({"input": [{"type": "file_search_call"}]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0]",
        ),
        ({"input": []}, "input"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format.schema"),
        ({"input": 3}, "input"),
    ],
)
async def test_bad_requests(app: AppHandle, body: dict[str, Any], param: str) -> None:
    r = await app.client.post("/v1/responses", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


async def test_reasoning_item(tmp_path: Path) -> None:
    spec = ModelSpec("t", Path("t.gguf"), ModelConfig(path=Path("t.gguf"), thinking=True))
    reply = "<think>Greet.</think>Hi!"
    registry = ModelRegistry([spec], BackendEngineFactory(lambda _s: FakeBackend(reply=reply)))
    async with AppHandle(Settings(), registry) as h:
        body = (await h.client.post("/v1/responses", json={"input": "hi"})).json()
        assert [i["type"] for i in body["output"]] == ["reasoning", "message"]
        assert body["output"][0]["content"][0] == {"type": "reasoning_text", "text": "Greet."}
        assert body["output"][1]["content"][0]["text"] == "Hi!"
        r = await h.client.post("/v1/responses", json={"input": "hi", "stream": True})
        evs = events(r.text)
        reasoning = "".join(e["delta"] for e in evs if e["type"] == "response.reasoning_text.delta")
        text = "".join(e["delta"] for e in evs if e["type"] == "response.output_text.delta")
        assert (reasoning, text) == ("Greet.", "Hi!")
        assert [i["type"] for i in evs[-1]["response"]["output"]] == ["reasoning", "message"]
        # without a store: nothing is kept, and previous_response_id cannot be used
        r = await h.client.post(
            "/v1/responses", json={"input": "x", "previous_response_id": body["id"]}
        )
        assert r.status_code == 503, r.text


@pytest.mark.parametrize("stream", [False, True])
async def test_a_stored_response_keeps_reasoning_usage_and_calls(
    tmp_path: Path, stream: bool
) -> None:
    spec = ModelSpec("t", Path("t.gguf"), ModelConfig(path=Path("t.gguf"), thinking=True))
    reply = f"<think>Look it up.</think>{CALL}"
    store = open_store(f"sqlite:///{tmp_path / 'inferd.db'}", tmp_path / "spool.jsonl")
    await store.start()
    backend = lambda _s: FakeBackend(reply=reply, n_ctx=4096, kv_cells=8192)  # noqa: E731
    registry = ModelRegistry([spec], BackendEngineFactory(backend))
    body = {"input": "Weather?", "tools": [WEATHER], "tool_choice": "auto", "stream": stream}
    async with AppHandle(Settings(), registry, store) as h:
        r = await h.client.post("/v1/responses", json=body)
        sent = events(r.text)[-1]["response"] if stream else r.json()
        assert [i["type"] for i in sent["output"]] == ["reasoning", "function_call"]
        assert sent["usage"]["output_tokens"] > 0
        got = await h.client.get(f"/v1/responses/{sent['id']}")
        assert got.status_code == 200 and got.json() == sent
    await store.close()


async def test_a_response_stored_before_comes_back_as_its_message(app: AppHandle) -> None:
    """Rows written before the response object was kept (no `response`): the answer alone."""
    store = app.app.state.store
    at = datetime.now(UTC)
    store.remember(
        [
            MessageRecord("resp_old", "old", 0, "user", "hi", at, "fake"),
            MessageRecord("resp_old", "old", 1, "assistant", "Hello.", at, "fake"),
        ]
    )
    got = (await app.client.get("/v1/responses/resp_old")).json()
    assert [i["content"][0]["text"] for i in got["output"]] == ["Hello."]
    assert got["usage"] is None


async def test_no_store_still_answers(fake_app: FakeFactory) -> None:
    async with fake_app(reply=REPLY) as h:
        r = await h.client.post("/v1/responses", json={"input": "hi"})
        assert r.status_code == 200 and r.json()["output"][0]["content"][0]["text"] == REPLY


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


async def test_function_tools(fake_app: FakeFactory) -> None:
    async with fake_app(reply=CALL, n_ctx=4096, kv_cells=8192) as h:
        body = {"input": "Weather in Paris?", "tools": [WEATHER], "tool_choice": "required"}
        r = await h.client.post("/v1/responses", json=body)
        assert r.status_code == 200, r.text
        [call] = r.json()["output"]
        assert call["type"] == "function_call" and call["name"] == "get_weather"
        assert json.loads(call["arguments"]) == {"city": "Paris"}
        assert call["call_id"].startswith("call_") and r.json()["tools"] == [WEATHER]

        s = await h.client.post("/v1/responses", json={**body, "stream": True})
        evs = events(s.text)
        kinds = [e["type"] for e in evs]
        assert "response.output_text.delta" not in kinds  # the call is held back, not text
        assert kinds[-5:] == [
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
        streamed = evs[-1]["response"]["output"]
        assert [i["type"] for i in streamed] == ["function_call"]
        assert json.loads(streamed[0]["arguments"]) == {"city": "Paris"}

        # the call and its output in the history
        follow = await h.client.post(
            "/v1/responses",
            json={
                "input": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {
                        "type": "function_call",
                        "call_id": call["call_id"],
                        "name": "get_weather",
                        "arguments": call["arguments"],
                    },
                    {"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny"},
                ],
                "tools": [WEATHER],
                "tool_choice": "none",
            },
        )
        assert follow.status_code == 200, follow.text
        assert follow.json()["output"][0]["type"] == "message"
        alone = await h.client.post(
            "/v1/responses",
            json={"input": "Weather in Paris?", "tools": [WEATHER], "tool_choice": "none"},
        )
        # the prompt holds the call and its result
        grown = follow.json()["usage"]["input_tokens"] - alone.json()["usage"]["input_tokens"]
        assert grown > len("get_weather") + len("Sunny")
