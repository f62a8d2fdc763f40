"""Structured output and tool calls on the transformers backend (llguidance over torch
logits), on the SmolLM2 checkpoint the tests make from the bundled GGUF: JSON schemas and
JSON mode in both dialects, required and named tool calls (the model's template and the
fallback description), `auto`'s lazy grammar from its trigger on, constrained and free
requests in the same steps, preemption, and the 400 for a schema llguidance cannot compile.
The grammars themselves are tested without a model in tests/unit/test_torch_grammar.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from inferd.config import ModelConfig, Settings
from inferd.engine.client import AsyncEngine
from inferd.engine.structural import JsonTag, TaggedJson
from inferd.engine.types import GenerateRequest, GenerationOutput, SamplingParams
from inferd.models.loading import engine_factory
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec
from tests import checkpoints
from tests.checkpoints import serving_torch
from tests.conftest import AppHandle
from tests.schemas import ASK_BOOKING, ASK_PERSON, BOOKING, PERSON, SCHEMAS, TOOLS
from tests.tool_templates import HERMES_CHATML

checkpoint_root, smollm2_dir = checkpoints.checkpoint_root, checkpoints.smollm2_dir

HF, TEMPLATED = "smol-hf", "smol-hf-tools"
# llguidance enforces no uniqueItems: refused rather than answered with what may break it
UNENFORCEABLE = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}


def spec(name: str, folder: Path, **config: Any) -> ModelSpec:
    settings = {"path": folder, "n_ctx": 512, "max_seqs": 4, "n_threads": 1, **config}
    cfg = ModelConfig(backend="transformers", **settings)
    return ModelSpec(name, folder, cfg)


@pytest.fixture(scope="module")
async def app(smollm2_dir: Path) -> AsyncIterator[AppHandle]:
    """The checkpoint twice: with its own template (no tools: the fallback description) and
    with a Hermes-style tool template."""
    specs = [spec(HF, smollm2_dir), spec(TEMPLATED, smollm2_dir, chat_template=HERMES_CHATML)]
    registry = ModelRegistry(specs, engine_factory())
    async with AppHandle(Settings(), registry) as handle:
        assert handle.registry.get(HF).engine.info.grammars
        yield handle


def openai_chat(model: str, content: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 80,
        **fields,
    }


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "t", "strict": True, "schema": schema}}


async def test_json_schema_answers_validate_in_both_dialects(app: AppHandle) -> None:
    r = await app.client.post(
        "/v1/chat/completions",
        json=openai_chat(HF, ASK_PERSON, response_format=json_schema(PERSON)),
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)
    # streamed, the same answer
    body = openai_chat(HF, ASK_PERSON, response_format=json_schema(PERSON), stream=True)
    async with app.client.stream("POST", "/v1/chat/completions", json=body) as s:
        lines = [x[6:] async for x in s.aiter_lines() if x.startswith("data: ")]
    chunks = [json.loads(x) for x in lines[:-1]]
    streamed = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    )
    assert streamed == choice["message"]["content"]
    r = await app.client.post(
        "/api/chat",
        json={
            "model": HF,
            "stream": False,
            "format": PERSON,
            "messages": [{"role": "user", "content": ASK_PERSON}],
            "options": {"temperature": 0.8, "seed": 5, "num_predict": 80},
        },
    )
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["message"]["content"]), PERSON)


async def test_json_mode_is_an_object(app: AppHandle) -> None:
    r = await app.client.post(
        "/v1/chat/completions",
        json=openai_chat(
            HF, "Give me three fruits.", response_format={"type": "json_object"}, temperature=1.0
        ),
    )
    assert r.status_code == 200, r.text
    assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"]), dict)


async def test_without_a_format_the_answer_is_prose(app: AppHandle) -> None:
    """The control: unconstrained, the same request is not the JSON the schema asks for."""
    r = await app.client.post("/v1/chat/completions", json=openai_chat(HF, ASK_PERSON))
    with pytest.raises((json.JSONDecodeError, jsonschema.ValidationError)):
        jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), PERSON)


@pytest.mark.parametrize("model", [TEMPLATED, HF])
@pytest.mark.parametrize("choice", ["required", "book_hotel"])
async def test_required_and_named_calls_are_schema_valid(
    app: AppHandle, model: str, choice: str
) -> None:
    tool_choice = (
        choice if choice == "required" else {"type": "function", "function": {"name": choice}}
    )
    body = {
        "model": model,
        "messages": ASK_BOOKING,
        "tools": TOOLS,
        "tool_choice": tool_choice,
        "temperature": 1.0,
        "seed": 1,
        "max_tokens": 64,
    }
    r = await app.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["choices"][0]
    assert out["finish_reason"] == "tool_calls", out
    names = set(SCHEMAS) if choice == "required" else {choice}
    for call in out["message"]["tool_calls"]:
        assert call["function"]["name"] in names
        arguments = json.loads(call["function"]["arguments"])
        jsonschema.validate(arguments, SCHEMAS[call["function"]["name"]])


async def test_the_other_formats_grammars_give_valid_calls(smollm2_dir: Path) -> None:
    """Mistral's shape (a prefix, calls joined by a separator, a suffix) and Llama 3's
    (`parameters`, "; "), forced by the tool_format setting: a named call is valid."""
    specs = [spec(fmt, smollm2_dir, tool_format=fmt) for fmt in ("mistral", "llama3")]
    async with AppHandle(Settings(), ModelRegistry(specs, engine_factory())) as h:
        for fmt in ("mistral", "llama3"):
            body = {
                "model": fmt,
                "messages": ASK_BOOKING,
                "tools": TOOLS,
                "tool_choice": {"type": "function", "function": {"name": "book_hotel"}},
                "temperature": 0,
                "max_tokens": 64,
            }
            r = await h.client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            out = r.json()["choices"][0]
            assert out["finish_reason"] == "tool_calls", (fmt, out)
            (call,) = out["message"]["tool_calls"]
            assert call["function"]["name"] == "book_hotel"
            jsonschema.validate(json.loads(call["function"]["arguments"]), BOOKING)


@pytest.mark.parametrize("dialect", ["openai", "ollama"])
async def test_a_schema_llguidance_cannot_compile_is_a_400(app: AppHandle, dialect: str) -> None:
    if dialect == "openai":
        body = openai_chat(HF, "Numbers.", response_format=json_schema(UNENFORCEABLE))
        r = await app.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "response_format.json_schema.schema"
        assert "uniqueItems" in error["message"]
    else:
        body = {"model": HF, "stream": False, "format": UNENFORCEABLE, "prompt": "Numbers."}
        r = await app.client.post("/api/generate", json=body)
        assert r.status_code == 400, r.text
        assert "uniqueItems" in r.json()["error"]


# ---- on the engine -----------------------------------------------------------------------


async def answer(engine: AsyncEngine, rid: str, prompt: list[int], params: SamplingParams) -> str:
    outs: list[GenerationOutput] = [
        o async for o in engine.generate(GenerateRequest(rid, tuple(prompt), params))
    ]
    assert outs[-1].error is None, outs[-1].error
    return "".join(o.text for o in outs)


async def chat_prompt(engine: AsyncEngine, content: str) -> list[int]:
    text = f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
    return await engine.tokenize(text, add_special=True, parse_special=True)


async def test_a_lazy_grammar_applies_from_its_trigger_on(smollm2_dir: Path) -> None:
    """tool_choice auto's grammar: free text until the trigger, then the tag's JSON and
    nothing after it. The greedy answer to this prompt names Paris; with "Paris" as the
    trigger, what precedes it is unchanged and what follows is the schema's JSON."""
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "boolean"}, "country": {"enum": ["France", "Peru"]}},
        "required": ["capital", "country"],
        "additionalProperties": False,
    }
    lazy = TaggedJson((JsonTag("Paris", json.dumps(schema), ""),), trigger="Paris")
    async with serving_torch(smollm2_dir, max_seqs=2) as engine:
        prompt = await chat_prompt(engine, "What is the capital of France?")
        before = await answer(engine, "free", prompt, SamplingParams(max_tokens=40, temperature=0))
        constrained = await answer(
            engine, "lazy", prompt, SamplingParams(max_tokens=40, temperature=0, tagged=lazy)
        )
    assert "Paris" in before and not before.startswith("Paris{")
    head, _, tail = constrained.partition("Paris")
    assert head == before.partition("Paris")[0]
    jsonschema.validate(json.loads(tail), schema)


