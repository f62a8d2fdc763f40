"""Registry policy on the fake backend: LRU eviction, memory budget, idle unload, allowlist,
name mapping, the models directory, persisted copies and deletes. Time is a fake clock."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest

from inferd.config import ModelConfig, Settings
from inferd.engine.backends.fake import FakeBackend
from inferd.engine.types import GenerateRequest, GenerationOutput, SamplingParams
from inferd.errors import ConfigError, InvalidRequest, ModelNotFound, ModelNotReady, ProtectedModel
from inferd.models.engines import BackendEngineFactory
from inferd.models.registry import ModelRegistry, ModelStatus, RegistryOptions
from inferd.models.residency import ACQUIRE_GRACE_SECONDS
from inferd.models.spec import ModelSpec, Source
from inferd.models.store import ModelStore
from tests.conftest import wait_for

Outputs = AsyncGenerator[GenerationOutput, None]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def spec(tmp: Path, name: str, *aliases: str, size: int = 10, source: str = Source.SETTINGS):
    path = tmp / f"{name.replace(':', '_')}.gguf"
    path.write_bytes(b"x" * size)
    return ModelSpec(name, path, ModelConfig(path=path), aliases, source)


def fakes(**backend: object) -> BackendEngineFactory:
    return BackendEngineFactory(lambda _spec: FakeBackend(**backend))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def registry(*specs: ModelSpec, **kw: object) -> AsyncIterator[ModelRegistry]:
    loads: list[str] = []

    def loader(s: ModelSpec) -> FakeBackend:
        loads.append(s.name)
        return FakeBackend(step_delay=0.01)

    reg = ModelRegistry(list(specs), BackendEngineFactory(loader), **kw)  # type: ignore[arg-type]
    reg.loads = loads  # type: ignore[attr-defined]
    await reg.load_all()
    try:
        yield reg
    finally:
        await reg.close()


def loaded(reg: ModelRegistry) -> list[str]:
    return [e.spec.name for e in reg.entries() if e.model is not None]


async def generate(reg: ModelRegistry, name: str, tokens: int = 5) -> None:
    async for _ in await started(reg, name, tokens):
        pass


async def started(reg: ModelRegistry, name: str, tokens: int) -> Outputs:
    """A generation on `name` that has reached its engine and is running there (its first
    output is out): the rest of its outputs."""
    model = await reg.acquire(name)
    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    outputs = model.engine.generate(GenerateRequest(f"r-{name}-{id(model)}", (1, 2, 3), params))
    first = await anext(outputs)
    assert not first.finished
    return outputs


async def stop(reg: ModelRegistry, name: str, outputs: Outputs) -> None:
    """The client of a generation from `started` goes; returns once the engine let it go."""
    await outputs.aclose()
    engine = reg.get(name).engine
    assert await wait_for(lambda: engine.stats().running == 0, 10)


async def test_lru_eviction_with_max_loaded_models_1(tmp_path: Path) -> None:
    opts = RegistryOptions(max_loaded_models=1)
    async with registry(spec(tmp_path, "a"), spec(tmp_path, "b"), options=opts) as reg:
        # startup loads the default only; b waits for a request
        assert loaded(reg) == ["a"] and reg.entry("b").status is ModelStatus.UNLOADED
        assert reg.entry("b").error is None
        await generate(reg, "b")
        assert loaded(reg) == ["b"]
        await generate(reg, "a")
        assert loaded(reg) == ["a"]
        assert reg.loads == ["a", "b", "a"]  # type: ignore[attr-defined]


async def test_the_least_recently_used_goes_first(tmp_path: Path) -> None:
    opts = RegistryOptions(max_loaded_models=2)
    specs = [spec(tmp_path, n) for n in "abc"]
    clock = Clock()
    async with registry(*specs, options=opts, clock=clock) as reg:
        assert loaded(reg) == ["a", "b"]
        clock.advance(1)
        await generate(reg, "a")  # b is now the least recently used
        clock.advance(1)
        await generate(reg, "c")
        assert sorted(loaded(reg)) == ["a", "c"]
        clock.advance(1)
        await generate(reg, "b")  # and now a
        assert sorted(loaded(reg)) == ["b", "c"]


async def test_a_busy_model_is_never_evicted(tmp_path: Path) -> None:
    opts = RegistryOptions(max_loaded_models=1, load_wait=5)
    clock = Clock()
    async with registry(spec(tmp_path, "a"), spec(tmp_path, "b"), options=opts, clock=clock) as reg:
        running = await started(reg, "a", tokens=400)  # ~4 s of steps
        clock.advance(ACQUIRE_GRACE_SECONDS)  # busy because it runs, not because it is recent
        with pytest.raises(ModelNotReady, match="every loaded model is busy") as err:
            await reg.acquire("b")
        assert "max_loaded_models" in err.value.message
        assert loaded(reg) == ["a"]
        await stop(reg, "a", running)
        await generate(reg, "b")  # idle now: evicted
        assert loaded(reg) == ["b"]


async def test_acquired_but_not_yet_generating_counts_as_busy(tmp_path: Path) -> None:
    opts = RegistryOptions(max_loaded_models=1)
    clock = Clock()
    async with registry(spec(tmp_path, "a"), spec(tmp_path, "b"), options=opts, clock=clock) as reg:
        await reg.acquire("a")  # a request tokenizing its prompt
        with pytest.raises(ModelNotReady, match="busy"):
            await reg.acquire("b")
        # one that never reaches the engine (say, a 400) protects it for 2 s at most
        clock.advance(ACQUIRE_GRACE_SECONDS - 0.1)
        with pytest.raises(ModelNotReady, match="busy"):
            await reg.acquire("b")
        clock.advance(0.1)
        await generate(reg, "b")
        assert loaded(reg) == ["b"]


async def test_a_model_in_use_beside_its_engine_stays_loaded_and_then_idles(
    tmp_path: Path,
) -> None:
    """Embeddings and the tokenizer routes use a model without its engine's queue: busy
    for as long as they run (past its keep_alive and the acquire grace), idle the moment
    they are done, with no grace to wait out."""
    clock = Clock()
    opts = RegistryOptions(max_loaded_models=1)
    async with registry(spec(tmp_path, "a"), spec(tmp_path, "b"), options=opts, clock=clock) as reg:
        reg.set_keep_alive("a", 0.25)
        async with reg.using("a") as model:
            assert model is reg.get("a")
            clock.advance(ACQUIRE_GRACE_SECONDS + 1)
            await reg.reap()
            assert loaded(reg) == ["a"]  # past keep_alive and the grace, but in use
            with pytest.raises(ModelNotReady, match="busy"):
                await reg.acquire("b")
        assert reg.entry("a").in_use == 0
        await generate(reg, "b")  # idle at once: evicted for b
        assert loaded(reg) == ["b"]
        with contextlib.suppress(RuntimeError):  # a failing block gives the model back too
            async with reg.using("b"):
                raise RuntimeError("a 400 inside the block")
        assert reg.entry("b").in_use == 0


async def test_memory_budget(tmp_path: Path) -> None:
    opts = RegistryOptions(max_memory=250)
    specs = [spec(tmp_path, "a", size=100), spec(tmp_path, "b", size=100)]
    specs.append(spec(tmp_path, "c", size=100))
    specs.append(spec(tmp_path, "huge", size=300))
    async with registry(*specs, options=opts) as reg:
        assert loaded(reg) == ["a", "b"]
        await generate(reg, "c")
        assert sorted(loaded(reg)) == ["b", "c"]
        with pytest.raises(ModelNotReady, match="exceed max_memory"):
            await reg.acquire("huge")
        assert sorted(loaded(reg)) == ["b", "c"]


async def test_the_memory_budget_counts_kv_caches(tmp_path: Path) -> None:
    """Weights of 100 bytes and a KV cache of 10 x 5: two models fit 250 bytes of weights
    but not of weights and KV. Before loading, the footprint estimate is what counts; once
    loaded, what the backend reports."""
    estimates: list[str] = []

    def footprint(s: ModelSpec) -> int:
        estimates.append(s.name)
        return s.path.stat().st_size + 50

    def loader(s: ModelSpec) -> FakeBackend:
        return FakeBackend(kv_cells=10, kv_cell_bytes=5, size_bytes=s.path.stat().st_size)

    factory = BackendEngineFactory(loader, footprint)  # type: ignore[arg-type]
    reg = ModelRegistry(
        [spec(tmp_path, "a", size=100), spec(tmp_path, "b", size=100)],
        factory,
        options=RegistryOptions(max_memory=250),
    )
    await reg.load_all()
    try:
        assert loaded(reg) == ["a"]
        await generate(reg, "b")  # a is idle: unloaded to make room
        assert loaded(reg) == ["b"]
        assert reg.entry("b").model.memory == 100 + 10 * 5  # type: ignore[union-attr]
        assert "b" in estimates
    finally:
        await reg.close()
    small = ModelRegistry(
        [spec(tmp_path, "c", size=100)], factory, options=RegistryOptions(max_memory=120)
    )
    await small.load_all()
    try:  # it can never fit: a failed load (/health/ready says 503), not one on demand
        assert small.entry("c").status is ModelStatus.FAILED and not small.ready
        with pytest.raises(ModelNotReady, match=r"weights and KV cache \(150 bytes\) exceed"):
            await small.acquire("c")
    finally:
        await small.close()


async def test_idle_unload_after_keep_alive(tmp_path: Path) -> None:
    a = spec(tmp_path, "a")
    b = spec(tmp_path, "b")
    b = ModelSpec("b", b.path, b.config.model_copy(update={"keep_alive": -1}))
    clock = Clock()
    async with registry(a, b, options=RegistryOptions(keep_alive=0.5), clock=clock) as reg:
        assert reg.expires_in(reg.entry("a")) == 0.5
        assert reg.expires_in(reg.entry("b")) is None  # the model's own setting wins
        clock.advance(0.4375)
        assert await reg.reap() == 0.0625 and loaded(reg) == ["a", "b"]
        clock.advance(0.0625)
        await reg.reap()
        assert loaded(reg) == ["b"]
        assert reg.entry("a").status is ModelStatus.UNLOADED
        assert not reg.ready  # a, the default, is not loaded
        await generate(reg, "a")  # loads again on demand
        assert "a" in loaded(reg) and reg.ready


async def test_a_request_keep_alive_overrides_and_busy_models_stay(tmp_path: Path) -> None:
    clock = Clock()
    async with registry(spec(tmp_path, "a"), clock=clock) as reg:  # default: forever
        reg.set_keep_alive("a", 0.25)
        long = await started(reg, "a", tokens=400)  # ~4 s of steps
        clock.advance(0.5)
        await reg.reap()
        assert loaded(reg) == ["a"]  # past keep_alive, but busy
        await stop(reg, "a", long)
        await reg.reap()
        assert loaded(reg) == ["a"]  # its last request just ended: the countdown restarts
        clock.advance(0.25)
        await reg.reap()
        assert loaded(reg) == []
        await generate(reg, "a")
        assert reg.entry("a").keep_alive is None  # a reload starts from the default
        assert reg.expires_in(reg.entry("a")) is None
        assert loaded(reg) == ["a"]


async def test_allowlist(tmp_path: Path) -> None:
    opts = RegistryOptions(allowed_models=frozenset({"b"}))
    async with registry(spec(tmp_path, "a"), spec(tmp_path, "b:1b", "b"), options=opts) as reg:
        assert [e.spec.name for e in reg.entries()] == ["b:1b"]
        assert reg.default_name == "b:1b"
        with pytest.raises(ModelNotFound):
            reg.entry("a")
        assert reg.entry("b:latest").spec.name == "b:1b"
    with pytest.raises(ConfigError, match="allowed_models"):
        ModelRegistry([spec(tmp_path, "a")], fakes(), options=opts)


async def test_model_map(tmp_path: Path) -> None:
    settings = Settings(model_map={"mistral:latest": "a", "llama3:8b": "a:latest", "x": "nope"})
    opts = RegistryOptions.from_settings(settings)
    async with registry(spec(tmp_path, "a"), options=opts) as reg:
        for name in ["mistral", "mistral:latest", "llama3:8b", "a:latest"]:
            assert reg.entry(name).spec.name == "a"
        assert set(reg.entry("a").spec.aliases) == {"mistral", "llama3:8b"}
        with pytest.raises(ModelNotFound):
            reg.entry("x")
        with pytest.raises(ProtectedModel):
            await reg.delete("mistral")


async def test_models_directory_and_rescans(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "d1.gguf").write_bytes(b"x")
    store = ModelStore(models)
    async with registry(spec(tmp_path, "a"), store=store) as reg:
        assert [e.spec.name for e in reg.entries()] == ["a", "d1"]
        assert reg.entry("d1").spec.source == Source.DIRECTORY
        (models / "d2.gguf").write_bytes(b"x")  # pulled while serving
        assert reg.entry("d2").spec.path == models / "d2.gguf"
        await generate(reg, "d2")


async def test_bad_names_are_404_with_the_same_text(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (tmp_path / "secret.gguf").write_bytes(b"x")
    async with registry(spec(tmp_path, "a"), store=ModelStore(models)) as reg:
        for name in ["../secret", "../secret.gguf", str(tmp_path / "secret.gguf"), "x" * 10_000]:
            with pytest.raises(ModelNotFound) as err:
                reg.entry(name)
            shown = name if len(name) <= 64 else name[:64] + "..."
            assert err.value.message == f"The model '{shown}' does not exist"


async def test_copies_persist_and_deletes(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "mine.gguf").write_bytes(b"x")
    store = ModelStore(models)
    bundled = spec(tmp_path, "smollm2:135m", "smollm2", source=Source.BUNDLED)
    async with registry(bundled, spec(tmp_path, "conf"), store=store) as reg:
        reg.copy("smollm2", "my-copy:latest")
        reg.copy("mine", "team/model:v1")
        assert reg.entry("my-copy").spec.name == "smollm2:135m"
        assert "my-copy" in reg.entry("smollm2").spec.aliases
        with pytest.raises(InvalidRequest, match="already the name"):
            reg.copy("mine", "conf")
        with pytest.raises(InvalidRequest):
            reg.copy("mine", "../evil")
        with pytest.raises(ModelNotFound):
            reg.copy("nope", "x")
    # a new registry over the same directory (a restart) knows the copies
    async with registry(bundled, spec(tmp_path, "conf"), store=store) as reg:
        assert reg.entry("my-copy:latest").spec.name == "smollm2:135m"
        assert reg.entry("team/model:v1").spec.name == "mine"
        assert await reg.delete("my-copy") == "alias"
        with pytest.raises(ModelNotFound):
            reg.entry("my-copy")
        with pytest.raises(ProtectedModel, match="bundled"):
            await reg.delete("smollm2")
        with pytest.raises(ProtectedModel, match="configured"):
            await reg.delete("conf")
        await generate(reg, "mine")
        assert await reg.delete("mine:latest") == "model"  # unloads, removes file and aliases
        assert not (models / "mine.gguf").exists()
        assert store.aliases() == {}
        for gone in ["mine", "team/model:v1"]:
            with pytest.raises(ModelNotFound):
                reg.entry(gone)
        with pytest.raises(ModelNotFound):
            await reg.delete("mine")
        assert (tmp_path / "smollm2_135m.gguf").exists()


def test_an_unknown_or_disallowed_default_is_a_config_error(tmp_path: Path) -> None:
    specs = [spec(tmp_path, "a"), spec(tmp_path, "b")]
    with pytest.raises(ConfigError, match="default_model 'c' is not a served model"):
        ModelRegistry(specs, fakes(), default="c")
    opts = RegistryOptions(allowed_models=frozenset({"a"}))
    with pytest.raises(ConfigError, match="default_model 'b'"):
        ModelRegistry(specs, fakes(), default="b", options=opts)
