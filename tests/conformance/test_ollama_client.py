"""The official `ollama` client, sync and async, against a live `inferd serve` (its main port
has every Ollama route), and against a second listener started with `--ollama-port`.

Not covered here: `pull` (and `create`, `push`): inferd has no such routes yet;
`copy` and `delete` are in test_ollama_models.py."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import ollama
import pydantic
import pytest

from tests.conftest import LiveServer, free_port

MODEL = "smollm2:135m"
TIMEOUT = 60.0
STORY = "Write a long story about a dragon who lived in a castle by the sea."
USER: list[Any] = [{"role": "user", "content": "Say hello."}]
HISTORY: list[Any] = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "Apple."},
    {"role": "user", "content": "Name another one."},
]
DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=live_server.url, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture
async def aclient(live_server: LiveServer) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=live_server.url, timeout=TIMEOUT) as c:
        yield c


def assert_final(resp: ollama.GenerateResponse | ollama.ChatResponse) -> None:
    assert resp.model == MODEL
    assert resp.done is True
    assert resp.done_reason in ("stop", "length")
    for key in DURATIONS:
        value = getattr(resp, key)
        assert isinstance(value, int) and value >= 0, (key, value)
    assert resp.total_duration is not None and resp.eval_duration is not None
    assert resp.total_duration >= resp.eval_duration
    assert isinstance(resp.prompt_eval_count, int) and resp.prompt_eval_count >= 0
    assert isinstance(resp.eval_count, int) and resp.eval_count >= 1


# ---- list, show, ps ----------------------------------------------------------------------------


def test_list(client: ollama.Client) -> None:
    models = client.list().models
    assert [m.model for m in models] == [MODEL, "smollm2:latest", "default:latest"]
    for m in models:
        assert m.size is not None and m.size > 0
        assert m.digest is not None and len(m.digest) == 64
        assert isinstance(m.modified_at, datetime)
        assert m.details is not None
        assert m.details.family == "llama"
        assert m.details.families == ["llama"]
        assert m.details.parameter_size == "135M"
        assert m.details.quantization_level == "Q4_1"
        assert m.details.format == "gguf"
    assert len({m.digest for m in models}) == 1


@pytest.mark.parametrize("name", [MODEL, "smollm2", "smollm2:latest", "default"])
def test_show(client: ollama.Client, name: str) -> None:
    info = client.show(name)
    assert info.template and "<|im_start|>" in info.template
    assert info.modelfile and "FROM " in info.modelfile
    assert info.parameters and "num_ctx" in info.parameters
    assert info.details is not None
    assert info.details.family == "llama"
    assert info.details.parameter_size == "135M"
    assert info.details.quantization_level == "Q4_1"
    assert info.modelinfo is not None
    assert info.modelinfo["general.architecture"] == "llama"
    assert 100_000_000 < info.modelinfo["general.parameter_count"] < 200_000_000
    assert not [k for k in info.modelinfo if k.startswith("tokenizer.ggml.")]
    assert info.capabilities == ["completion", "tools"]
    assert isinstance(info.modified_at, datetime)


def test_ps(client: ollama.Client) -> None:
    client.generate(model=MODEL)  # loaded
    [m] = client.ps().models
    assert m.model == MODEL and m.name == MODEL
    assert m.size is not None and m.size > 0
    assert m.digest is not None and len(m.digest) == 64
    assert m.context_length == 2048
    assert m.expires_at is not None and m.expires_at > datetime.now(UTC)
    assert m.details is not None and m.details.family == "llama"
    assert m.size_vram == 0


# ---- generate ----------------------------------------------------------------------------------


def test_generate(client: ollama.Client) -> None:
    resp = client.generate(model=MODEL, prompt=STORY, options={"num_predict": 8, "temperature": 0})
    assert_final(resp)
    assert resp.done_reason == "length"
    assert resp.eval_count == 8
    assert resp.response
    assert resp.context and all(isinstance(t, int) for t in resp.context)

    chunks = list(
        client.generate(
            model=MODEL, prompt=STORY, options={"num_predict": 8, "temperature": 0}, stream=True
        )
    )
    assert len(chunks) >= 2
    *pieces, last = chunks
    assert all(c.done is False and c.done_reason is None for c in pieces)
    assert all(c.model == MODEL for c in chunks)
    assert_final(last)
    assert last.eval_count == 8
    assert "".join(c.response for c in chunks)
    assert last.context is not None and len(last.context) == len(resp.context)
    assert last.context[: len(resp.context) - 8] == resp.context[: len(resp.context) - 8]


def test_generate_with_typed_options_system_and_context(client: ollama.Client) -> None:
    options = ollama.Options(num_predict=4, temperature=0.0, seed=3, top_k=20, stop=["\n\n"])
    first = client.generate(
        model="smollm2", prompt="My name is Ada.", system="Be brief.", options=options
    )
    assert_final(first)
    assert first.eval_count is not None and first.eval_count <= 4
    assert first.context
    second = client.generate(
        model=MODEL, prompt="What is my name?", context=first.context, options=options
    )
    assert_final(second)
    assert second.context is not None
    assert second.context[: len(first.context)] == first.context


def test_generate_raw(client: ollama.Client) -> None:
    resp = client.generate(
        model=MODEL, prompt="1, 2, 3, 4,", raw=True, options={"num_predict": 6, "temperature": 0}
    )
    assert_final(resp)
    assert resp.response


def test_load_only(client: ollama.Client) -> None:
    gen = client.generate(model=MODEL)
    assert gen.done is True and gen.done_reason == "load" and gen.response == ""
    chat = client.chat(model=MODEL)
    assert chat.done is True and chat.done_reason == "load"
    assert chat.message.role == "assistant" and not chat.message.content


# ---- chat ------------------------------------------------------------------------------------


def test_chat(client: ollama.Client) -> None:
    options = {"num_predict": 6, "temperature": 0}
    resp = client.chat(model=MODEL, messages=HISTORY, options=options)
    assert_final(resp)
    assert resp.message.role == "assistant"
    assert resp.message.content
    assert resp.eval_count is not None and resp.eval_count <= 6

    chunks = list(client.chat(model=MODEL, messages=HISTORY, options=options, stream=True))
    *pieces, last = chunks
    assert pieces and all(c.done is False for c in pieces)
    assert all(c.message.role == "assistant" for c in chunks)
    assert_final(last)
    assert "".join(c.message.content or "" for c in chunks)
    assert last.eval_count is not None and last.eval_count <= 6


def test_chat_with_typed_messages(client: ollama.Client) -> None:
    messages = [ollama.Message(role="user", content="Say hello.")]
    resp = client.chat(model="default", messages=messages, options={"num_predict": 4})
    assert_final(resp)
    assert resp.message.content


# ---- async -------------------------------------------------------------------------------------


async def test_async_generate_and_chat(aclient: ollama.AsyncClient) -> None:
    gen = await aclient.generate(model=MODEL, prompt="Hi", options={"num_predict": 4})
    assert_final(gen)
    assert gen.response

    stream = await aclient.generate(
        model=MODEL, prompt="Hi", options={"num_predict": 4}, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[-1].done is True and all(c.done is False for c in chunks[:-1])
    assert_final(chunks[-1])

    chat = await aclient.chat(model=MODEL, messages=USER, options={"num_predict": 4})
    assert_final(chat)
    assert chat.message.content

    stream = await aclient.chat(model=MODEL, messages=USER, options={"num_predict": 4}, stream=True)
    chunks = [c async for c in stream]
    assert_final(chunks[-1])
    assert "".join(c.message.content or "" for c in chunks)


async def test_async_concurrent_requests(aclient: ollama.AsyncClient) -> None:
    results = await asyncio.wait_for(
        asyncio.gather(
            *(
                aclient.generate(
                    model=MODEL,
                    prompt=f"Tell me about the number {i}.",
                    options={"num_predict": 4, "seed": i},
                )
                for i in range(4)
            )
        ),
        timeout=TIMEOUT * 2,
    )
    for r in results:
        assert_final(r)


async def test_async_list_show_ps(aclient: ollama.AsyncClient) -> None:
    assert MODEL in [m.model for m in (await aclient.list()).models]
    assert (await aclient.show(MODEL)).capabilities == ["completion", "tools"]
    assert [m.model for m in (await aclient.ps()).models] == [MODEL]


# ---- errors ------------------------------------------------------------------------------------


def test_unknown_model_is_a_404(client: ollama.Client) -> None:
    calls = [
        lambda: client.generate(model="no-such-model", prompt="Hi"),
        lambda: client.generate(model="no-such-model"),
        lambda: client.chat(model="no-such-model", messages=USER),
        lambda: list(client.chat(model="no-such-model", messages=USER, stream=True)),
        lambda: list(client.generate(model="no-such-model", prompt="Hi", stream=True)),
        lambda: client.show("no-such-model"),
        lambda: client.generate(model="../../etc/passwd", prompt="Hi"),
    ]
    for call in calls:
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 404
        assert "not found, try pulling it first" in info.value.error


async def test_unknown_model_is_a_404_async(aclient: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        await aclient.chat(model="no-such-model", messages=USER)
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as info:
        stream = await aclient.generate(model="no-such-model", prompt="Hi", stream=True)
        async for _ in stream:
            pass
    assert info.value.status_code == 404


def test_bad_requests_are_400(client: ollama.Client) -> None:
    cases: list[tuple[Any, str]] = [
        (
            lambda: client.generate(model=MODEL, prompt="Hi", options={"temperature": 5}),
            "temperature",
        ),
        (
            lambda: client.generate(model=MODEL, prompt="Hi", options={"num_predict": 0}),
            "num_predict",
        ),
        # above the model's context num_ctx is cut to it, as Ollama does; beyond Go's int a 400
        (lambda: client.chat(model=MODEL, messages=USER, options={"num_ctx": 2**64}), "num_ctx"),
        (
            lambda: client.generate(
                model=MODEL, prompt="Hi", format={"$ref": "https://example.com/s.json"}
            ),
            "format",
        ),
        (
            lambda: client.chat(model=MODEL, messages=USER, format={"type": "objekt"}),
            "format",
        ),
        (
            lambda: client.generate(model=MODEL, prompt="def f(", suffix="return 1"),
            f"{MODEL} does not support insert",
        ),
        (lambda: client.generate(model=MODEL, prompt="Hi", keep_alive="soon"), "keep_alive"),
        (lambda: client.generate(model=MODEL, prompt="Hi", context=[-1]), "context"),
        (lambda: client.generate(model=MODEL, prompt="hello " * 5000), "2048"),
        (
            lambda: list(
                client.chat(model=MODEL, messages=USER, format={"$ref": "#"}, stream=True)
            ),
            "format",
        ),
        (lambda: client.embed(model=MODEL, input=[""]), "input"),
        (lambda: client.embed(model=MODEL, input="hello " * 5000, truncate=False), "context"),
    ]
    for call, text in cases:
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 400, info.value
        assert text in info.value.error, info.value.error
    assert client.generate(model=MODEL, prompt="Hi", options={"num_predict": 2}).done


# ---- structured output and embeddings -----------------------------------------------------------


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    age: int = pydantic.Field(ge=0, le=150)


def test_chat_with_a_json_schema_format(client: ollama.Client) -> None:
    """The pattern Ollama documents: a pydantic model's JSON schema in, validated JSON out."""
    ask = [{"role": "user", "content": "Describe Alice, who is 30 years old, as JSON."}]
    opts = {"temperature": 0, "num_predict": 80}
    resp = client.chat(model=MODEL, messages=ask, format=Person.model_json_schema(), options=opts)
    assert resp.done_reason == "stop"
    Person.model_validate_json(resp.message.content or "")
    text = "".join(
        part.message.content or ""
        for part in client.chat(
            model=MODEL, messages=ask, format=Person.model_json_schema(), options=opts, stream=True
        )
    )
    Person.model_validate_json(text)


