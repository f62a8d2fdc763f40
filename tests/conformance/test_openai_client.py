"""The official `openai` client, sync and async, against a live `inferd serve`."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pydantic
import pytest

from tests.conftest import LiveServer

MODEL = "smollm2:135m"
TIMEOUT = 60.0
USER: list[Any] = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{live_server.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0
    ) as c:
        yield c


@pytest.fixture
async def aclient(live_server: LiveServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{live_server.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0
    ) as c:
        yield c


# ---- models ----------------------------------------------------------------------------------


def test_models_list(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert [m.id for m in models] == [MODEL]
    assert models[0].object == "model"
    assert models[0].owned_by
    assert isinstance(models[0].created, int)


@pytest.mark.parametrize("name", [MODEL, "smollm2", "default"])
def test_models_retrieve_by_name_and_alias(client: openai.OpenAI, name: str) -> None:
    model = client.models.retrieve(name)
    assert model.id == MODEL
    assert model.object == "model"


def test_models_retrieve_unknown(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.status_code == 404
    assert "no-such-model" in info.value.message


# ---- chat completions ------------------------------------------------------------------------


@pytest.mark.parametrize("model", [MODEL, "smollm2", "default"])
def test_chat_completion(client: openai.OpenAI, model: str) -> None:
    resp = client.chat.completions.create(model=model, messages=USER, max_tokens=8)
    assert resp.object == "chat.completion"
    assert resp.model == MODEL
    assert resp.id
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert 1 <= resp.usage.completion_tokens <= 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_completion_with_max_completion_tokens(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_completion_tokens=5,
        extra_body={"ignore_eos": True},
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5


def test_chat_streaming(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=16, stream=True)
    chunks = list(stream)
    assert chunks
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")
    assert all(f is None for f in finishes[:-1])


def test_chat_streaming_include_usage(client: openai.OpenAI) -> None:
    max_tokens = 12
    stream = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == max_tokens
    assert last.usage.total_tokens == last.usage.prompt_tokens + max_tokens
    assert all(c.usage is None for c in chunks[:-1])
    finishes = [c.choices[0].finish_reason for c in chunks[:-1] if c.choices]
    assert finishes[-1] == "length"


def test_chat_n_choices(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=4, n=2, seed=3, extra_body={"ignore_eos": True}
    )
    assert sorted(c.index for c in resp.choices) == [0, 1]
    assert all(c.message.content for c in resp.choices)
    assert resp.usage is not None and resp.usage.completion_tokens == 8


def test_chat_n_choices_streaming(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=4,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    texts = {0: "", 1: ""}
    finishes: dict[int, str] = {}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert all(texts.values())
    assert finishes == {0: "length", 1: "length"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_chat_same_seed_same_text(client: openai.OpenAI) -> None:
    def once() -> str:
        resp = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Write one sentence about the sea."}],
            max_tokens=24,
            temperature=0.8,
            seed=42,
        )
        return resp.choices[0].message.content or ""

    first = once()
    assert first
    assert once() == first


def test_chat_stop_strings_never_in_the_output(client: openai.OpenAI) -> None:
    stops = [".", "\n", " the"]
    for seed in range(3):
        resp = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell me about the moon and the sun."}],
            max_tokens=40,
            temperature=0.8,
            seed=seed,
            stop=stops,
        )
        text = resp.choices[0].message.content or ""
        assert not any(s in text for s in stops), (stops, text)


def test_extra_body_ignore_eos_and_top_k(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=20,
        extra_body={"ignore_eos": True, "top_k": 20},
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 20


# ---- text completions ------------------------------------------------------------------------


def test_completion(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model="default", prompt="The capital of France is", max_tokens=6
    )
    assert resp.object == "text_completion"
    assert resp.model == MODEL
    assert len(resp.choices) == 1
    assert isinstance(resp.choices[0].text, str) and resp.choices[0].text
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None and 1 <= resp.usage.completion_tokens <= 6


def test_completion_streaming_include_usage(client: openai.OpenAI) -> None:
    max_tokens = 10
    stream = client.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True, "top_k": 20},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == max_tokens
    body = chunks[:-1]
    assert all(c.usage is None for c in body)
    text = "".join(c.choices[0].text for c in body)
    assert text
    assert body[-1].choices[0].finish_reason == "length"


def test_completion_streaming_without_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=6, stream=True)
    )
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_completion_n_choices(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=3, n=2, extra_body={"ignore_eos": True}
    )
    assert sorted(c.index for c in resp.choices) == [0, 1]
    assert resp.usage is not None and resp.usage.completion_tokens == 6


def wait_until_idle(live_server: LiveServer) -> None:
    """No sequence running and no KV cell held (finished requests leave none): where cells
    land changes the low bits of the logits, and a request is reproducible on an idle cache."""

    def idle() -> bool:
        model = httpx.get(f"{live_server.url}/health", timeout=5).json()["models"][0]
        return bool(model["running"] == 0 and model["kv_cells_used"] == 0)

    deadline = time.monotonic() + 30
    while not idle():
        assert time.monotonic() < deadline, "the server never became idle"
        time.sleep(0.05)


def test_completion_same_seed_same_text(client: openai.OpenAI, live_server: LiveServer) -> None:
    wait_until_idle(live_server)
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "prompt": "My favourite animal is",
        "max_tokens": 20,
        "temperature": 0.8,
        "seed": 42,
    }
    first = client.completions.create(**kwargs).choices[0].text
    wait_until_idle(live_server)
    assert client.completions.create(**kwargs).choices[0].text == first


def test_completion_stop_string_cuts_the_text(client: openai.OpenAI) -> None:
    """Greedy text, then the same request stopped at a piece of that text: the output is
    everything before the stop string, and the stop string itself never appears."""
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "prompt": "The quick brown fox",
        "max_tokens": 30,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    full = client.completions.create(**kwargs).choices[0].text
    assert len(full) > 20, full
    start = len(full) // 3
    stop = full[start : start + 3]
    expected = full[: full.find(stop)]

    resp = client.completions.create(**kwargs, stop=[stop, "never-generated-zzz"])
    assert resp.choices[0].text == expected
    assert stop not in resp.choices[0].text
    assert resp.choices[0].finish_reason == "stop"

    chunks = list(client.completions.create(**kwargs, stop=stop, stream=True))
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


# ---- errors ----------------------------------------------------------------------------------


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as chat_err:
        client.chat.completions.create(model="no-such-model", messages=USER, max_tokens=1)
    assert chat_err.value.status_code == 404
    assert "no-such-model" in chat_err.value.message
    assert chat_err.value.code == "model_not_found"
    assert chat_err.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="Hi", max_tokens=1)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"temperature": 5.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"n": 1000}, "n"),
        ({"presence_penalty": -3.0}, "presence_penalty"),
        ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
        ({"logit_bias": {"not-a-token": 1}}, "logit_bias"),
    ],
)
def test_bad_request(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=USER, **kwargs)
    err = info.value
    assert err.status_code == 400
    assert err.param == param
    assert isinstance(err.body, dict) and err.body["message"]
    assert err.body["message"] in err.message


def test_context_length_exceeded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hello " * 5000, max_tokens=1)
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length" in info.value.message


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),  # alternatives need logprobs: true
    ],
)
def test_bad_logprobs_are_400(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=1, **kwargs)
    assert info.value.param == param


def test_bad_completion_logprobs_are_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=1, logprobs=21)
    assert info.value.param == "logprobs"


# ---- structured output and embeddings ---------------------------------------------------------


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    age: int = pydantic.Field(ge=0, le=150)


def test_response_format_json_schema(client: openai.OpenAI) -> None:
    """The client's own `parse` helper: a pydantic model as the schema, parsed back."""
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Alice, who is 30 years old, as JSON."}],
        response_format=Person,
        temperature=0,
        max_tokens=80,
    )
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person)


