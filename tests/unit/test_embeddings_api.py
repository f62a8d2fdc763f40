"""Embeddings routes of every dialect over the fake backend: shapes, normalization, encoding,
batching into one engine call, and bad input in each dialect's error shape."""

from __future__ import annotations

import base64
import math
from typing import Any

import httpx
import numpy as np
import pytest

from inferd.api.embeddings import l2_normalize, to_base64
from inferd.engine.backends.fake import FakeBackend
from tests.conftest import AppHandle, FakeFactory

TEXTS = ["the cat sat", "the cat sits", "quarterly revenue"]


def fake(h: AppHandle) -> FakeBackend:
    backend = h.engine().backend
    assert isinstance(backend, FakeBackend)
    return backend


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def expected(text: str, *, normalized: bool = True) -> list[float]:
    raw = FakeBackend().embed([[b + 1 for b in text.encode()]])[0]
    return l2_normalize(raw) if normalized else raw


def ollama_error(resp: httpx.Response, status: int = 400, contains: str = "") -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert contains.lower() in body["error"].lower(), body
    return str(body["error"])


def openai_error(resp: httpx.Response, param: str | None, status: int = 400) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["param"] == param, err
    return dict(err)


# ---- Ollama ------------------------------------------------------------------------------------


async def test_api_embed_a_list_in_one_engine_call(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        r = await h.client.post("/api/embed", json={"model": "fake", "input": TEXTS})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {
            "model",
            "embeddings",
            "total_duration",
            "load_duration",
            "prompt_eval_count",
        }
        assert body["model"] == "fake"
        assert body["prompt_eval_count"] == sum(len(t.encode()) for t in TEXTS)
        assert body["total_duration"] >= body["load_duration"] >= 0
        assert len(body["embeddings"]) == 3
        for text, vec in zip(TEXTS, body["embeddings"], strict=True):
            assert vec == pytest.approx(expected(text))
            assert norm(vec) == pytest.approx(1.0)
        assert fake(h).embed_calls == [3]


async def test_api_embed_a_string(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        r = await h.client.post("/api/embed", json={"model": "fake", "input": "hello"})
        assert r.status_code == 200, r.text
        assert r.json()["embeddings"] == [pytest.approx(expected("hello"))]


@pytest.mark.parametrize("empty", [None, "", []])
async def test_api_embed_without_input_only_loads(fake_app: FakeFactory, empty: Any) -> None:
    """As Ollama does (its clients send input="" to preload a model)."""
    async with fake_app() as h:
        body: dict[str, Any] = {"model": "fake"}
        if empty is not None:
            body["input"] = empty
        r = await h.client.post("/api/embed", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["embeddings"] == []
        assert fake(h).embed_calls == []
        r = await h.client.post("/api/embed", json={**body, "keep_alive": 0})
        assert r.status_code == 200, r.text
        assert h.registry.entry("fake").model is None  # keep_alive 0 unloads


async def test_api_embed_truncates_unless_told_not_to(fake_app: FakeFactory) -> None:
    async with fake_app(n_ctx=16) as h:
        long = "x" * 40
        r = await h.client.post("/api/embed", json={"model": "fake", "input": long})
        assert r.status_code == 200, r.text
        assert r.json()["prompt_eval_count"] == 16
        assert r.json()["embeddings"][0] == pytest.approx(expected("x" * 16))
        r = await h.client.post(
            "/api/embed", json={"model": "fake", "input": ["ok", long], "truncate": False}
        )
        ollama_error(r, contains="input[1]")
        r = await h.client.post(
            "/api/embed",
            json={"model": "fake", "input": "x" * 10, "truncate": False, "options": {"num_ctx": 8}},
        )
        ollama_error(r, contains="context")
        # num_ctx above the model's context is cut to it, as Ollama does (issue 23 item 13)
        r = await h.client.post(
            "/api/embed", json={"model": "fake", "input": long, "options": {"num_ctx": 10**9}}
        )
        assert r.status_code == 200, r.text
        assert r.json()["prompt_eval_count"] == 16
        assert fake(h).embed_calls == [1, 1]


@pytest.mark.parametrize(
    ("body", "contains"),
    [
        ({"input": [""]}, "input"),
        ({"input": ["a", ""]}, "input[1]"),
        ({"input": [1, 2]}, "input"),
        ({"input": 5}, "input"),
        ({"input": {"a": 1}}, "input"),
        ({"input": "a", "truncate": "no"}, "truncate"),
        ({"input": "a", "dimensions": 9}, "dimensions"),  # the fake's vectors have 8
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": "a", "dimensions": -1}, "dimensions"),
        ({"input": "a", "dimensions": 2.5}, "dimensions"),
        ({"input": "a", "keep_alive": "soon"}, "keep_alive"),
        ({"input": ["a"] * 257}, "at most 256"),
    ],
)
async def test_api_embed_bad_input(
    fake_app: FakeFactory, body: dict[str, Any], contains: str
) -> None:
    async with fake_app() as h:
        ollama_error(
            await h.client.post("/api/embed", json={"model": "fake", **body}), 400, contains
        )
        assert fake(h).embed_calls == []
        ollama_error(
            await h.client.post("/api/embed", json={"model": "nope", "input": "a"}), 404, "nope"
        )


async def test_legacy_embeddings_are_not_normalized(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        r = await h.client.post("/api/embeddings", json={"model": "fake", "prompt": "hello"})
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"embedding"}
        vec = r.json()["embedding"]
        assert vec == pytest.approx(expected("hello", normalized=False))
        assert norm(vec) != pytest.approx(1.0)
        r = await h.client.post("/api/embeddings", json={"model": "fake", "prompt": ""})
        assert r.status_code == 200 and r.json() == {"embedding": []}
        ollama_error(await h.client.post("/api/embeddings", json={"model": "fake", "prompt": 3}))


# ---- OpenAI ------------------------------------------------------------------------------------


async def test_v1_embeddings_float_and_base64(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        r = await h.client.post("/v1/embeddings", json={"model": "fake", "input": TEXTS})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["model"] == "fake"
        assert body["usage"] == {
            "prompt_tokens": sum(len(t.encode()) for t in TEXTS),
            "total_tokens": sum(len(t.encode()) for t in TEXTS),
        }
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        assert all(d["object"] == "embedding" for d in body["data"])
        floats = [d["embedding"] for d in body["data"]]
        for text, vec in zip(TEXTS, floats, strict=True):
            assert vec == pytest.approx(expected(text))
        r = await h.client.post(
            "/v1/embeddings", json={"model": "fake", "input": TEXTS, "encoding_format": "base64"}
        )
        assert r.status_code == 200, r.text
        for d, vec in zip(r.json()["data"], floats, strict=True):
            decoded = np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
            assert decoded.tolist() == pytest.approx(vec, rel=1e-6)
        assert fake(h).embed_calls == [3, 3]


async def test_v1_embeddings_token_ids(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        ids = [b + 1 for b in b"hello"]
        one = await h.client.post("/v1/embeddings", json={"model": "fake", "input": ids})
        assert one.status_code == 200, one.text
        assert len(one.json()["data"]) == 1
        assert one.json()["data"][0]["embedding"] == pytest.approx(expected("hello"))
        two = await h.client.post("/v1/embeddings", json={"model": "fake", "input": [ids, [5]]})
        assert two.status_code == 200, two.text
        assert len(two.json()["data"]) == 2
        assert two.json()["usage"]["prompt_tokens"] == 6


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [[]]}, "input[0]"),
        ({"input": ["a", ""]}, "input[1]"),
        ({"input": [1, "a"]}, "input"),
        ({"input": None}, "input"),
        ({}, "input"),
        ({"input": [257]}, "input"),
        ({"input": [[1], [-1]]}, "input[1]"),
        ({"input": "x" * 513}, "input"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "dimensions": 9}, "dimensions"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": "a", "dimensions": "4"}, "dimensions"),
        ({"input": ["a"] * 257}, "input"),
    ],
)
async def test_v1_embeddings_bad_input(
    fake_app: FakeFactory, body: dict[str, Any], param: str
) -> None:
    async with fake_app() as h:
        openai_error(await h.client.post("/v1/embeddings", json={"model": "fake", **body}), param)
        assert fake(h).embed_calls == []


async def test_v1_embeddings_too_long_is_context_length_exceeded(fake_app: FakeFactory) -> None:
    async with fake_app(n_ctx=16) as h:
        r = await h.client.post("/v1/embeddings", json={"model": "fake", "input": "y" * 17})
        err = openai_error(r, "input")
        assert err["code"] == "context_length_exceeded"
        assert "17" in err["message"] and "16" in err["message"]
        ok = await h.client.post("/v1/embeddings", json={"model": "fake", "input": "y" * 16})
        assert ok.status_code == 200, ok.text


async def test_the_embeddings_limit_can_be_below_the_context(fake_app: FakeFactory) -> None:
    async with fake_app(n_ctx=64, n_ctx_embed=16) as h:
        r = await h.client.post("/api/embed", json={"model": "fake", "input": "z" * 20})
        assert r.status_code == 200 and r.json()["prompt_eval_count"] == 16
        r = await h.client.post(
            "/api/embed", json={"model": "fake", "input": "z" * 20, "options": {"num_ctx": 64}}
        )
        assert r.status_code == 200 and r.json()["prompt_eval_count"] == 16
        err = openai_error(
            await h.client.post("/v1/embeddings", json={"model": "fake", "input": "z" * 17}),
            "input",
        )
        assert "16" in err["message"]


# ---- dimensions: shortened and normalized again, as OpenAI and Ollama do --------------------


@pytest.mark.parametrize("dimensions", [1, 3, 8])
async def test_dimensions_shorten_and_renormalize(fake_app: FakeFactory, dimensions: int) -> None:
    full = [expected(t) for t in TEXTS]
    short = [l2_normalize(v[:dimensions]) for v in full]
    async with fake_app() as h:
        r = await h.client.post(
            "/api/embed", json={"model": "fake", "input": TEXTS, "dimensions": dimensions}
        )
        assert r.status_code == 200, r.text
        ollama = r.json()["embeddings"]
        body = {"model": "fake", "input": TEXTS, "dimensions": dimensions}
        r = await h.client.post("/v1/embeddings", json=body)
        assert r.status_code == 200, r.text
        openai = [d["embedding"] for d in r.json()["data"]]
        r = await h.client.post("/v1/embeddings", json=body | {"encoding_format": "base64"})
        encoded = [d["embedding"] for d in r.json()["data"]]
    for vectors in (ollama, openai):
        assert [len(v) for v in vectors] == [dimensions] * len(TEXTS)
        for got, want in zip(vectors, short, strict=True):
            assert got == pytest.approx(want)
            assert norm(got) == pytest.approx(1.0)
    assert encoded == [to_base64(v) for v in openai]


def test_base64_is_little_endian_float32() -> None:
    assert base64.b64decode(to_base64([1.0, -2.5])) == np.array([1.0, -2.5], "<f4").tobytes()


def test_l2_normalize() -> None:
    assert l2_normalize([3.0, 4.0]) == pytest.approx([0.6, 0.8])
    assert l2_normalize([0.0, 0.0]) == [0.0, 0.0]