async def test_constrained_and_free_requests_share_steps(smollm2_dir: Path) -> None:
    """Schema-bound and free greedy requests decoding together: each free answer is the one
    it gets alone (a grammar in the batch changes nothing for the others), each constrained
    one validates and equals its own answer alone."""
    schema = SamplingParams(max_tokens=60, temperature=0, json_schema=json.dumps(PERSON))
    free = SamplingParams(max_tokens=24, temperature=0)
    asks = [ASK_PERSON, "Describe Bob, a 41 year old baker, as JSON.", "Name three rivers."]
    async with serving_torch(smollm2_dir, max_seqs=8, prefix_cache_mb=0) as engine:
        prompts = [await chat_prompt(engine, a) for a in asks]
        jobs = [(f"s{i}", p, schema) for i, p in enumerate(prompts)]
        jobs += [(f"f{i}", p, free) for i, p in enumerate(prompts)]
        alone = [await answer(engine, f"alone-{rid}", p, sp) for rid, p, sp in jobs]
        steps_before = engine.stats()
        together = await asyncio.gather(*(answer(engine, rid, p, sp) for rid, p, sp in jobs))
        stats = engine.stats()
    assert together == alone
    for text in together[: len(prompts)]:
        jsonschema.validate(json.loads(text), PERSON)
    # the six ran in shared steps
    steps = stats.steps - steps_before.steps
    assert stats.step_seqs_total - steps_before.step_seqs_total > 2 * steps


async def test_preempted_constrained_answers_continue_where_they_were(smollm2_dir: Path) -> None:
    """Constrained requests in a cache of 160 positions: some are preempted and recomputed,
    their matchers keep their state, and each answer is the one it gets alone."""
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "hobbies": {
                "type": "array",
                "items": {"type": "string", "maxLength": 30},
                "minItems": 3,
                "maxItems": 3,
            },
        },
        "required": ["name", "hobbies"],
        "additionalProperties": False,
    }
    params = SamplingParams(max_tokens=48, temperature=0, json_schema=json.dumps(schema))
    names = ("Ann", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal")
    asks = [f"Describe {n} and three of {n}'s hobbies, as JSON." for n in names]
    async with serving_torch(
        smollm2_dir, n_ctx=160, kv_cells=160, max_seqs=8, prefix_cache_mb=0
    ) as engine:
        prompts = [await chat_prompt(engine, a) for a in asks]
        alone = [await answer(engine, f"alone{i}", p, params) for i, p in enumerate(prompts)]
        together = await asyncio.gather(
            *(answer(engine, f"t{i}", p, params) for i, p in enumerate(prompts))
        )
        stats = engine.stats()
    assert stats.preemptions > 0
    assert together == alone
    for text in together:
        jsonschema.validate(json.loads(text), schema)
