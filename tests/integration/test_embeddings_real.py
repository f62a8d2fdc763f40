"""Embeddings on the real engine and the bundled model, through every dialect's route."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferd.config import Settings
from inferd.models.loading import llamacpp_factory
from inferd.models.registry import ModelRegistry
from tests.conftest import AppHandle, bundled_spec

pytestmark = pytest.mark.model

MODEL = "smollm2"
CAT = "The cat sat on the mat."
CAT2 = "A cat is sitting on a rug."
MONEY = "Quarterly revenue grew by five percent."
# the embeddings window of `narrow`: long inputs, packing and truncation at a few dozen
# tokens cost what they cost at 2,048 (a 2,048-token embeddings decode takes seconds)
WINDOW = 32


@pytest.fixture(scope="module")
async def narrow(model_path: Path) -> AsyncIterator[AppHandle]:
    """The bundled model with an embeddings window of WINDOW tokens."""
    registry = ModelRegistry([bundled_spec(model_path, n_ctx_embed=WINDOW)], llamacpp_factory())
    async with AppHandle(Settings(), registry) as handle:
        yield handle


async def api_embed(real: AppHandle, inputs: Any, **extra: Any) -> np.ndarray:
    r = await real.client.post("/api/embed", json={"model": MODEL, "input": inputs, **extra})
    assert r.status_code == 200, r.text
    return np.array(r.json()["embeddings"])


async def v1_embed(real: AppHandle, inputs: Any, **extra: Any) -> dict[str, Any]:
    r = await real.client.post("/v1/embeddings", json={"model": MODEL, "input": inputs, **extra})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_unit_norm_and_model_width(real: AppHandle) -> None:
    vecs = await api_embed(real, [CAT, CAT2, MONEY, "x"])
    assert vecs.shape == (4, real.engine().info.n_embd) == (4, 576)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(vecs))


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal but for rounding. llama.cpp's CPU matmul over the quantized weights takes
    another kernel once a decode holds more than ~60 tokens, so a short text embedded alone
    and the same text packed beside others differ slightly: measured cosine 0.99987 to
    0.99997, components within 0.009. Unrelated texts are at cosine ~0.7."""
    return bool(np.all(np.sum(a * b, axis=-1) > 0.9998) and np.allclose(a, b, atol=0.015))


async def test_same_text_same_vector(real: AppHandle) -> None:
    a = await api_embed(real, CAT)
    assert np.array_equal(a, await api_embed(real, CAT))  # same request: bit-identical
    b = await api_embed(real, [MONEY, CAT])
    assert np.array_equal(b, await api_embed(real, [MONEY, CAT]))
    assert close(a[0], b[1])


async def test_similar_texts_are_closer_than_unrelated_ones(real: AppHandle) -> None:
    cat, cat2, money = await api_embed(real, [CAT, CAT2, MONEY])
    assert float(cat @ cat2) > float(cat @ money) + 0.05
    assert float(cat @ cat2) > float(cat2 @ money) + 0.05


async def test_batch_equals_one_by_one(real: AppHandle) -> None:
    """40 inputs of varied lengths take several packed decodes; each vector matches the one
    computed alone."""
    texts = [f"{'word ' * (i % 7 + 1)}number {i}" for i in range(40)]
    batch = await api_embed(real, texts)
    for i in (0, 15, 16, 17, 39):
        alone = await api_embed(real, texts[i])
        assert close(batch[i], alone[0]), i


async def test_long_inputs_share_decodes_only_as_they_fit(narrow: AppHandle) -> None:
    """Inputs that together overflow the embeddings context go in separate decodes."""
    long_text = "one two three four five six seven eight nine ten " * 2
    tokens = await narrow.engine().tokenize(long_text, add_special=True, parse_special=False)
    assert len(tokens) * 4 > WINDOW >= len(tokens)
    texts = [long_text + str(i) for i in range(4)]
    batch = await api_embed(narrow, texts)
    alone = await api_embed(narrow, texts[3])
    assert close(batch[3], alone[0])


async def test_legacy_route_is_not_normalized(real: AppHandle) -> None:
    r = await real.client.post("/api/embeddings", json={"model": MODEL, "prompt": CAT})
    assert r.status_code == 200, r.text
    raw = np.array(r.json()["embedding"])
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 1e-3
    normed = (await api_embed(real, CAT))[0]
    assert np.allclose(raw / np.linalg.norm(raw), normed, atol=1e-5)


async def test_openai_route_matches_ollama_route(real: AppHandle) -> None:
    body = await v1_embed(real, [CAT, MONEY])
    floats = np.array([d["embedding"] for d in body["data"]])
    assert np.allclose(floats, await api_embed(real, [CAT, MONEY]), atol=1e-6)
    b64 = await v1_embed(real, [CAT, MONEY], encoding_format="base64")
    decoded = np.array(
        [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64["data"]]
    )
    assert np.allclose(decoded, floats, atol=1e-6)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


async def test_token_ids_equal_their_text(real: AppHandle) -> None:
    ids = await real.engine().tokenize(CAT, add_special=True, parse_special=False)
    by_ids = await v1_embed(real, ids)
    by_text = await v1_embed(real, CAT)
    assert np.allclose(by_ids["data"][0]["embedding"], by_text["data"][0]["embedding"], atol=1e-6)
    assert by_ids["usage"]["prompt_tokens"] == len(ids)
    both = await v1_embed(real, [ids, ids[:3]])
    assert len(both["data"]) == 2


