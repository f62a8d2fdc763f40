"""A GGUF model on llama.cpp and a Hugging Face checkpoint on transformers served side by side
by one app, through the real engine factories (`models/loading.py`); a checkpoint that cannot
load fails alone."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from inferd.config import ModelConfig, Settings
from inferd.models.loading import engine_factory
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec
from tests import checkpoints
from tests.conftest import AppHandle, bundled_spec, wait_for

checkpoint_root, smollm2_dir = checkpoints.checkpoint_root, checkpoints.smollm2_dir

GREEDY = {"max_tokens": 8, "temperature": 0}


def hf_spec(name: str, folder: Path, **config: object) -> ModelSpec:
    settings = {"path": folder, "n_ctx": 512, "max_seqs": 4, "n_threads": 1, **config}
    return ModelSpec(name, folder, ModelConfig(**settings))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def app(specs: list[ModelSpec]) -> AsyncIterator[AppHandle]:
    async with AppHandle(Settings(), ModelRegistry(specs, engine_factory())) as handle:
        yield handle


async def chat(h: AppHandle, model: str) -> dict[str, Any]:
    resp = await h.client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Say hi."}], **GREEDY},
    )
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def test_a_gguf_and_a_checkpoint_side_by_side_and_a_broken_one_alone(
    model_path: Path, smollm2_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_dir / f, broken / f)
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    specs = [
        bundled_spec(model_path, max_seqs=4),
        hf_spec("smol-hf", smollm2_dir, backend="transformers"),
        hf_spec("broken", broken, backend="transformers"),
        hf_spec("no-weights", no_weights, backend="transformers"),
    ]
    async with app(specs) as h:
        assert await wait_for(
            lambda: all(
                h.registry.entry(n).status.value != "loading" for n in ("broken", "no-weights")
            ),
            60,
        )
        models = {m["name"]: m for m in (await h.client.get("/models")).json()["models"]}
        assert models["smollm2:135m"]["loaded"] and models["smol-hf"]["loaded"]
        assert models["broken"]["status"] == "failed" and models["no-weights"]["status"] == "failed"
        assert "no weights" in models["no-weights"]["error"]
        assert str(tmp_path) not in models["broken"]["error"]
        facts = h.registry.get("smol-hf").engine.facts()
        assert facts["backend"] == "transformers" and facts["kv_layout"] == "paged"
        # the same weights (the GGUF dequantized), each on its runtime: both answer
        gguf, hf = await chat(h, "smollm2:135m"), await chat(h, "smol-hf")
        assert gguf["choices"][0]["message"]["content"] and hf["choices"][0]["message"]["content"]
        assert hf["usage"]["prompt_tokens"] == gguf["usage"]["prompt_tokens"]
        resp = await h.client.post(
            "/v1/chat/completions",
            json={"model": "broken", "messages": [{"role": "user", "content": "x"}]},
        )
        assert resp.status_code == 503
        # tools on transformers: a required call is constrained by the tools' grammar
        # (tests/integration/test_torch_structured.py has the rest)
        # no arguments: the grammar allows only `{}`, so the call ends well within max_tokens
        empty = {"type": "object", "properties": {}, "additionalProperties": False}
        tool = {"type": "function", "function": {"name": "f", "parameters": empty}}
        resp = await h.client.post(
            "/v1/chat/completions",
            json={
                "model": "smol-hf",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [tool],
                "tool_choice": "required",
                "max_tokens": 64,
            },
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["finish_reason"] == "tool_calls"
        # unload and load the transformers model over the API; the GGUF one serves meanwhile
        assert (await h.client.delete("/models/smol-hf/unload")).status_code == 200
        await chat(h, "smollm2:135m")
        assert (await h.client.post("/models/smol-hf/load")).status_code == 202
        assert await wait_for(lambda: h.registry.entry("smol-hf").model is not None, 60)
        assert (await chat(h, "smol-hf"))["choices"][0]["message"]["content"] == hf["choices"][0][
            "message"
        ]["content"]


async def test_embeddings_pool_the_hidden_states(smollm2_dir: Path) -> None:
    async with app([hf_spec("smol-hf", smollm2_dir, backend="transformers")]) as h:
        resp = await h.client.post(
            "/v1/embeddings",
            json={"model": "smol-hf", "input": ["the cat sat", "the cat sat", "stock prices"]},
        )
        assert resp.status_code == 200, resp.text
        vectors = [d["embedding"] for d in resp.json()["data"]]
    assert len(vectors[0]) == 576
    assert vectors[0] == vectors[1] and vectors[0] != vectors[2]
