"""What sits above the engine, on a transformers model through the API (the tiny random llama):
n seeded answers (the same seed, the same answers), stop strings, usage, and the engine's
metrics under the model's name."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from inferd.config import Settings
from inferd.models.loading import engine_factory
from inferd.models.registry import ModelRegistry
from tests import checkpoints
from tests.conftest import AppHandle

checkpoint_root, smollm2_dir, tiny_llama_dir = (
    checkpoints.checkpoint_root,
    checkpoints.smollm2_dir,
    checkpoints.tiny_llama_dir,
)
PROMPT = "The capital of France is"


async def test_n_seeds_stops_usage_and_metrics_on_transformers(tiny_llama_dir: Path) -> None:
    spec = dataclasses.replace(
        checkpoints.transformers_spec(tiny_llama_dir, max_seqs=4), name="tiny"
    )
    async with AppHandle(Settings(), ModelRegistry([spec], engine_factory())) as h:
        c = h.client
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "n": 3, "seed": 7}
        body |= {"temperature": 1.0, "ignore_eos": True}
        first = (await c.post("/v1/completions", json=body)).json()
        again = (await c.post("/v1/completions", json=body)).json()
        texts = [choice["text"] for choice in first["choices"]]
        assert texts == [choice["text"] for choice in again["choices"]]  # seeded
        assert len(texts) == 3 and len(set(texts)) > 1  # three draws
        assert first["usage"]["completion_tokens"] == 3 * 8
        assert first["usage"]["prompt_tokens"] > 0

        greedy = {"model": "tiny", "prompt": PROMPT, "max_tokens": 16, "temperature": 0}
        whole = (await c.post("/v1/completions", json=greedy)).json()["choices"][0]["text"]
        stop = next(whole[i : i + 3] for i in range(4, len(whole)) if whole[i : i + 3].strip())
        cut = (await c.post("/v1/completions", json={**greedy, "stop": [stop]})).json()
        assert cut["choices"][0]["text"] == whole[: whole.index(stop)]
        assert cut["choices"][0]["finish_reason"] == "stop"

        metrics = (await c.get("/metrics")).text
        found = re.search(r'inferd_engine_generation_tokens_total\{model="tiny"\} (\S+)', metrics)
        assert found is not None and float(found[1]) >= 2 * 3 * 8


async def test_penalties_reach_the_sampler_in_every_dialect_on_transformers(
    smollm2_dir: Path,
) -> None:
    """SmolLM2's greedy answer repeats itself; a frequency/presence penalty
    (OpenAI), repeat_penalty (Ollama) changes them, and without one the answer is the plain
    greedy one (the penalty is what changed it, not chance)."""
    spec = dataclasses.replace(checkpoints.transformers_spec(smollm2_dir, max_seqs=4), name="tiny")
    async with AppHandle(Settings(), ModelRegistry([spec], engine_factory())) as h:
        c = h.client
        greedy = {"model": "tiny", "prompt": PROMPT, "max_tokens": 40, "temperature": 0}
        greedy |= {"ignore_eos": True}

        async def text(**extra: object) -> str:
            r = await c.post("/v1/completions", json={**greedy, **extra})
            assert r.status_code == 200, r.text
            return str(r.json()["choices"][0]["text"])

        plain = await text()
        assert await text(frequency_penalty=0.0, presence_penalty=0.0) == plain
        assert await text(frequency_penalty=2.0) != plain
        assert await text(presence_penalty=2.0) != plain

        async def ollama(**options: object) -> str:
            body = {"model": "tiny", "prompt": PROMPT, "raw": True, "stream": False}
            body["options"] = {"temperature": 0, "num_predict": 40, **options}
            r = await c.post("/api/generate", json=body)
            assert r.status_code == 200, r.text
            return str(r.json()["response"])

        ollama_plain = await ollama(repeat_penalty=1.0)
        assert await ollama(repeat_penalty=1.8, repeat_last_n=64) != ollama_plain
