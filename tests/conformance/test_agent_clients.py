"""litellm and llama-index against a live `inferd serve` whose bundled model has a
tool-capable chat template (the one test_tool_clients.py uses, one a session): tool calls,
structured output and streaming through each library's own path to the server.

- litellm: `openai/<model>` with `api_base` (the OpenAI dialect) and `ollama_chat/<model>`
  (Ollama's /api/chat; litellm reads /api/show to see that the model takes tools).
- llama-index: its LiteLLM integration (`llama_index.llms.litellm.LiteLLM`, a
  function-calling LLM: `tool_required` is `tool_choice: "required"`) on the OpenAI dialect,
  and its Ollama integration (`llama_index.llms.ollama.Ollama`). Its `OpenAILike` (on
  `llama-index-llms-openai`) pins `openai<3`, which the pinned pydantic-ai (`openai>=3.50`)
  excludes: see docs/clients.md.

Ollama has no `tool_choice`, and the 135M model does not call a tool on its own (`auto`),
so the Ollama paths check that the library's request is the prompt an Ollama client's
request makes (tools and a call's history included), not that the model calls.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import jsonschema
import pytest

from inferd.models.spec import BUNDLED_NAME
from tests.conformance.test_tool_clients import (
    ASK,
    TIMEOUT,
    WEATHER,
    WEATHER_PARAMS,
    City,
    server,
)
from tests.conftest import LiveServer

# litellm fetches its model price list from GitHub at import unless told not to
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = pytest.importorskip("litellm", reason="needs the dev extra (litellm)")

__all__ = ["server"]  # the live server fixture: the session's tool server


def openai_model(server: LiveServer) -> dict[str, Any]:
    return {
        "model": f"openai/{BUNDLED_NAME}",
        "api_base": f"{server.url}/v1",
        "api_key": "unused",
        "timeout": TIMEOUT,
        "temperature": 0,
    }


def test_litellm_openai_tools_round_trip(server: LiveServer) -> None:
    messages: list[Any] = [{"role": "user", "content": ASK}]
    first = litellm.completion(
        **openai_model(server),
        messages=messages,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=48,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees."},
    ]
    second = litellm.completion(
        **openai_model(server),
        messages=messages,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=24,
    )
    assert second.choices[0].message.content
    assert not second.choices[0].message.tool_calls


def test_litellm_openai_streamed_calls_match(server: LiveServer) -> None:
    fields: dict[str, Any] = {
        **openai_model(server),
        "messages": [{"role": "user", "content": ASK}],
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 48,
    }
    whole = litellm.completion(**fields).choices[0].message.tool_calls
    chunks = list(litellm.completion(**fields, stream=True))
    built = litellm.stream_chunk_builder(chunks, messages=fields["messages"])
    streamed = built.choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in streamed] == [
        (c.function.name, c.function.arguments) for c in whole
    ]


def test_litellm_openai_structured_output(server: LiveServer) -> None:
    reply = litellm.completion(
        **openai_model(server),
        messages=[{"role": "user", "content": "Which city is the capital of France?"}],
        response_format=City,
        max_tokens=64,
    )
    City.model_validate_json(reply.choices[0].message.content)


ROME = [
    {"role": "user", "content": "What is the weather in Rome?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Cloudy, 18 degrees."},
    {"role": "user", "content": ASK},
]


def test_litellm_ollama_chat(server: LiveServer) -> None:
    """Tools and a call's history reach the prompt as an Ollama client's request puts them
    there; a JSON schema becomes Ollama's `format`; a stream adds up to the whole answer."""
    ollama: dict[str, Any] = {
        "model": f"ollama_chat/{BUNDLED_NAME}",
        "api_base": server.url,
        "timeout": TIMEOUT,
        "temperature": 0,
        "max_tokens": 8,
    }
    reply = litellm.completion(**ollama, messages=ROME, tools=[WEATHER])
    direct = httpx.post(
        f"{server.url}/api/chat",
        timeout=TIMEOUT,
        json={
            "model": BUNDLED_NAME,
            "stream": False,
            "tools": [WEATHER],
            "options": {"temperature": 0, "num_predict": 8},
            "messages": [
                ROME[0],
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}
                    ],
                },
                {"role": "tool", "tool_name": "get_weather", "content": "Cloudy, 18 degrees."},
                ROME[-1],
            ],
        },
    ).json()
    assert reply.usage.prompt_tokens == direct["prompt_eval_count"]
    assert reply.choices[0].message.content == direct["message"]["content"]
    for call in reply.choices[0].message.tool_calls or []:  # if the model calls after all
        jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)

    shaped_format = {"name": "City", "schema": City.model_json_schema()}
    question = [{"role": "user", "content": "Which city is the capital of France?"}]
    shaped = litellm.completion(
        **{**ollama, "max_tokens": 64},
        messages=question,
        response_format={"type": "json_schema", "json_schema": shaped_format},
    )
    City.model_validate_json(shaped.choices[0].message.content)

    whole = litellm.completion(**ollama, messages=question).choices[0].message.content
    chunks = litellm.completion(**ollama, messages=question, stream=True)
    assert whole and "".join(c.choices[0].delta.content or "" for c in chunks) == whole


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    """Tell litellm what the served model can do, as a user of a local model does: its
    price list does not know it, and llama-index asks litellm whether it calls functions."""
    facts = {
        "litellm_provider": "openai",
        "mode": "chat",
        "max_input_tokens": 4096,
        "max_output_tokens": 4096,
        "input_cost_per_token": 0.0,
        "output_cost_per_token": 0.0,
        "supports_function_calling": True,
        "supports_response_schema": True,
    }
    litellm.register_model({BUNDLED_NAME: facts, f"openai/{BUNDLED_NAME}": facts})