def test_generate_json_format(client: ollama.Client) -> None:
    resp = client.generate(
        model=MODEL,
        prompt="Give me a JSON object with a list of three fruits.",
        format="json",
        options={"temperature": 0, "num_predict": 80},
    )
    if resp.done_reason == "stop":
        assert isinstance(json.loads(resp.response), dict)
    else:
        assert resp.response.lstrip().startswith("{")


def test_embed(client: ollama.Client) -> None:
    resp = client.embed(model=MODEL, input=["The cat sat on the mat.", "A cat on a rug.", "Tax"])
    assert resp.model == MODEL
    assert len(resp.embeddings) == 3 and all(len(v) == 576 for v in resp.embeddings)
    for v in resp.embeddings:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4)
    cat, rug, tax = resp.embeddings
    assert sum(a * b for a, b in zip(cat, rug, strict=True)) > sum(
        a * b for a, b in zip(cat, tax, strict=True)
    )
    assert isinstance(resp.prompt_eval_count, int) and resp.prompt_eval_count > 0
    assert isinstance(resp.total_duration, int) and resp.total_duration > 0
    one = client.embed(model=MODEL, input="The cat sat on the mat.")
    assert len(one.embeddings) == 1
    assert client.embed(model=MODEL).embeddings == []  # input "" only loads


