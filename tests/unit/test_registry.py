from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inferd.config import ModelConfig
from inferd.engine.backends.fake import FakeBackend
from inferd.errors import BackendError, ModelNotFound, ModelNotReady
from inferd.models.engines import BackendEngineFactory
from inferd.models.registry import ModelRegistry, ModelStatus
from inferd.models.spec import ModelSpec
from tests.conftest import FakeFactory


def spec(name: str, *aliases: str) -> ModelSpec:
    return ModelSpec(name, Path(f"{name}.gguf"), ModelConfig(path=Path(f"{name}.gguf")), aliases)


async def test_names_aliases_and_latest() -> None:
    loads: list[str] = []

    def loader(s: ModelSpec) -> FakeBackend:
        loads.append(s.name)
        return FakeBackend()

    reg = ModelRegistry([spec("a:1b", "a"), spec("b")], BackendEngineFactory(loader))
    await reg.load_all()
    try:
        assert reg.get(None).name == "a:1b"
        assert reg.get("a").name == reg.get("a:latest").name == "a:1b"
        assert reg.get("b:latest").name == "b"
        for bad in ["c", "../a", "a" * 10_000, "a:2b"]:
            with pytest.raises(ModelNotFound):
                reg.get(bad)
        assert loads == ["a:1b", "b"]
    finally:
        await reg.close()


async def test_unload_then_acquire_loads_once_for_concurrent_requests() -> None:
    loads = 0

    def loader(s: ModelSpec) -> FakeBackend:
        nonlocal loads
        loads += 1
        return FakeBackend()

    reg = ModelRegistry([spec("m")], BackendEngineFactory(loader))
    await reg.load_all()
    try:
        assert await reg.unload("m")
        assert reg.entry("m").status is ModelStatus.UNLOADED
        assert not reg.ready  # the default model is not loaded (its next request loads it)
        with pytest.raises(ModelNotReady):
            reg.get("m")
        models = await asyncio.gather(*(reg.acquire("m") for _ in range(5)))
        assert loads == 2
        assert len({id(m) for m in models}) == 1
        assert reg.ready
    finally:
        await reg.close()


async def test_a_model_that_fails_to_load_does_not_stop_the_others() -> None:
    def loader(s: ModelSpec) -> FakeBackend:
        if s.name == "broken":
            raise BackendError("failed to load model file broken.gguf: not a valid GGUF model")
        return FakeBackend()

    reg = ModelRegistry([spec("good"), spec("broken")], BackendEngineFactory(loader))
    await reg.load_all()
    try:
        assert reg.get("good").name == "good"
        entry = reg.entry("broken")
        assert entry.status is ModelStatus.FAILED and "not a valid GGUF" in (entry.error or "")
        with pytest.raises(ModelNotReady, match="failed to load"):
            await reg.acquire("broken")
    finally:
        await reg.close()


# ---- through the app (fake backend) ------------------------------------------------------


async def test_ready_is_503_while_the_default_model_is_unloaded(fake_app: FakeFactory) -> None:
    """/health/ready says what the docs say: 200 when the default model is loaded, else 503
    (an unloaded default is not ready: its next request waits for a load)."""
    async with fake_app() as h:
        assert (await h.client.get("/health/ready")).status_code == 200
        assert (await h.client.delete("/models/fake/unload")).status_code == 200
        resp = await h.client.get("/health/ready")
        assert resp.status_code == 503 and resp.headers["retry-after"]
        chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert (await h.client.post("/v1/chat/completions", json=chat)).status_code == 200
        assert (await h.client.get("/health/ready")).status_code == 200


HUGE_KEEP_ALIVES = ["1000000000h", 1e18, 1e308, "1e308", -1e308, "-1000000000h", 10**400]


@pytest.mark.parametrize("keep_alive", HUGE_KEEP_ALIVES)
async def test_a_huge_keep_alive_is_forever(fake_app: FakeFactory, keep_alive: object) -> None:
    async with fake_app() as h:
        body = {"model": "fake", "prompt": "hi", "stream": False, "keep_alive": keep_alive}
        resp = await h.client.post("/api/generate", json={**body, "options": {"num_predict": 2}})
        assert resp.status_code == 200, resp.text
        ps = await h.client.get("/api/ps")
        assert ps.status_code == 200, ps.text
        (running,) = ps.json()["models"]
        assert running["expires_at"] > "2100"  # forever
        # a load-only request (no prompt) takes the same path
        resp = await h.client.post("/api/chat", json={"model": "fake", "keep_alive": keep_alive})
        assert resp.status_code == 200 and resp.json()["done_reason"] == "load"
        assert (await h.client.get("/api/ps")).status_code == 200


@pytest.mark.parametrize("keep_alive", ["1e400h", "inf", "-inf", "nan", "Infinity", "1e309"])
async def test_a_non_finite_keep_alive_is_a_400(fake_app: FakeFactory, keep_alive: str) -> None:
    async with fake_app() as h:
        body = {"model": "fake", "prompt": "hi", "stream": False, "keep_alive": keep_alive}
        resp = await h.client.post("/api/generate", json=body)
        assert resp.status_code == 400, resp.text
        assert "keep_alive" in resp.json()["error"]
        assert (await h.client.get("/api/ps")).status_code == 200