async def test_truncation(real: AppHandle, narrow: AppHandle) -> None:
    """Ollama's route cuts an input to the embeddings window unless told not to; OpenAI's
    refuses it. The window is min(n_ctx, 2048) by default; cutting is shown on a narrow one."""
    info = real.engine().info
    assert info.embed_limit == min(info.n_ctx, 2048)
    text = "lorem ipsum dolor sit amet " * 20
    assert len(await narrow.engine().tokenize(text, add_special=True, parse_special=False)) > WINDOW
    r = await narrow.client.post("/api/embed", json={"model": MODEL, "input": text})
    assert r.status_code == 200, r.text
    assert r.json()["prompt_eval_count"] == WINDOW
    r = await narrow.client.post(
        "/api/embed", json={"model": MODEL, "input": text, "truncate": False}
    )
    assert r.status_code == 400 and "context" in r.json()["error"], r.text
    r = await narrow.client.post("/v1/embeddings", json={"model": MODEL, "input": text})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"input": ""}),
        ("/v1/embeddings", {"input": []}),
        ("/v1/embeddings", {"input": [["a"]]}),
        ("/v1/embeddings", {"input": [49152]}),
        ("/v1/embeddings", {"input": [[1, 2], [-5]]}),
        ("/v1/embeddings", {"input": [1.5]}),
        ("/api/embed", {"input": [""]}),
        ("/api/embed", {"input": [3]}),
        ("/api/embed", {"input": [None]}),
        ("/api/embeddings", {"prompt": ["a"]}),
    ],
)
async def test_bad_input(real: AppHandle, path: str, body: dict[str, Any]) -> None:
    r = await real.client.post(path, json={"model": MODEL, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    if path.startswith("/api/"):
        assert isinstance(err, str) and ("input" in err or "prompt" in err)
    else:
        assert err["param"].startswith("input"), err
    assert "Traceback" not in r.text and "/work" not in r.text
    ok = await real.client.post("/api/embed", json={"model": MODEL, "input": "still fine"})
    assert ok.status_code == 200


@pytest.mark.parametrize("path", ["/api/embed", "/api/embeddings", "/v1/embeddings"])
@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1]",
        b"null",
        b'{"model": "smollm2", "input": "a"',
        b'{"model": "smollm2", "input": "\\ud800 lone", "prompt": "\\ud800 lone"}',
        b'{"model": "smollm2", "input": "a\\u0000b", "prompt": "a\\u0000b"}',
        b'{"model": "../../etc/passwd", "input": "a", "prompt": "a"}',
    ],
)
async def test_malformed_bodies(real: AppHandle, path: str, raw: bytes) -> None:
    """RELIABILITY 1, 9, 12: never a 5xx, nothing leaked; odd text is embedded or refused."""
    r = await real.client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 404), r.text
    assert "Traceback" not in r.text and "/work" not in r.text
    if b"../" in raw:
        assert r.status_code == 404
    ok = await real.client.post("/api/embed", json={"model": MODEL, "input": "still fine"})
    assert ok.status_code == 200


async def test_embeddings_beside_a_token_stream(real: AppHandle) -> None:
    """Embeddings run on their own context beside the core loop: a stream keeps going to its
    end, and the embeddings are the same as alone. (The stream's text is not compared with a
    run alone: a prefix-cache hit changes the prefill's batch and so llama.cpp's kernels.)"""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count from one to twenty."}],
        "max_tokens": 48,
        "temperature": 0,
        "seed": 1,
        "ignore_eos": True,
    }
    vec_alone = await api_embed(real, [CAT, MONEY])

    async def stream() -> tuple[str, str | None]:
        text, finish = "", None
        async with real.client.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True}
        ) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, chunk
                    for c in chunk["choices"]:
                        text += c["delta"].get("content", "")
                        finish = c["finish_reason"] or finish
        return text, finish

    streamed, *vecs = await asyncio.gather(
        stream(), *(api_embed(real, [CAT, MONEY]) for _ in range(3))
    )
    text, finish = streamed
    assert text and finish == "length"
    for v in vecs:
        assert np.array_equal(v, vec_alone)


async def test_a_smaller_embeddings_window(narrow: AppHandle) -> None:
    """n_ctx_embed bounds each embeddings decode and input, below the generation context."""
    h = narrow
    assert h.engine().info.embed_limit == WINDOW < h.engine().info.n_ctx
    text = "one two three four five six seven eight nine ten " * 5
    r = await h.client.post("/api/embed", json={"model": MODEL, "input": [text, CAT] * 3})
    assert r.status_code == 200, r.text
    assert r.json()["prompt_eval_count"] == 3 * WINDOW + 3 * len(
        await h.engine().tokenize(CAT, add_special=True, parse_special=False)
    )
    r = await h.client.post("/v1/embeddings", json={"model": MODEL, "input": text})
    assert r.status_code == 400 and str(WINDOW) in r.json()["error"]["message"], r.text
    chat = await h.client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 2},
    )
    assert chat.status_code == 200, chat.text


async def test_keep_alive_zero_unloads_and_the_next_request_loads(real: AppHandle) -> None:
    vec = await api_embed(real, CAT, keep_alive=0)
    entry = real.registry.entry(MODEL)
    assert entry.model is None
    again = await api_embed(real, CAT)
    assert entry.model is not None
    assert np.allclose(vec, again, atol=1e-6)
