"""The served models: names and aliases, loading in the background, lookup."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from inferd.engine.backends.base import Backend
from inferd.engine.client import AsyncEngine, FinishHook
from inferd.engine.types import GenerationOutput
from inferd.errors import InferdError, ModelNotFound, ModelNotReady
from inferd.models.chat_template import CHATML, ChatTemplate
from inferd.models.spec import ModelSpec

log = logging.getLogger(__name__)

BackendLoader = Callable[[ModelSpec], Backend]


class ModelStatus(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADED = "unloaded"


@dataclass
class LoadedModel:
    spec: ModelSpec
    engine: AsyncEngine
    template: ChatTemplate
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class ModelEntry:
    spec: ModelSpec
    status: ModelStatus = ModelStatus.LOADING
    model: LoadedModel | None = None
    error: str | None = None
    load_seconds: float = 0.0
    load_failures: int = 0
    loading: asyncio.Task[None] | None = None
    on_demand: bool = False  # the current load was started by a request
    # what the last load learnt about the file, kept after an unload
    metadata: dict[str, str] = field(default_factory=dict)
    n_params: int = 0


def _display(name: str) -> str:
    return name if len(name) <= 64 else name[:64] + "..."


class ModelRegistry:
    """Knows every served model by name and alias; never falls back to another model."""

    def __init__(
        self,
        specs: list[ModelSpec],
        loader: BackendLoader,
        *,
        default: str | None = None,
        on_finish: FinishHook | None = None,
    ) -> None:
        if not specs:
            raise ValueError("at least one model is required")
        self._loader = loader
        # called when a generation finishes on any model's engine (metrics, traces, logs);
        # the app sets it when it is built
        self.on_finish = on_finish
        self._entries = {s.name: ModelEntry(s) for s in specs}
        self._names = {n: s.name for s in specs for n in s.names}
        self.default_name = self._canonical(default) if default else specs[0].name

    # ---- lookup ------------------------------------------------------------------------

    def _canonical(self, name: str) -> str:
        found = self._names.get(name)
        if found is None and name.endswith(":latest"):
            found = self._names.get(name.removesuffix(":latest"))
        if found is None:
            raise ModelNotFound(f"The model '{_display(name)}' does not exist", param="model")
        return found

    def entry(self, name: str | None) -> ModelEntry:
        """The entry for `name` (or the default model). 404 when unknown."""
        return self._entries[self.default_name if name is None else self._canonical(name)]

    def get(self, name: str | None) -> LoadedModel:
        """The loaded model called `name` (or the default). 404 unknown, 503 not ready."""
        entry = self.entry(name)
        if entry.model is None:
            detail = {
                ModelStatus.LOADING: "is still loading",
                ModelStatus.UNLOADED: "is not loaded",
            }.get(entry.status, "failed to load")
            raise ModelNotReady(f"The model '{entry.spec.name}' {detail}", param="model")
        return entry.model

    async def acquire(self, name: str | None, *, wait: float = 120.0) -> LoadedModel:
        """Like `get`, but an unloaded model is loaded again first, and requests arriving
        meanwhile share that load (each waits up to `wait` seconds). A model still in its
        startup load answers 503 at once, as /health/ready does."""
        entry = self.entry(name)
        if entry.status is ModelStatus.UNLOADED:
            self._start_load(entry, on_demand=True)
        if entry.status is ModelStatus.LOADING and entry.on_demand and entry.loading:
            with contextlib.suppress(TimeoutError):  # still loading: get() says 503
                await asyncio.wait_for(asyncio.shield(entry.loading), wait)
        return self.get(name)

    def load(self, name: str | None) -> ModelEntry:
        """Start loading a model that is not loaded (or failed before) in the background."""
        entry = self.entry(name)
        if entry.status in (ModelStatus.UNLOADED, ModelStatus.FAILED):
            entry.error = None
            self._start_load(entry, on_demand=True)
        return entry

    def _start_load(self, entry: ModelEntry, *, on_demand: bool = False) -> asyncio.Task[None]:
        if entry.loading is None or entry.loading.done():
            entry.status = ModelStatus.LOADING
            entry.on_demand = on_demand
            entry.loading = asyncio.create_task(self._load(entry))
        return entry.loading

    async def unload(self, name: str | None) -> bool:
        """Stop a model's engine and free it. False when it was not loaded."""
        entry = self.entry(name)
        model = entry.model
        if model is None:
            return False
        entry.model = None
        entry.status = ModelStatus.UNLOADED
        await model.engine.stop()
        log.info("model %s unloaded", entry.spec.name)
        return True

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    @property
    def ready(self) -> bool:
        """The default model is loaded, or was unloaded on purpose and loads on demand."""
        status = self._entries[self.default_name].status
        return status in (ModelStatus.READY, ModelStatus.UNLOADED)

    # ---- lifecycle -------------------------------------------------------------------------

    async def load_all(self) -> None:
        """Load every model, one after another, off the event loop. Failures are kept."""
        for entry in self._entries.values():
            await self._start_load(entry)

    async def _load(self, entry: ModelEntry) -> None:
        spec = entry.spec
        started = time.perf_counter()
        try:
            backend = await asyncio.to_thread(self._loader, spec)
        except InferdError as exc:
            entry.status, entry.error = ModelStatus.FAILED, exc.message
            entry.load_failures += 1
            log.error("model %s failed to load: %s", spec.name, exc.message)
            return
        except Exception as exc:  # a loader bug must not take the server down
            entry.status, entry.error = ModelStatus.FAILED, "internal error while loading"
            entry.load_failures += 1
            log.exception("model %s failed to load: %s", spec.name, exc)
            return
        info = backend.info
        source = spec.config.chat_template or info.chat_template or CHATML
        try:
            template = ChatTemplate(source, bos_token=info.bos_token, eos_token=info.eos_token)
        except InferdError as exc:  # a broken template in the GGUF file or the config
            await asyncio.to_thread(backend.close)
            entry.status, entry.error = ModelStatus.FAILED, exc.message
            entry.load_failures += 1
            log.error("model %s failed to load: %s", spec.name, exc.message)
            return
        cfg = spec.config
        engine = AsyncEngine(
            backend,
            name=spec.name,
            on_finish=self._finished,
            prefix_cache_bytes=cfg.prefix_cache_mb << 20 if cfg.prefix_cache else 0,
        )
        engine.start()
        entry.model = LoadedModel(spec, engine, template)
        entry.status = ModelStatus.READY
        entry.load_seconds = time.perf_counter() - started
        entry.metadata = backend.metadata()
        entry.n_params = info.n_params
        log.info(
            "model %s ready in %.2fs (context %d, %d slots, %d KV cells)",
            spec.name,
            time.perf_counter() - started,
            info.n_ctx,
            info.max_seqs,
            info.kv_cells,
        )

    def _finished(self, model: str, output: GenerationOutput, seconds: float) -> None:
        if self.on_finish is not None:
            self.on_finish(model, output, seconds)

    async def close(self) -> None:
        for entry in self._entries.values():
            if entry.loading is not None and not entry.loading.done():
                await asyncio.gather(entry.loading, return_exceptions=True)
            await self.unload(entry.spec.name)