def test_legacy_embeddings(client: ollama.Client) -> None:
    resp = client.embeddings(model=MODEL, prompt="The cat sat on the mat.")
    assert len(resp.embedding) == 576
    assert not math.isclose(math.sqrt(sum(x * x for x in resp.embedding)), 1.0, rel_tol=1e-3)


async def test_async_embed(aclient: ollama.AsyncClient) -> None:
    a, b = await asyncio.gather(
        aclient.embed(model=MODEL, input="hello"), aclient.embed(model=MODEL, input="hello")
    )
    assert a.embeddings == b.embeddings and len(a.embeddings[0]) == 576


# ---- the second listener: --ollama-port ----------------------------------------------------------


@pytest.fixture(scope="module")
def ollama_port_server() -> Iterator[tuple[LiveServer, str]]:
    port = free_port()
    server = LiveServer("--ollama-port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_ready(timeout=120)
        for _ in range(100):  # the second listener starts beside the first
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield server, url
    finally:
        assert server.stop() == 0


def test_second_listener_on_the_ollama_port(ollama_port_server: tuple[LiveServer, str]) -> None:
    server, url = ollama_port_server
    assert url != server.url
    resp = httpx.get(url, timeout=TIMEOUT)
    assert resp.status_code == 200 and resp.text == "Ollama is running"
    with ollama.Client(host=url, timeout=TIMEOUT) as c:
        assert MODEL in [m.model for m in c.list().models]
        gen = c.generate(model=MODEL, prompt="Hi", options={"num_predict": 4})
        assert_final(gen)
        with pytest.raises(ollama.ResponseError) as info:
            c.chat(model="no-such-model", messages=USER)
        assert info.value.status_code == 404


async def test_second_listener_async(ollama_port_server: tuple[LiveServer, str]) -> None:
    _, url = ollama_port_server
    async with ollama.AsyncClient(host=url, timeout=TIMEOUT) as ac:
        stream = await ac.chat(model=MODEL, messages=USER, options={"num_predict": 4}, stream=True)
        chunks = [c async for c in stream]
        assert_final(chunks[-1])


def test_keep_alive_zero_through_the_second_listener(
    ollama_port_server: tuple[LiveServer, str],
) -> None:
    """Both listeners serve one app: an unload on the Ollama port shows on the main one."""
    server, url = ollama_port_server
    with (
        ollama.Client(host=url, timeout=TIMEOUT) as side,
        ollama.Client(host=server.url, timeout=TIMEOUT) as main,
    ):
        assert side.generate(model=MODEL, keep_alive=0).done_reason == "unload"
        assert main.ps().models == []
        again = main.generate(model=MODEL, prompt="Hi", options={"num_predict": 2})
        assert_final(again)
        assert again.load_duration is not None and again.load_duration > 1_000_000
        assert [m.model for m in side.ps().models] == [MODEL]
