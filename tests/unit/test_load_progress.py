"""A load that reports how far it is (as the transformers backend does, its weights counted as
they are read), on the fake backend held mid-way by the test: `loading` with its progress in
the listings, the log and a 503's reason, and a model whose load is silent listed as loading."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from inferd.cli.chat import load_bar
from inferd.config import ModelConfig, Settings
from inferd.engine.backends.base import Backend
from inferd.engine.backends.fake import FakeBackend
from inferd.models.engines import BackendEngineFactory
from inferd.models.entry import ModelStatus
from inferd.models.progress import LoadProgress, ProgressCallback, logging_progress
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec
from tests.conftest import AppHandle


class HeldLoad(BackendEngineFactory):
    """Loads model `slow` in two halves, reporting each, and waits for the test in between."""

    def __init__(self) -> None:
        super().__init__(lambda _spec: FakeBackend(), lambda _spec: 1234)
        self.half = threading.Event()
        self.go_on = threading.Event()

    def backend(self, spec: ModelSpec, report: ProgressCallback) -> Backend:
        if spec.name == "slow":
            report = logging_progress(logging.getLogger("test"), spec.name, report)
            report(LoadProgress("loading", 0.0, "reading the tokenizer"))
            report(LoadProgress("loading", 0.5, "weights: 1 of 2 tensors"))
            self.half.set()
            assert self.go_on.wait(30)
            report(LoadProgress("loading", 1.0, "weights: 2 of 2 tensors"))
        return FakeBackend()


def spec(name: str) -> ModelSpec:
    path = Path(f"{name}.gguf")
    return ModelSpec(name, path, ModelConfig(path=path))


async def test_a_load_in_progress_is_listed_with_how_far_it_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    factory = HeldLoad()
    registry = ModelRegistry([spec("fast"), spec("slow")], factory)
    handle = AppHandle(Settings(), registry)
    startup = asyncio.create_task(registry.load_all())
    try:
        c, entry = handle.client, registry.entry("slow")
        assert await asyncio.to_thread(factory.half.wait, 30)
        deadline = asyncio.get_running_loop().time() + 10
        while entry.progress is None or entry.progress.fraction < 0.5:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert entry.status is ModelStatus.LOADING
        (m,) = [m for m in (await c.get("/models")).json()["models"] if m["name"] == "slow"]
        assert (m["status"], m["progress"]) == ("loading", {"phase": "loading", "fraction": 0.5})
        # `inferd run`'s bar while it waits for the load
        assert load_bar(m) == {"description": "loading slow", "total": 1.0, "completed": 0.5}
        (p,) = [m for m in (await c.get("/api/ps")).json()["models"] if m["name"] == "slow"]
        assert p["status"] == "loading" and p["progress"]["fraction"] == 0.5
        assert p["size"] == 1234 and p["expires_at"] is None  # the estimate; not yet loaded
        cards = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}
        assert cards["slow"]["status"] == "loading" and cards["fast"]["status"] == "ready"
        r = await c.post("/v1/completions", json={"model": "slow", "prompt": "x"})
        assert r.status_code == 503 and "retry-after" in r.headers
        assert "is still loading (loading 50%)" in r.json()["error"]["message"]
        r = await c.post("/v1/completions", json={"model": "fast", "prompt": "x"})
        assert r.status_code == 200  # the other model serves meanwhile
        factory.go_on.set()
        await startup
        assert entry.status is ModelStatus.READY and entry.progress is None
        logged = [r.getMessage() for r in caplog.records if r.name == "test"]
        assert logged == [
            "model slow: loading 0%",
            "model slow: loading 50%",
            "model slow: loading 100%",
        ]
    finally:
        factory.go_on.set()
        await startup
        await handle.__aexit__()


def test_the_log_says_each_phase_at_each_quarter(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    seen: list[LoadProgress] = []
    report = logging_progress(logging.getLogger("test"), "m", seen.append)
    steps = [("converting", i / 20) for i in range(21)] + [
        ("quantizing", i / 10) for i in range(11)
    ]
    for phase, fraction in steps:
        report(LoadProgress(phase, fraction))
    report(LoadProgress("done", 1.0))
    assert len(seen) == len(steps) + 1  # every step is handed on
    logged = [r.getMessage() for r in caplog.records if r.name == "test"]
    quarters = ["0%", "25%", "50%", "75%", "100%"]
    # each phase from its own start (a quantization after a whole conversion is logged too)
    assert logged == [f"model m: converting {q}" for q in quarters] + [
        "model m: quantizing 0%",
        "model m: quantizing 30%",
        "model m: quantizing 60%",
        "model m: quantizing 90%",
        "model m: quantizing 100%",  # its end, though less than a quarter on
    ]
