"""A Hugging Face checkpoint as a served model, on the fake backend with a conversion cache that
converts when the test says: `converting` with progress in the listings, a 503 with
Retry-After in each dialect's shape meanwhile, other models serving, the model's `quantize`
over the server's, and a failed conversion a failed model."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import ollama

from inferd.cli.remote import state
from inferd.config import ModelConfig, Settings
from inferd.engine.backends.fake import FakeBackend
from inferd.errors import ConversionFailed
from inferd.models.checkpoint import Checkpoint
from inferd.models.convert_cache import CacheEntry, ConvertCache
from inferd.models.converting import ConvertingFactory
from inferd.models.engines import (
    CHECKPOINT,
    LLAMACPP,
    BackendEngineFactory,
    EngineFactories,
    engine_kind,
)
from inferd.models.entry import ModelStatus
from inferd.models.progress import LoadProgress, ProgressCallback
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec
from tests.checkpoints import make
from tests.conftest import AppHandle


class SteppedCache(ConvertCache):
    """Converts only as far as the test lets it (`steps`: converting 25%, converting 75%,
    quantizing 25%, done), then 'writes' `out`."""

    def __init__(self, root: Path, out: Path) -> None:
        super().__init__(root)
        self.out = out
        self.steps: list[threading.Event] = [threading.Event() for _ in range(4)]
        self.asked: list[str] = []
        self.fail: str | None = None

    def get_or_convert(
        self,
        checkpoint: Checkpoint,
        quant: str = "f16",
        *,
        on_progress: ProgressCallback | None = None,
    ) -> CacheEntry:
        assert on_progress is not None
        self.asked.append(quant)
        for i, phase in enumerate(["converting", "converting", "quantizing"]):
            assert self.steps[i].wait(30)
            on_progress(LoadProgress(phase, 0.5 * (i % 2) + 0.25))
        assert self.steps[3].wait(30)
        if self.fail:
            raise ConversionFailed(self.fail)
        on_progress(LoadProgress("done", 1.0))
        return CacheEntry(
            key="k" * 64, path=self.out, source=str(checkpoint.path), architecture="llama",
            quant=quant, size=1, converter="0", llama_cpp="0", created=0.0, seconds=0.0,
        )  # fmt: skip


def spec(name: str, path: Path, **config: object) -> ModelSpec:
    return ModelSpec(name, path, ModelConfig(path=path, **config))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, *specs: ModelSpec, quantize: str | None = None
) -> AsyncIterator[tuple[AppHandle, SteppedCache, list[Path]]]:
    """The app over `specs`, its startup loads running in the background (as in a server)."""
    loaded: list[Path] = []

    def backend(s: ModelSpec) -> FakeBackend:
        loaded.append(s.path)
        return FakeBackend()

    gguf = BackendEngineFactory(backend)  # type: ignore[arg-type]
    cache = SteppedCache(tmp_path / "cache", tmp_path / "converted.gguf")
    factories = EngineFactories(
        {LLAMACPP: gguf, CHECKPOINT: ConvertingFactory(cache, gguf, default_quant=quantize)}
    )
    handle = AppHandle(Settings(), ModelRegistry(list(specs), factories))
    startup = asyncio.create_task(handle.registry.load_all())
    try:
        yield handle, cache, loaded
    finally:
        for step in cache.steps:
            step.set()
        await startup
        await handle.__aexit__()


async def until(predicate: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_folder_is_a_checkpoint_and_a_file_is_gguf(tmp_path: Path) -> None:
    folder = make(tmp_path / "ckpt")
    assert engine_kind(spec("c", folder)) == CHECKPOINT
    assert engine_kind(spec("g", tmp_path / "m.gguf")) == LLAMACPP


async def test_converting_shows_in_listings_and_answers_503_in_each_dialect(
    tmp_path: Path,
) -> None:
    folder = make(tmp_path / "ckpt")
    plain, hf = spec("plain", tmp_path / "plain.gguf"), spec("hf", folder)
    async with serving(tmp_path, plain, hf, quantize="q8_0") as (h, cache, loaded):
        c = h.client
        entry = h.registry.entry("hf")  # a startup load: requests do not wait for it
        cache.steps[0].set()
        await until(lambda: entry.status is ModelStatus.CONVERTING)
        models = (await c.get("/models")).json()["models"]
        hf = next(m for m in models if m["name"] == "hf")
        assert hf["status"] == "converting"
        assert hf["progress"] == {"phase": "converting", "fraction": 0.25}
        health = next(m for m in (await c.get("/health")).json()["models"] if m["name"] == "hf")
        assert health["status"] == "converting" and health["progress"]["fraction"] == 0.25
        await assert_listed_while_preparing(c, "hf", "converting", 0.25, folder)

        # meanwhile: a 503 with Retry-After, in each dialect's shape
        chat = {"model": "hf", "messages": [{"role": "user", "content": "hi"}]}
        r = await c.post("/v1/chat/completions", json=chat)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "being converted to GGUF (converting 25%)" in r.json()["error"]["message"]
        r = await c.post("/api/chat", json={**chat, "stream": False})
        assert r.status_code == 503 and "retry-after" in r.headers
        assert "being converted" in r.json()["error"]
        # and the other model keeps serving
        r = await c.post("/v1/chat/completions", json={**chat, "model": "plain"})
        assert r.status_code == 200

        cache.steps[1].set()
        await until(lambda: entry.progress is not None and entry.progress.fraction == 0.75)
        cache.steps[2].set()
        await until(lambda: entry.progress is not None and entry.progress.phase == "quantizing")
        await assert_listed_while_preparing(c, "hf", "converting", 0.25, folder, "quantizing")
        cache.steps[3].set()
        await until(lambda: entry.status is ModelStatus.READY)
        (running,) = [m for m in (await c.get("/api/ps")).json()["models"] if m["name"] == "hf"]
        assert running["status"] == "ready" and running["progress"] is None
        assert running["expires_at"] > "2100"
        assert entry.progress is None and loaded[-1] == tmp_path / "converted.gguf"
        assert cache.asked == ["q8_0"]  # the server's default type
        assert entry.spec.path == folder  # still known by its checkpoint
        assert h.registry.get("hf").metadata["inferd.converted_from"] == str(folder)
        r = await c.post("/v1/chat/completions", json=chat)
        assert r.status_code == 200


def size_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir())


async def assert_listed_while_preparing(
    c: httpx.AsyncClient,
    name: str,
    status: str,
    fraction: float,
    folder: Path,
    phase: str | None = None,
) -> None:
    """Each dialect's listing shows model `name` being converted or loaded, and how far:
    Ollama's /api/ps (as the official client parses it, and as `inferd ps` prints it),
    OpenAI's /v1/models; /api/tags lists it with its files' size."""
    phase = phase or status
    ps = (await c.get("/api/ps")).json()
    (m,) = [m for m in ps["models"] if m["name"] == name]
    assert (m["status"], m["progress"]["phase"]) == (status, phase)
    if phase == status:
        assert m["progress"]["fraction"] == fraction
    assert m["expires_at"] is None and m["context_length"] is None
    assert m["size"] > 0  # the registry's estimate of what it will take
    parsed = ollama.ProcessResponse.model_validate(ps)  # the official client's own model
    assert name in [p.model for p in parsed.models]
    text = state(m, datetime.now(UTC))
    assert text == f"{phase} {m['progress']['fraction']:.0%}"  # `inferd ps`'s UNTIL column
    # the ready model beside it is listed as before
    assert all(r["status"] == "ready" and r["expires_at"] for r in ps["models"] if r is not m)
    cards = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}
    assert cards[name]["status"] == status and cards[name]["progress"]["phase"] == phase
    assert all(card["status"] == "ready" for n, card in cards.items() if n != name)
    tags = {t["name"]: t for t in (await c.get("/api/tags")).json()["models"]}
    assert tags[f"{name}:latest"]["size"] == size_of(folder)  # its files, not its inode


async def test_a_request_waits_for_the_conversion_it_started(tmp_path: Path) -> None:
    folder = make(tmp_path / "ckpt")
    plain, hf = spec("plain", tmp_path / "plain.gguf"), spec("hf", folder, quantize="q4_k_m")
    async with serving(tmp_path, plain, hf, quantize="q8_0") as (h, cache, _):
        entry = h.registry.entry("hf")
        for step in cache.steps:
            step.set()
        await until(lambda: entry.status is ModelStatus.READY)
        await h.registry.unload("hf")  # the next request loads (converts) it again, and waits
        for step in cache.steps:
            step.clear()
        chat = {"model": "hf", "messages": [{"role": "user", "content": "hi"}]}
        request = asyncio.create_task(h.client.post("/v1/chat/completions", json=chat))
        await until(lambda: entry.status is ModelStatus.LOADING)
        for step in cache.steps:
            step.set()
        r = await request
        assert r.status_code == 200
        assert cache.asked == ["q4_k_m", "q4_k_m"]  # the model's type over the server's


async def test_a_failed_conversion_is_a_failed_model_and_the_rest_serve(tmp_path: Path) -> None:
    folder = make(tmp_path / "ckpt")
    plain, hf = spec("plain", tmp_path / "plain.gguf"), spec("hf", folder)
    async with serving(tmp_path, plain, hf) as (h, cache, _):
        cache.fail = "converting ckpt failed: ValueError: Unprocessed experts"
        for step in cache.steps:
            step.set()
        entry = h.registry.entry("hf")
        await until(lambda: entry.status is ModelStatus.FAILED)
        assert entry.error == cache.fail and entry.progress is None
        r = await h.client.post(
            "/api/generate", json={"model": "hf", "prompt": "x", "stream": False}
        )
        assert r.status_code == 503 and "Unprocessed experts" in r.json()["error"]
        assert cache.asked == ["f16"]  # no type set anywhere: f16
        ok = await h.client.post(
            "/api/generate", json={"model": "plain", "prompt": "x", "stream": False}
        )
        assert ok.status_code == 200


async def test_a_broken_checkpoint_fails_before_converting(tmp_path: Path) -> None:
    folder = make(tmp_path / "ckpt")
    (folder / "config.json").write_text("not json at all")
    plain, hf = spec("plain", tmp_path / "plain.gguf"), spec("hf", folder)
    async with serving(tmp_path, plain, hf) as (h, cache, _):
        entry = h.registry.entry("hf")
        await until(lambda: entry.status is ModelStatus.FAILED)
        assert "config.json is not valid JSON" in (entry.error or "")
        assert cache.asked == []
        assert (await h.client.get("/health")).status_code == 200
