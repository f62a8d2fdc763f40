"""Tool calling with the clients people point at a local server, against a live `inferd
serve` whose bundled model has a tool-capable chat template (per-model settings): a round
trip (call -> tool result -> answer) with the official openai and ollama clients,
langchain's `bind_tools`, and a pydantic-ai agent with a structured output type."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jsonschema
import ollama
import openai
import pydantic
import pytest

from inferd.models.spec import BUNDLED_NAME
from tests.conftest import LiveServer
from tests.schemas import function_tool

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI

TIMEOUT = 300.0
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER: Any = function_tool("get_weather", "The current weather in a city", WEATHER_PARAMS)
ASK = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def server(tool_server: LiveServer) -> LiveServer:
    """The session's server with the tool template (tests/conformance/conftest.py), which
    test_agent_clients.py shares."""
    return tool_server


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0
    ) as c:
        yield c


def test_openai_round_trip(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": ASK}]
    first = client.chat.completions.create(
        model=BUNDLED_NAME,
        messages=messages,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=48,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees."},
    ]
    second = client.chat.completions.create(
        model=BUNDLED_NAME,
        messages=messages,
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_tokens=24,
    )
    assert second.choices[0].message.content
    assert not second.choices[0].message.tool_calls


def test_openai_streamed_calls_match(client: openai.OpenAI) -> None:
    fields: Any = {
        "model": BUNDLED_NAME,
        "messages": [{"role": "user", "content": ASK}],
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0,
        "max_tokens": 48,
    }
    whole = client.chat.completions.create(**fields).choices[0].message.tool_calls or []
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for chunk in client.chat.completions.create(**fields, stream=True):
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta.function and delta.function.name:
                names[delta.index] = delta.function.name
            arguments[delta.index] = arguments.get(delta.index, "") + (
                (delta.function.arguments or "") if delta.function else ""
            )
    assert [(names[i], arguments[i]) for i in sorted(names)] == [
        (c.function.name, c.function.arguments) for c in whole
    ]


def test_ollama_round_trip(server: LiveServer) -> None:
    c = ollama.Client(host=server.url, timeout=TIMEOUT)
    messages: list[Any] = [{"role": "user", "content": ASK}]
    options = {"temperature": 0, "num_predict": 48}
    assert "tools" in (c.show(BUNDLED_NAME).capabilities or [])
    first = c.chat(model=BUNDLED_NAME, messages=messages, tools=[WEATHER], options=options)
    calls = first.message.tool_calls or []
    for call in calls:
        assert call.function.name == "get_weather"
        jsonschema.validate(dict(call.function.arguments), WEATHER_PARAMS)
    messages.append(first.message)
    messages += [
        {"role": "tool", "tool_name": call.function.name, "content": "Sunny, 21 degrees."}
        for call in calls
    ]
    second = c.chat(model=BUNDLED_NAME, messages=messages, options=options)
    assert second.message.content
    assert second.done_reason in ("stop", "length")


def chat_openai(server: LiveServer, *, max_tokens: int) -> ChatOpenAI:
    """langchain's ChatOpenAI on the server's OpenAI dialect, greedy."""
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=BUNDLED_NAME,
        base_url=f"{server.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        temperature=0,
        max_tokens=max_tokens,  # type: ignore[call-arg]
        timeout=TIMEOUT,
        max_retries=0,
    )


def test_langchain_bind_tools(server: LiveServer) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"Sunny in {city}."

    llm = chat_openai(server, max_tokens=48)
    messages: list[Any] = [HumanMessage(ASK)]
    reply = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(messages)
    [call] = reply.tool_calls  # type: ignore[attr-defined]
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    messages += [reply, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    answer = llm.bind_tools([get_weather]).invoke(messages)
    assert answer.content or answer.tool_calls  # type: ignore[attr-defined]


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=40)
    country: str = pydantic.Field(max_length=40)


def test_pydantic_ai_agent_with_an_output_type(server: LiveServer) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(
        BUNDLED_NAME,
        provider=OpenAIProvider(base_url=f"{server.url}/v1", api_key="unused"),
    )
    agent = Agent(
        model,
        output_type=City,
        model_settings={"temperature": 0, "max_tokens": 64, "timeout": TIMEOUT},
    )
    result = agent.run_sync("Which city is the capital of France?")
    assert isinstance(result.output, City)
    assert result.output.name


def test_langchain_with_structured_output_function_calling(server: LiveServer) -> None:
    """langchain's `with_structured_output(method="function_calling")`: the model as a
    function tool, called by name; the answer parsed into the pydantic model."""
    llm = chat_openai(server, max_tokens=64)
    shaped = llm.with_structured_output(City, method="function_calling", include_raw=True)
    out: Any = shaped.invoke("Which city is the capital of France?")
    assert out["parsing_error"] is None and isinstance(out["parsed"], City)
    assert out["parsed"].name and out["raw"].tool_calls[0]["name"] == "City"


def test_langchain_ollama_tools_structured_output_and_streaming(server: LiveServer) -> None:
    """langchain's ChatOllama on /api/chat: `bind_tools` puts the tools in the prompt and a
    call's history (an AIMessage with tool_calls, a ToolMessage) is taken; Ollama has no
    tool_choice, so whether the 135M model calls is its own choice, and a call it makes is
    valid. `with_structured_output` (Ollama's `format`) parses; a stream adds up."""
    langchain_ollama = pytest.importorskip("langchain_ollama", reason="needs the dev extra")
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"Sunny in {city}."

    llm = langchain_ollama.ChatOllama(
        model=BUNDLED_NAME, base_url=server.url, temperature=0, num_predict=8
    )
    history: list[Any] = [
        HumanMessage("What is the weather in Rome?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Rome"}, "id": "c1"}]),
        ToolMessage("Cloudy, 18 degrees.", tool_call_id="c1"),
        HumanMessage(ASK),
    ]
    plain = llm.invoke(history)
    tooled = llm.bind_tools([get_weather]).invoke(history)
    assert tooled.usage_metadata and plain.usage_metadata  # type: ignore[attr-defined]
    assert tooled.usage_metadata["input_tokens"] > plain.usage_metadata["input_tokens"]  # type: ignore[attr-defined]
    for call in tooled.tool_calls:  # type: ignore[attr-defined]
        assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)

    roomy = langchain_ollama.ChatOllama(
        model=BUNDLED_NAME, base_url=server.url, temperature=0, num_predict=64
    )
    city = roomy.with_structured_output(City).invoke("Which city is the capital of France?")
    assert isinstance(city, City) and city.name
    whole = llm.invoke(ASK).content
    assert whole and "".join(str(c.content) for c in llm.stream(ASK)) == whole