def test_response_format_json_object_streaming(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object with three fruits."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=80,
        stream=True,
    )
    text, finish = "", None
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    if finish == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.lstrip().startswith("{")


def test_bad_json_schema(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL,
            messages=USER,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "objekt"}},
            },
        )
    assert info.value.param == "response_format.json_schema.schema"


def test_embeddings_create(client: openai.OpenAI) -> None:
    """The client asks for base64 by default and decodes it; floats on request."""
    texts = ["The cat sat on the mat.", "A cat on a rug.", "Tax"]
    resp = client.embeddings.create(model=MODEL, input=texts)
    assert resp.object == "list" and resp.model == MODEL
    assert [d.index for d in resp.data] == [0, 1, 2]
    vectors = [d.embedding for d in resp.data]
    assert all(len(v) == 576 for v in vectors)
    for v in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens > 0
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    for a, b in zip(vectors, (d.embedding for d in floats.data), strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    ids = client.embeddings.create(model=MODEL, input=[[1, 2, 3], [4, 5]])
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 5
    # dimensions: the first values, normalized again (issue 23 item 17)
    short = client.embeddings.create(model=MODEL, input=texts, dimensions=64)
    for full, v in zip(vectors, (d.embedding for d in short.data), strict=True):
        head = full[:64]
        scale = math.sqrt(sum(x * x for x in head))
        assert v == pytest.approx([x / scale for x in head], abs=1e-5)


def test_embeddings_errors(client: openai.OpenAI) -> None:
    for kwargs, param in (
        ({"input": ""}, "input"),
        ({"input": [-1]}, "input"),
        ({"input": "hi", "dimensions": 577}, "dimensions"),
        ({"input": "hello " * 5000}, "input"),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model=MODEL, **kwargs)
        assert info.value.param == param, info.value


# ---- the async client ------------------------------------------------------------------------


async def test_async_models(aclient: openai.AsyncOpenAI) -> None:
    page = await aclient.models.list()
    assert [m.id for m in page.data] == [MODEL]
    assert (await aclient.models.retrieve("default")).id == MODEL
    with pytest.raises(openai.NotFoundError):
        await aclient.models.retrieve("nope")


async def test_async_chat_and_completion(aclient: openai.AsyncOpenAI) -> None:
    chat = await aclient.chat.completions.create(model="smollm2", messages=USER, max_tokens=6)
    assert chat.choices[0].message.content
    comp = await aclient.completions.create(model=MODEL, prompt="Hello", max_tokens=4)
    assert comp.choices[0].text


async def test_async_streaming_include_usage(aclient: openai.AsyncOpenAI) -> None:
    max_tokens = 9
    stream = await aclient.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == max_tokens

    cstream = await aclient.completions.create(
        model=MODEL,
        prompt="Once",
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    cchunks = [c async for c in cstream]
    assert cchunks[-1].usage is not None and cchunks[-1].usage.completion_tokens == max_tokens


async def test_async_concurrent_requests(aclient: openai.AsyncOpenAI) -> None:
    async def one(i: int) -> int:
        resp = await aclient.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Count to {i}."}],
            max_tokens=8,
            extra_body={"ignore_eos": True},
        )
        assert resp.choices[0].finish_reason == "length"
        assert resp.usage is not None
        return resp.usage.completion_tokens

    assert await asyncio.gather(*(one(i) for i in range(6))) == [8] * 6


async def test_async_errors(aclient: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await aclient.chat.completions.create(model="nope", messages=USER, max_tokens=1)
    with pytest.raises(openai.BadRequestError) as info:  # a tool without a name
        await aclient.chat.completions.create(
            model=MODEL,
            messages=USER,
            tools=[{"type": "function", "function": {"parameters": {}}}],  # type: ignore[typeddict-item]
        )
    assert info.value.param is not None and info.value.param.startswith("tools[0]")
