"""Fill in the middle (`suffix`) through the real engine, on both dialects.

The bundled SmolLM2 has no FIM tokens, so the model is loaded a second time with
`kv_overrides` making three of its existing control tokens FIM_PRE, FIM_SUF and FIM_MID
(llama.cpp's loader applies overrides to the special-token ids). The plain bundled model
(`real`) must refuse a suffix."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferd.config import Settings
from inferd.models.loading import llamacpp_factory
from inferd.models.registry import ModelRegistry
from tests.conftest import AppHandle, bundled_spec

MODEL = "smollm2:135m"
FIM_IDS = (6, 7, 8)  # <filename>, <gh_stars>, <issue_start>: control tokens, not end-of-generation
FIM_OVERRIDES: dict[str, Any] = {
    "tokenizer.ggml.fim_pre_token_id": FIM_IDS[0],
    "tokenizer.ggml.fim_suf_token_id": FIM_IDS[1],
    "tokenizer.ggml.fim_mid_token_id": FIM_IDS[2],
}
PREFIX = "def add(a, b):\n    "
SUFFIX = "\n    return result\n"
OPTIONS = {"num_predict": 6, "temperature": 0}


@pytest.fixture(scope="module")
async def fim(model_path: Path) -> AsyncIterator[AppHandle]:
    """The bundled model with FIM tokens; no saved prefixes, so that a prompt's
    prompt_eval_count is its whole length."""
    spec = bundled_spec(model_path, kv_overrides=FIM_OVERRIDES, prefix_cache=False)
    async with AppHandle(Settings(), ModelRegistry([spec], llamacpp_factory())) as handle:
        yield handle


async def fim_prompt(app: AppHandle, prefix: str, suffix: str) -> list[int]:
    """PSM order, prefix and suffix tokenized as plain text (SmolLM2 adds no BOS)."""
    engine = app.engine()
    pre = await engine.tokenize(prefix, add_special=False, parse_special=False)
    suf = await engine.tokenize(suffix, add_special=False, parse_special=False)
    return [FIM_IDS[0], *pre, FIM_IDS[1], *suf, FIM_IDS[2]]


def ndjson(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in resp.text.splitlines()]


async def generate(app: AppHandle, **fields: Any) -> dict[str, Any]:
    """The final object of /api/generate (streamed or not), with the whole text in it."""
    body = {"model": MODEL, "stream": False, "options": OPTIONS, **fields}
    resp = await app.client.post("/api/generate", json=body)
    if not body["stream"]:
        assert resp.status_code == 200, resp.text
        return dict(resp.json())
    chunks = ndjson(resp)
    *pieces, last = chunks
    assert all(c["done"] is False for c in pieces) and last["done"] is True
    return last | {"response": "".join(c["response"] for c in chunks)}


def assert_ollama_error(resp: httpx.Response, *parts: str) -> None:
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    for part in parts:
        assert part in body["error"], body


# ---- the backend ---------------------------------------------------------------------------


async def test_overrides_reach_the_vocabulary(fim: AppHandle, real: AppHandle) -> None:
    info = fim.engine().info
    assert (info.fim_pre, info.fim_suf, info.fim_mid) == FIM_IDS
    assert info.supports_insert
    plain = real.engine().info
    assert (plain.fim_pre, plain.fim_suf, plain.fim_mid) == (-1, -1, -1)
    assert not plain.supports_insert


async def test_metadata_reports_the_overridden_values(fim: AppHandle, real: AppHandle) -> None:
    key = "tokenizer.ggml.fim_pre_token_id"
    assert fim.engine().backend.metadata()[key] == str(FIM_IDS[0])
    assert key not in real.engine().backend.metadata()


async def test_show_lists_insert_only_where_the_model_can(fim: AppHandle, real: AppHandle) -> None:
    caps = {}
    for name, app in (("fim", fim), ("plain", real)):
        resp = await app.client.post("/api/show", json={"model": MODEL})
        assert resp.status_code == 200, resp.text
        caps[name] = resp.json()["capabilities"]
    assert caps == {"fim": ["completion", "tools", "insert"], "plain": ["completion", "tools"]}


# ---- Ollama --------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_generate_with_suffix(fim: AppHandle, stream: bool) -> None:
    expected = await fim_prompt(fim, PREFIX, SUFFIX)
    final = await generate(fim, prompt=PREFIX, suffix=SUFFIX, stream=stream)
    assert final["done_reason"] in ("stop", "length")
    assert final["prompt_eval_count"] == len(expected)
    assert final["context"][: len(expected)] == expected  # the prompt the engine ran
    assert 1 <= final["eval_count"] <= OPTIONS["num_predict"]
    assert isinstance(final["response"], str)


async def test_streamed_and_whole_answers_agree(fim: AppHandle) -> None:
    whole = await generate(fim, prompt=PREFIX, suffix=SUFFIX)
    streamed = await generate(fim, prompt=PREFIX, suffix=SUFFIX, stream=True)
    assert streamed["response"] == whole["response"]  # greedy
    assert streamed["context"] == whole["context"]


async def test_fim_prompt_has_no_chat_template_and_special_text_stays_text(
    fim: AppHandle,
) -> None:
    prefix = "x = '<|im_start|>'\n"  # the text of token 1: must not become that token
    expected = await fim_prompt(fim, prefix, SUFFIX)
    final = await generate(fim, prompt=prefix, suffix=SUFFIX)
    assert final["context"][: len(expected)] == expected
    assert 1 not in expected  # no <|im_start|>: neither a template nor parsed special text


async def test_system_is_ignored_with_a_suffix(fim: AppHandle) -> None:
    expected = await fim_prompt(fim, PREFIX, SUFFIX)
    final = await generate(fim, prompt=PREFIX, suffix=SUFFIX, system="You are a poet.")
    assert final["prompt_eval_count"] == len(expected)
    assert final["context"][: len(expected)] == expected


async def test_raw_and_empty_prefix_still_fill_in_the_middle(fim: AppHandle) -> None:
    expected = await fim_prompt(fim, PREFIX, SUFFIX)
    final = await generate(fim, prompt=PREFIX, suffix=SUFFIX, raw=True)
    assert final["context"][: len(expected)] == expected
    # inserting at the start of a file: no prefix, but not a load-only request either
    expected = await fim_prompt(fim, "", SUFFIX)
    final = await generate(fim, prompt="", suffix=SUFFIX)
    assert final["prompt_eval_count"] == len(expected)
    assert final["eval_count"] >= 1


async def test_context_goes_before_the_fim_prompt(fim: AppHandle) -> None:
    first = await generate(fim, prompt="# utilities\n")
    expected = [*first["context"], *await fim_prompt(fim, PREFIX, SUFFIX)]
    final = await generate(fim, prompt=PREFIX, suffix=SUFFIX, context=first["context"])
    assert final["prompt_eval_count"] == len(expected)
    assert final["context"][: len(expected)] == expected


@pytest.mark.parametrize("stream", [False, True])
async def test_plain_model_refuses_a_suffix(real: AppHandle, stream: bool) -> None:
    body = {"model": MODEL, "prompt": PREFIX, "suffix": SUFFIX, "stream": stream}
    resp = await real.client.post("/api/generate", json=body)
    # refused before any NDJSON, in Ollama's words
    assert_ollama_error(resp, f"{MODEL} does not support insert", "suffix")


async def test_a_request_template_can_place_the_suffix(real: AppHandle) -> None:
    """Ollama's code-model templates put .Suffix themselves: no FIM tokens needed."""
    template = "<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>"
    final = await generate(real, prompt=PREFIX, suffix=SUFFIX, template=template)
    engine = real.engine()
    expected = await engine.tokenize(f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>")
    assert final["context"][: len(expected)] == expected
    # a template with no place for it: refused, naming suffix
    resp = await real.client.post(
        "/api/generate",
        json={"model": MODEL, "prompt": PREFIX, "suffix": SUFFIX, "template": "{{ .Prompt }}"},
    )
    assert_ollama_error(resp, "suffix", ".Suffix")


# ---- OpenAI --------------------------------------------------------------------------------


async def test_completions_with_suffix(fim: AppHandle) -> None:
    expected = await fim_prompt(fim, PREFIX, SUFFIX)
    body = {"model": MODEL, "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 6, "temperature": 0}
    resp = await fim.client.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["usage"]["prompt_tokens"] == len(expected)
    assert out["choices"][0]["finish_reason"] in ("stop", "length")
    # token ids as the prefix: the same prompt
    ids = await fim.engine().tokenize(PREFIX, add_special=False, parse_special=False)
    resp = await fim.client.post("/v1/completions", json={**body, "prompt": ids})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["prompt_tokens"] == len(expected)
    assert resp.json()["choices"][0]["text"] == out["choices"][0]["text"]


async def test_completions_with_suffix_streaming(fim: AppHandle) -> None:
    expected = await fim_prompt(fim, PREFIX, SUFFIX)
    body = {
        "model": MODEL,
        "prompt": PREFIX,
        "suffix": SUFFIX,
        "max_tokens": 6,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    resp = await fim.client.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    events = [
        json.loads(line[6:])
        for line in resp.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    assert events[-1]["usage"]["prompt_tokens"] == len(expected)
    assert any(c["finish_reason"] for e in events for c in e["choices"])


async def test_completions_plain_model_refuses_a_suffix(real: AppHandle) -> None:
    body = {"model": MODEL, "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 4}
    resp = await real.client.post("/v1/completions", json=body)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == "suffix" and err["type"] == "invalid_request_error"
    assert err["message"].startswith(f"{MODEL} does not support insert")
    # an empty suffix is no suffix
    resp = await real.client.post("/v1/completions", json={**body, "suffix": ""})
    assert resp.status_code == 200, resp.text
