"""The Responses API with the clients that use it, against a live `inferd serve` (with its
SQLite store): the openai SDK's `responses.create` (streamed and not, `responses.stream`,
`retrieve`, `previous_response_id`, a JSON schema) and langchain's
`ChatOpenAI(use_responses_api=True)`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import LiveServer

MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{live_server.url}/v1", api_key="unused", timeout=300, max_retries=0
    ) as c:
        yield c


def test_create_retrieve_and_continue(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL,
        instructions="Answer in one short sentence.",
        input="What is the capital of France?",
        max_output_tokens=24,
        temperature=0,
    )
    assert first.status in ("completed", "incomplete")
    assert first.output_text.strip()
    assert first.usage is not None and first.usage.output_tokens > 0
    again = client.responses.retrieve(first.id)
    assert again.output_text == first.output_text

    second = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": "Repeat your last answer."}],
        previous_response_id=first.id,
        max_output_tokens=24,
        temperature=0,
    )
    assert second.output_text.strip()
    assert second.usage is not None and first.usage is not None
    # the history (question and answer) is in the second prompt
    assert second.usage.input_tokens > first.usage.input_tokens + 5

    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_missing")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")


def test_streaming_events_and_helper(client: openai.OpenAI) -> None:
    stream = client.responses.create(
        model=MODEL, input="Say hello.", max_output_tokens=16, temperature=0, stream=True
    )
    kinds, deltas, final = [], [], None
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert kinds[0] == "response.created"
    assert final is not None and final.output_text == "".join(deltas) != ""

    # the helper wants response.completed (an answer cut at max_output_tokens ends with
    # response.incomplete, as OpenAI's does): room enough for the whole answer
    ask = {"model": MODEL, "input": "Say hello.", "max_output_tokens": 300, "temperature": 0}
    with client.responses.stream(**ask) as s:  # type: ignore[arg-type]
        streamed = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        done = s.get_final_response()
    assert done.status == "completed"
    assert done.output_text == streamed == client.responses.create(**ask).output_text  # type: ignore[call-overload]


def test_json_schema_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model=MODEL,
        input="Name a city and its country as JSON.",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
        max_output_tokens=60,
        temperature=0,
    )
    data = json.loads(r.output_text)
    assert set(data) == {"city", "country"}


def test_langchain_chat_openai_on_the_responses_api(live_server: LiveServer) -> None:
    pytest.importorskip("langchain_openai", reason="needs the dev extra (langchain-openai)")
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    llm = ChatOpenAI(
        model=MODEL,
        base_url=f"{live_server.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        use_responses_api=True,
        temperature=0,
        max_tokens=24,
        max_retries=0,
    )
    answer = llm.invoke("Say hello in one word.")
    assert answer.text.strip()
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    assert answer.response_metadata.get("id", "").startswith("resp_")

    chunks = list(llm.stream("Say hello in one word."))
    assert "".join(c.text for c in chunks) == answer.text

    class Place(BaseModel):  # short strings: a small model may not end a long one
        city: str = Field(max_length=16)
        country: str = Field(max_length=16)

    roomy = llm.model_copy(update={"max_tokens": 80})
    place = roomy.with_structured_output(Place, method="json_schema").invoke(
        "Name a city and its country."
    )
    assert isinstance(place, Place)


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.mark.timeout(900)  # three tool prompts on a shared CPU
def test_function_tools_round_trip(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.responses.create(
        model=MODEL,
        input=ask,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=60,
        temperature=0,
    )
    assert r.status == "completed"  # one call, then the grammar ends the answer
    calls = [item for item in r.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert set(json.loads(calls[0].arguments)) == {"city"}

    streamed = client.responses.create(
        model=MODEL,
        input=ask,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=60,
        temperature=0,
        stream=True,
    )
    # (an answer cut at max_output_tokens ends with response.incomplete, its complete calls kept)
    ends = ("response.completed", "response.incomplete")
    final = next(e.response for e in streamed if e.type in ends)
    again = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, c.arguments) for c in again] == [(c.name, c.arguments) for c in calls]

    follow = client.responses.create(
        model=MODEL,
        input=[
            *ask,
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": calls[0].name,
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C"},
        ],  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=40,
        temperature=0,
    )
    assert follow.output_text.strip()