def llama_index_openai(server: LiveServer) -> Any:
    from llama_index.llms.litellm import LiteLLM

    return LiteLLM(
        model=f"openai/{BUNDLED_NAME}",
        api_base=f"{server.url}/v1",
        api_key="unused",
        temperature=0,
        max_tokens=128,
        max_retries=0,
        additional_kwargs={"timeout": TIMEOUT},
    )


def test_llama_index_predict_and_call(server: LiveServer) -> None:
    from llama_index.core.tools import FunctionTool

    seen: list[str] = []

    def get_weather(city: str) -> str:
        """The current weather in a city."""
        seen.append(city)
        return f"Sunny in {city}."

    llm = llama_index_openai(server)
    tool = FunctionTool.from_defaults(fn=get_weather)
    response = llm.predict_and_call([tool], ASK, tool_required=True)
    assert len(seen) == 1 and response.sources[0].tool_name == "get_weather"
    assert response.response == f"Sunny in {seen[0]}."


def test_llama_index_function_calling_program_and_streaming(server: LiveServer) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.core.program import FunctionCallingProgram

    llm = llama_index_openai(server)
    program = FunctionCallingProgram.from_defaults(
        output_cls=City,
        prompt_template_str="Which city is the capital of {country}?",
        llm=llm,
        # the program passes its tool_choice over the LLM's `tool_required` (None: auto)
        tool_choice="required",
    )
    city = program(country="France")
    assert isinstance(city, City) and city.name

    question = [ChatMessage(role="user", content="Name three colors.")]
    whole = llm.chat(question).message.content
    assert whole and "".join(r.delta or "" for r in llm.stream_chat(question)) == whole


def test_llama_index_ollama_structured_output_and_streaming(server: LiveServer) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.core.prompts import PromptTemplate
    from llama_index.llms.ollama import Ollama

    llm = Ollama(
        model=BUNDLED_NAME,
        base_url=server.url,
        temperature=0,
        request_timeout=TIMEOUT,
        context_window=2048,
        additional_kwargs={"num_predict": 64},
    )
    city = llm.structured_predict(
        City, PromptTemplate("Which city is the capital of {country}?"), country="France"
    )
    assert isinstance(city, City) and city.name

    question = [ChatMessage(role="user", content="Name three colors.")]
    whole = llm.chat(question).message.content
    assert whole and "".join(r.delta or "" for r in llm.stream_chat(question)) == whole
