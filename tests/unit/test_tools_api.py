"""Tool calling through the app on the fake backend (its "model" answers with a fixed reply):
the wire shapes of both dialects, streaming, the constraint handed to the engine, and bad
input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from inferd.api.pipeline.request import ChatPrompt
from inferd.api.pipeline.tools import ToolUse, tool_request
from inferd.config import ModelConfig, Settings
from inferd.engine.backends.fake import FakeBackend
from inferd.engine.types import SamplingParams
from inferd.models.engines import BackendEngineFactory
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec
from inferd.models.tool_formats import FORMATS, ToolSupport
from tests.conftest import AppHandle
from tests.schemas import function_tool

WEATHER = function_tool(
    "get_weather",
    "The weather in a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
    },
)
TIME = {"type": "function", "function": {"name": "get_time"}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
USER = [{"role": "user", "content": "Weather in Paris?"}]


def app(reply: str = CALL, **config: Any) -> AppHandle:
    spec = ModelSpec("fake", Path("fake.gguf"), ModelConfig(path=Path("fake.gguf"), **config))
    registry = ModelRegistry(
        [spec],
        BackendEngineFactory(lambda _spec: FakeBackend(reply=reply, n_ctx=4096, kv_cells=8192)),
    )
    return AppHandle(Settings(), registry)


def seen(h: AppHandle) -> SamplingParams:
    backend = h.engine().backend
    assert isinstance(backend, FakeBackend)
    return backend.sampling_seen[-1]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": USER, "tools": [WEATHER, TIME], **fields}


async def sse(h: AppHandle, body: dict[str, Any]) -> list[dict[str, Any]]:
    r = await h.client.post("/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == 200, r.text
    lines = [x[6:] for x in r.text.splitlines() if x.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def reassemble(chunks: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]], str]:
    """Content, calls and finish reason from chat.completion.chunk deltas, as clients do."""
    content, calls, reason = "", [], ""
    for c in chunks:
        choice = c["choices"][0]
        delta = choice["delta"]
        content += delta.get("content") or ""
        for d in delta.get("tool_calls") or []:
            if d["index"] == len(calls):
                assert d["id"] and d["type"] == "function" and d["function"]["arguments"] == ""
                calls.append({"id": d["id"], "name": d["function"]["name"], "arguments": ""})
            else:
                assert set(d) == {"index", "function"}
            calls[d["index"]]["arguments"] += d["function"]["arguments"]
        reason = choice["finish_reason"] or reason
    return content, calls, reason


# ---- OpenAI ------------------------------------------------------------------------------


async def test_a_call_comes_back_as_tool_calls() -> None:
    async with app() as h:
        r = await h.client.post("/v1/chat/completions", json=chat())
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        message = choice["message"]
        assert message["content"] is None
        [call] = message["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


async def test_streamed_deltas_reassemble_to_the_same_calls() -> None:
    reply = "Let me look.\n" + CALL + "\n" + CALL.replace("Paris", "Rome")
    async with app(reply) as h:
        whole = (await h.client.post("/v1/chat/completions", json=chat())).json()["choices"][0]
        content, calls, reason = reassemble(await sse(h, chat()))
    assert reason == whole["finish_reason"] == "tool_calls"
    assert content == whole["message"]["content"] == "Let me look.\n"
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in whole["message"]["tool_calls"]
    ]
    assert [json.loads(c["arguments"])["city"] for c in calls] == ["Paris", "Rome"]


@pytest.mark.parametrize(
    "reply",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"town": "Paris"}}\n</tool_call>',
        '<tool_call>\n{"name": "send_mail", "arguments": {}}\n</tool_call>',
        "<tool_call>\nnot json at all\n</tool_call>",
        "Just words, and a < sign.",
    ],
)
async def test_what_is_not_a_valid_call_is_text(reply: str) -> None:
    async with app(reply) as h:
        r = await h.client.post("/v1/chat/completions", json=chat())
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert choice["message"]["content"] == reply and choice["message"]["tool_calls"] is None
        content, calls, reason = reassemble(await sse(h, chat()))
        assert (content, calls, reason) == (reply, [], "stop")


async def test_tool_choice_none_returns_the_text() -> None:
    async with app() as h:
        r = await h.client.post("/v1/chat/completions", json=chat(tool_choice="none"))
        assert r.json()["choices"][0]["message"]["content"] == CALL
        assert seen(h).tagged is None


@pytest.mark.parametrize("in_template", [True, False], ids=["template", "description"])
@pytest.mark.parametrize(
    "choice", ["none", "auto", "required", {"type": "function", "function": {"name": "get_time"}}]
)
def test_the_prompt_declares_every_tool_whatever_the_choice(choice: Any, in_template: bool) -> None:
    """As OpenAI and vLLM do: tool_choice limits the answer, not what the model is told."""
    request = tool_request([WEATHER, TIME], choice)
    assert request is not None
    use = ToolUse(request, ToolSupport(FORMATS["hermes"], in_template))
    prompt = use.prompt(ChatPrompt(USER, trim_history=True))
    assert isinstance(prompt, ChatPrompt) and prompt.trim_history
    if in_template:
        assert prompt.tools is not None
        assert [t["function"]["name"] for t in prompt.tools] == ["get_weather", "get_time"]
    else:
        system = prompt.messages[0]
        assert system["role"] == "system" and prompt.tools is None
        assert '"get_weather"' in system["content"] and '"get_time"' in system["content"]


async def test_the_constraint_follows_tool_choice() -> None:
    async with app() as h:
        await h.client.post("/v1/chat/completions", json=chat())
        auto = seen(h).tagged
        assert auto is not None and auto.trigger == "<tool_call>" and auto.repeat
        assert [t.begin for t in auto.tags] == [
            '<tool_call>\n{"name": "get_weather", "arguments": ',
            '<tool_call>\n{"name": "get_time", "arguments": ',
        ]
        assert json.loads(auto.tags[0].schema) == WEATHER["function"]["parameters"]
        await h.client.post("/v1/chat/completions", json=chat(tool_choice="required"))
        required = seen(h).tagged
        assert required is not None and required.trigger is None and len(required.tags) == 2
        body = chat(tool_choice={"type": "function", "function": {"name": "get_time"}})
        await h.client.post("/v1/chat/completions", json=body)
        named = seen(h).tagged
        assert named is not None and named.trigger is None and not named.repeat
        assert [t.begin for t in named.tags] == ['<tool_call>\n{"name": "get_time", "arguments": ']
        await h.client.post("/v1/chat/completions", json=chat(parallel_tool_calls=False))
        single = seen(h).tagged
        assert single is not None and not single.repeat


async def test_a_runtime_without_grammars_parses_auto_and_refuses_required() -> None:
    """A runtime that cannot constrain sampling (a transformers model whose tokenizer
    llguidance cannot take): auto offers the tools and parses what the model writes, without
    a grammar; required and a named function are a 400 naming tool_choice."""

    def backend(_spec: ModelSpec) -> FakeBackend:
        fake = FakeBackend(reply=CALL, n_ctx=4096, kv_cells=8192)
        fake.info = dataclasses.replace(fake.info, grammars=False)
        return fake

    spec = ModelSpec("fake", Path("fake.gguf"), ModelConfig(path=Path("fake.gguf")))
    registry = ModelRegistry([spec], BackendEngineFactory(backend))
    async with AppHandle(Settings(), registry) as h:
        r = await h.client.post("/v1/chat/completions", json=chat())
        assert r.json()["choices"][0]["finish_reason"] == "tool_calls"
        assert seen(h).tagged is None
        for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
            r = await h.client.post("/v1/chat/completions", json=chat(tool_choice=choice))
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == "tool_choice"


async def test_legacy_functions_answer_with_function_call() -> None:
    async with app() as h:
        body = {
            "model": "fake",
            "messages": USER,
            "functions": [WEATHER["function"]],
            "function_call": {"name": "get_weather"},
        }
        r = await h.client.post("/v1/chat/completions", json=body)
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "function_call"
        assert choice["message"]["function_call"]["name"] == "get_weather"
        assert json.loads(choice["message"]["function_call"]["arguments"]) == {"city": "Paris"}
        assert choice["message"]["tool_calls"] is None
        assert seen(h).tagged is not None and seen(h).tagged.trigger is None  # type: ignore[union-attr]
        chunks = await sse(h, body)
        deltas = [c["choices"][0]["delta"] for c in chunks]
        assert {"function_call": {"name": "get_weather", "arguments": ""}} in deltas
        assert chunks[-1]["choices"][0]["finish_reason"] == "function_call"


async def test_history_with_calls_and_results_is_accepted() -> None:
    history = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    async with app("It is sunny.") as h:
        r = await h.client.post("/v1/chat/completions", json=chat(messages=history))
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "It is sunny."
        bad = [*history[:2], {"role": "tool", "content": "x"}]
        r = await h.client.post("/v1/chat/completions", json=chat(messages=bad))
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[2].tool_call_id"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": "get_weather"}, "tools"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0]"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "functions": [WEATHER["function"]]}, "functions"),
        ({"functions": [{"name": 5}]}, "functions[0].function.name"),
        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        (
            {
                "tools": [WEATHER],
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            "tool_choice",
        ),
        ({"tools": [WEATHER], "ignore_eos": True}, "tool_choice"),
    ],
)
async def test_bad_tools_are_a_400_naming_the_parameter(fields: dict[str, Any], param: str) -> None:
    async with app() as h:
        body = {"model": "fake", "messages": USER, **fields}
        r = await h.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param


# ---- Ollama ------------------------------------------------------------------------------


async def test_ollama_tool_calls_have_object_arguments() -> None:
    async with app() as h:
        body = {"model": "fake", "messages": USER, "tools": [WEATHER], "stream": False}
        r = await h.client.post("/api/chat", json=body)
        assert r.status_code == 200, r.text
        message = r.json()["message"]
        assert message["content"] == ""
        [call] = message["tool_calls"]
        assert call["function"] == {
            "index": 0,
            "name": "get_weather",
            "arguments": {"city": "Paris"},
        }
        r = await h.client.post("/api/chat", json={**body, "stream": True})
        lines = [json.loads(x) for x in r.text.splitlines() if x]
        with_calls = [x for x in lines if x["message"].get("tool_calls")]
        assert [x["message"]["tool_calls"][0]["function"] for x in with_calls] == [call["function"]]
        assert "".join(x["message"]["content"] for x in lines) == ""
        assert lines[-1]["done"] is True


async def test_ollama_history_with_tool_name_is_accepted() -> None:
    history = [
        *USER,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "tool_name": "get_weather", "content": "sunny"},
    ]
    async with app("Sunny.") as h:
        body = {"model": "fake", "messages": history, "tools": [WEATHER], "stream": False}
        r = await h.client.post("/api/chat", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["message"]["content"] == "Sunny."


async def test_ollama_show_lists_tools_unless_the_settings_turn_them_off() -> None:
    async with app() as h:
        r = await h.client.post("/api/show", json={"model": "fake"})
        assert "tools" in r.json()["capabilities"]
    async with app(tool_format="off") as h:
        r = await h.client.post("/api/show", json={"model": "fake"})
        assert "tools" not in r.json()["capabilities"]
        body = {"model": "fake", "messages": USER, "tools": [WEATHER], "stream": False}
        r = await h.client.post("/api/chat", json=body)
        assert r.status_code == 400 and r.json() == {"error": "fake does not support tools"}
        r = await h.client.post("/v1/chat/completions", json=chat())
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools"


async def test_requests_without_tools_are_untouched() -> None:
    async with app() as h:
        r = await h.client.post("/v1/chat/completions", json={"model": "fake", "messages": USER})
        assert r.json()["choices"][0]["message"]["content"] == CALL
        assert seen(h).tagged is None


async def test_a_model_may_exclude_the_tools_under_tool_choice_none() -> None:
    """vLLM's --exclude-tools-when-tool-choice-none, as a model setting: under "none" the
    prompt is the one without tools; under any other choice the tools are declared."""

    async def prompt_tokens(h: AppHandle, **fields: Any) -> int:
        r = await h.client.post("/v1/chat/completions", json={**chat(), **fields})
        assert r.status_code == 200, r.text
        return int(r.json()["usage"]["prompt_tokens"])

    async with app(exclude_tools_when_tool_choice_none=True) as h:
        bare = await prompt_tokens(h, tools=None)
        assert await prompt_tokens(h, tool_choice="none") == bare
        assert await prompt_tokens(h, tool_choice="auto") > bare
    async with app() as h:  # the default: declared whatever the choice
        assert await prompt_tokens(h, tool_choice="none") > bare
