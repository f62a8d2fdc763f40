"""The engine factory seam on the fake backend: the factory of a model's kind loads it, a kind
with no factory is a failed load, and the backend factory's template and memory."""

from __future__ import annotations

from pathlib import Path

from inferd.config import ModelConfig
from inferd.engine.backends.fake import FakeBackend
from inferd.engine.client import FinishHook
from inferd.models.chat_template import CHATML
from inferd.models.engines import (
    LLAMACPP,
    BackendEngineFactory,
    EngineFactories,
    engine_kind,
)
from inferd.models.entry import LoadedModel, ModelStatus
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec


def spec(name: str, **config: object) -> ModelSpec:
    path = Path(f"{name}.gguf")
    return ModelSpec(name, path, ModelConfig(path=path, **config))  # type: ignore[arg-type]


class Recording:
    """A factory of one kind that says which specs it was asked about."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.loads: list[str] = []
        self.inner = BackendEngineFactory(lambda _s: FakeBackend(), lambda _s: 7)  # type: ignore[arg-type]

    async def load(
        self, spec: ModelSpec, *, on_finish: FinishHook, on_progress: object = None
    ) -> LoadedModel:
        self.loads.append(spec.name)
        return await self.inner.load(spec, on_finish=on_finish)

    def footprint(self, spec: ModelSpec) -> int:
        return len(self.kind)


def test_a_gguf_file_is_llama_cpp() -> None:
    assert engine_kind(spec("m")) == LLAMACPP  # a checkpoint folder: tests/unit/test_converting


async def test_each_model_loads_with_the_factory_of_its_kind() -> None:
    one, two = Recording("one"), Recording("three")
    factories = EngineFactories({"one": one, "two": two}, resolve=lambda s: s.name.split("-")[0])
    assert factories.footprint(spec("one-a")) == 3 and factories.footprint(spec("two-b")) == 5
    reg = ModelRegistry([spec("one-a"), spec("two-b"), spec("vllm-c")], factories)
    await reg.load_all()
    try:
        assert one.loads == ["one-a"] and two.loads == ["two-b"]
        assert reg.get("one-a").engine is not reg.get("two-b").engine
        failed = reg.entry("vllm-c")
        assert failed.status is ModelStatus.FAILED
        assert failed.error == "this server cannot run vllm models (vllm-c)"
    finally:
        await reg.close()


async def test_a_broken_chat_template_fails_the_load_and_frees_the_backend() -> None:
    closed: list[FakeBackend] = []

    def backend(_spec: ModelSpec) -> FakeBackend:
        b = FakeBackend()
        b.close = lambda: closed.append(b)  # type: ignore[method-assign]
        return b

    bad = spec("bad", chat_template="{% for m in messages %}")  # no endfor
    reg = ModelRegistry([spec("good"), bad], BackendEngineFactory(backend))  # type: ignore[arg-type]
    await reg.load_all()
    try:
        entry = reg.entry("bad")
        assert entry.status is ModelStatus.FAILED and entry.load_failures == 1
        assert "template" in (entry.error or "")
        assert len(closed) == 1  # the bad one's, not the good one's
        assert reg.get("good").template.source == CHATML  # the fake file has no template
    finally:
        await reg.close()


async def test_memory_is_what_the_backend_holds_else_the_estimate() -> None:
    def reporting(_spec: ModelSpec) -> FakeBackend:
        return FakeBackend(size_bytes=1000, kv_cells=10, kv_cell_bytes=4)

    estimate = BackendEngineFactory(lambda _s: FakeBackend(), lambda _s: 123)  # type: ignore[arg-type]
    factories = {"reports": BackendEngineFactory(reporting), "silent": estimate}  # type: ignore[arg-type]
    for name, memory in [("reports", 1000 + 10 * 4), ("silent", 123)]:
        model = await factories[name].load(spec(name), on_finish=lambda *_: None)
        try:
            assert model.memory == memory
            assert model.metadata["general.architecture"] == "fake"
            assert model.engine.info.n_ctx == 512
        finally:
            await model.engine.stop()
