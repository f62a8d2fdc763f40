"""The official openai and ollama clients against a live `inferd serve` that serves the bundled
GGUF on llama.cpp and the same model as a Hugging Face checkpoint on transformers, side by
side (configured in a TOML file, as a user would)."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import ollama
import openai
import pydantic
import pytest

from inferd.models.spec import bundled_model_path
from tests import checkpoints
from tests.conftest import LiveServer

checkpoint_root, smollm2_dir = checkpoints.checkpoint_root, checkpoints.smollm2_dir

GGUF, HF = "smollm2:135m", "smollm2-hf"
TIMEOUT = 120.0
USER = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def server(smollm2_dir: Path) -> Iterator[LiveServer]:
    with tempfile.TemporaryDirectory(prefix="inferd-two-") as tmp:
        config = Path(tmp) / "inferd.toml"
        config.write_text(
            "[[models]]\n"
            f"path = {str(bundled_model_path())!r}\n"
            f'name = "{GGUF}"\n'
            "max_seqs = 4\n"
            "[[models]]\n"
            f"path = {str(smollm2_dir)!r}\n"
            f'name = "{HF}"\n'
            'backend = "transformers"\n'
            "max_seqs = 4\n"
            "n_threads = 1\n"
        )
        live = LiveServer("--config", str(config))
        try:
            live.wait_ready(timeout=240)  # the default model; the other loads after it
            deadline = time.monotonic() + 240
            while not all(m["loaded"] for m in models(live)) and time.monotonic() < deadline:
                time.sleep(0.5)
            yield live
        finally:
            live.stop()


def models(live: LiveServer) -> list[dict[str, Any]]:
    return httpx.get(f"{live.url}/models", timeout=10).json()["models"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def oai(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0
    ) as c:
        yield c


@pytest.fixture(scope="module")
def oll(server: LiveServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.url, timeout=TIMEOUT) as c:
        yield c


def test_both_models_are_listed(oai: openai.OpenAI, oll: ollama.Client) -> None:
    assert {GGUF, HF} <= {m.id for m in oai.models.list()}
    running = {m.model for m in oll.ps().models}
    assert {GGUF, HF} <= running


@pytest.mark.parametrize("model", [GGUF, HF])
def test_openai_chat_streamed_and_not(oai: openai.OpenAI, model: str) -> None:
    whole = oai.chat.completions.create(
        model=model,
        messages=USER,
        max_tokens=12,
        temperature=0,
        seed=1,  # type: ignore[arg-type]
    )
    text = whole.choices[0].message.content
    assert text and whole.usage is not None and whole.usage.completion_tokens > 0
    stream = oai.chat.completions.create(
        model=model,
        messages=USER,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == text


def test_openai_completion_stops_at_a_stop_string(oai: openai.OpenAI) -> None:
    out = oai.completions.create(
        model=HF, prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[" 7"]
    )
    assert out.choices[0].finish_reason == "stop" and " 7" not in out.choices[0].text


@pytest.mark.parametrize("model", [GGUF, HF])
def test_ollama_chat_and_generate(oll: ollama.Client, model: str) -> None:
    chat = oll.chat(model=model, messages=USER, options={"num_predict": 8, "temperature": 0})
    assert chat.message.content and chat.eval_count
    parts = list(
        oll.generate(
            model=model, prompt="The sky is", stream=True, options={"num_predict": 8, "seed": 3}
        )
    )
    assert parts[-1].done and "".join(p.response for p in parts)


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    age: int = pydantic.Field(ge=0, le=150)


@pytest.mark.parametrize("model", [GGUF, HF])
def test_openai_parse_gives_the_schema_on_either_runtime(oai: openai.OpenAI, model: str) -> None:
    """The client's own `parse` helper (a pydantic model as the JSON schema): llama.cpp's
    grammar sampler on the GGUF, llguidance on transformers."""
    completion = oai.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Describe Alice, who is 30 years old, as JSON."}],
        response_format=Person,
        temperature=0,
        max_tokens=80,
    )
    assert isinstance(completion.choices[0].message.parsed, Person)


def test_openai_required_tool_call_on_transformers(oai: openai.OpenAI) -> None:
    weather = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": False,
    }
    out = oai.chat.completions.create(
        model=HF,
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": weather}}],
        tool_choice="required",
        temperature=0,
        max_tokens=48,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), weather)
