"""The served models: lookup by name, loading in the background, unloading by policy."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping

from inferd.engine.types import GenerationOutput
from inferd.errors import InferdError, ModelNotReady
from inferd.models.engines import EngineFactory
from inferd.models.entry import LoadedModel, ModelEntry, ModelStatus
from inferd.models.gguf_header import read_header
from inferd.models.names import NameTable
from inferd.models.options import RegistryOptions
from inferd.models.profile import ModelProfile
from inferd.models.progress import LoadProgress
from inferd.models.residency import Clock, ResidencyPolicy
from inferd.models.spec import ModelSpec, Source
from inferd.models.store import ModelStore

log = logging.getLogger(__name__)

__all__ = ["LoadedModel", "ModelEntry", "ModelRegistry", "ModelStatus", "RegistryOptions"]

# a load under way: its requests wait for it (bounded) or get a 503
_PREPARING = (ModelStatus.LOADING, ModelStatus.CONVERTING)


def _progress(entry: ModelEntry, p: LoadProgress) -> None:
    """A load moved on (on the event loop): converting while a conversion or quantization
    runs, else loading; the entry keeps the step until the phase is done."""
    if entry.status in _PREPARING:
        done = p.phase == "done"
        entry.status = ModelStatus.CONVERTING if p.converting else ModelStatus.LOADING
        entry.progress = None if done else p


class ModelRegistry:
    """Every served model, loaded by `factory` off the event loop, one load at a time.

    Names resolve in a `NameTable` (never falling back to another model); a
    `ResidencyPolicy` decides which models stay loaded (max_loaded_models, max_memory,
    keep_alive) and this class carries its decisions out: loads on demand, unloads the
    least recently used idle model to make room, and unloads idle models past their
    keep_alive.
    """

    def __init__(
        self,
        specs: list[ModelSpec],
        factory: EngineFactory,
        *,
        default: str | None = None,
        options: RegistryOptions | None = None,
        store: ModelStore | None = None,
        model_overrides: Mapping[str, object] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._factory = factory
        self.options = options or RegistryOptions()
        self._names = NameTable(
            specs, self.options, default=default, store=store, model_overrides=model_overrides
        )
        self._policy = ResidencyPolicy(self.options, factory.footprint, clock=clock)
        self._load_lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None

    @property
    def default_name(self) -> str:
        return self._names.default_name

    # ---- lookup ------------------------------------------------------------------------

    def entry(self, name: str | None) -> ModelEntry:
        """The entry for `name` (or the default model). 404 when unknown."""
        return self._names.entry(name)

    def entries(self) -> list[ModelEntry]:
        return self._names.entries()

    def profile(self, name: str | None) -> ModelProfile | None:
        """What /api/create gave the model `name` (template, system, parameters, ...)."""
        return self._names.profile(name)

    @property
    def store(self) -> ModelStore | None:
        """The models directory, where pulled and created models go (None: none)."""
        return self._names.store

    def get(self, name: str | None) -> LoadedModel:
        """The loaded model called `name` (or the default). 404 unknown, 503 not ready."""
        entry = self.entry(name)
        if entry.model is None:
            p = entry.progress
            detail = {
                ModelStatus.LOADING: "is still loading" + ("" if p is None else f" ({p})"),
                ModelStatus.CONVERTING: f"is being converted to GGUF ({p or 'starting'})",
                ModelStatus.UNLOADED: "is not loaded",
            }.get(entry.status, "failed to load")
            if entry.error:
                detail += f": {entry.error}"
            raise ModelNotReady(f"The model '{entry.spec.name}' {detail}", param="model")
        return entry.model

    async def acquire(self, name: str | None, *, wait: float | None = None) -> LoadedModel:
        """The model for a generation: like `get`, but an unloaded model is loaded again
        first, and requests arriving meanwhile share that load (each waits up to `wait`
        seconds, default options.load_wait). A model still in its startup load answers 503
        at once, as /health/ready does. It counts as busy until the generation reaches its
        engine (ResidencyPolicy.busy)."""
        entry, model = await self._take(name, wait)
        self._policy.acquired(entry)
        return model

    @contextlib.asynccontextmanager
    async def using(self, name: str | None) -> AsyncIterator[LoadedModel]:
        """The model for work beside its engine's queue (embeddings, the tokenizer routes),
        loaded as `acquire` does; busy, so never unloaded for idleness, while the block
        runs."""
        entry, model = await self._take(name, None)
        self._policy.entered(entry)
        try:
            yield model
        finally:
            self._policy.left(entry)

    async def _take(self, name: str | None, wait: float | None) -> tuple[ModelEntry, LoadedModel]:
        entry = self.entry(name)
        if entry.status is ModelStatus.UNLOADED:
            self._start_load(entry, on_demand=True)
        if entry.status in _PREPARING and entry.on_demand and entry.loading:
            limit = self.options.load_wait if wait is None else wait
            with contextlib.suppress(TimeoutError):  # still loading: get() says 503
                await asyncio.wait_for(asyncio.shield(entry.loading), limit)
        return entry, self.get(name)

    @property
    def ready(self) -> bool:
        """The default model is loaded (an unloaded one is not: its first request waits
        for a load)."""
        return self._names.entry(None).status is ModelStatus.READY

    # ---- loading and unloading -------------------------------------------------------------

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
            entry.loading = asyncio.create_task(self._load(entry, evict=on_demand))
        return entry.loading

    async def load_all(self) -> None:
        """Load the default model, then the other configured ones while they fit the
        limits (the rest, and the models directory's, load on demand), one after another,
        off the event loop. Failures are kept. Starts the idle-unload watcher."""
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap_forever())
        default = self.entry(None)
        rest = (e for e in self._names.entries(rescan=False) if e is not default)
        for entry in [default, *rest]:
            if entry is default or entry.spec.source != Source.DIRECTORY:
                await self._start_load(entry)

    async def _load(self, entry: ModelEntry, *, evict: bool) -> None:
        async with self._load_lock:
            if entry.model is not None:  # loaded meanwhile
                entry.status = ModelStatus.READY
                return
            # the estimate parses the GGUF header (~30 ms here): off the event loop
            need = await asyncio.to_thread(self._policy.memory, entry)
            entry.memory_estimate = need
            never = self._policy.never_fits(need)
            if never is not None:  # a failed load, not a wait
                entry.status, entry.error = ModelStatus.FAILED, never
                log.error("model %s cannot load: %s", entry.spec.name, never)
                return
            why = await self._make_room(entry, need, evict=evict)
            if why is not None:
                entry.status = ModelStatus.UNLOADED
                entry.error = why if evict else None
                log.info("model %s not loaded: %s", entry.spec.name, why)
                return
            await self._load_now(entry, need)

    async def _make_room(self, entry: ModelEntry, need: int, *, evict: bool) -> str | None:
        """Unload least recently used idle models until `entry` fits the limits.
        None when it fits, else why it does not."""
        while True:
            loaded = self._names.entries(rescan=False)
            others = [e for e in loaded if e.model is not None and e is not entry]
            limit = self._policy.limit_reached(need, others)
            if limit is None:
                return None
            if not evict:
                return f"{limit} is reached"
            victim = self._policy.to_evict(others)
            if victim is None:
                return f"{limit} is reached and every loaded model is busy"
            await self._unload(victim, f"least recently used, to make room for {entry.spec.name}")

    async def _load_now(self, entry: ModelEntry, need: int) -> None:
        spec = entry.spec
        started = time.perf_counter()
        log.info("loading model %s (%d MB)", spec.name, need // 1_000_000)
        try:
            model = await self._factory.load(
                spec, on_finish=self._finished, on_progress=functools.partial(_progress, entry)
            )
        except InferdError as exc:
            entry.status, entry.error, entry.progress = ModelStatus.FAILED, exc.message, None
            entry.load_failures += 1
            log.error("model %s failed to load: %s", spec.name, exc.message)
            return
        except Exception as exc:  # a loader bug must not take the server down
            entry.status, entry.error = ModelStatus.FAILED, "internal error while loading"
            entry.progress = None
            entry.load_failures += 1
            log.exception("model %s failed to load: %s", spec.name, exc)
            return
        entry.model = model
        entry.status = ModelStatus.READY
        entry.error = None
        entry.progress = None
        entry.load_seconds = time.perf_counter() - started
        entry.metadata = model.metadata
        info = model.engine.info
        entry.n_params = info.n_params
        self._policy.loaded(entry)
        log.info(
            "model %s ready in %.2fs (context %d, %d slots, %d MB of weights and KV cache)",
            spec.name,
            entry.load_seconds,
            info.n_ctx,
            info.max_seqs,
            model.memory // 1_000_000,
        )

    async def unload(self, name: str | None) -> bool:
        """Stop a model's engine and free it. False when it was not loaded."""
        return await self._unload(self.entry(name), "on request")

    async def _unload(self, entry: ModelEntry, reason: str) -> bool:
        model = entry.model
        if model is None:
            return False
        entry.model = None
        entry.status = ModelStatus.UNLOADED
        self._policy.unloaded(entry)
        await model.engine.stop()
        log.info("model %s unloaded (%s)", entry.spec.name, reason)
        return True

    def _finished(self, model: str, output: GenerationOutput, seconds: float) -> None:
        """A generation ended on `model`'s engine: its idle time counts from now."""
        entry = self._names.get(model)
        if entry is not None:  # not deleted meanwhile
            self._policy.used(entry)

    # ---- keep-alive ----------------------------------------------------------------------

    def set_keep_alive(self, name: str, seconds: float | None) -> None:
        """A request's keep_alive for the model (None: back to the configured default)."""
        self._policy.set_keep_alive(self.entry(name), seconds)

    def expires_in(self, entry: ModelEntry) -> float | None:
        """Seconds until an idle unload, None for never."""
        return self._policy.expires_in(entry)

    async def reap(self) -> float:
        """Unload the models idle past their keep_alive; the seconds until one may be next."""
        entries = self._names.entries(rescan=False)
        for entry in self._policy.expired(entries):
            try:
                await self._unload(entry, f"idle for {self._policy.keep_alive_of(entry):g}s")
            except Exception:  # the watcher must outlive one failed unload
                log.exception("idle unload of %s failed", entry.spec.name)
        return self._policy.next_check(entries)

    async def _reap_forever(self) -> None:
        while True:
            pause = await self.reap()
            await asyncio.sleep(pause)

    # ---- copies and deletes (Ollama's /api/copy and /api/delete) -------------------------

    def copy(self, source: str, destination: str) -> ModelEntry:
        """Give `source`'s model the extra name `destination`, saved in the models
        directory so that it survives restarts."""
        return self._names.copy(source, destination)

    async def delete(self, name: str) -> str:
        """Remove an alias made by `copy`, or a model file of the models directory (its
        aliases go with it). Bundled and configured models cannot be deleted."""
        if self._names.remove_alias(name):
            return "alias"
        entry = self._names.deletable(name)
        if entry.loading is not None and not entry.loading.done():
            await asyncio.gather(entry.loading, return_exceptions=True)
        await self._unload(entry, "deleted")
        self._names.remove(entry)
        log.info("model %s deleted", entry.spec.name)
        return "model"

    # ---- descriptions --------------------------------------------------------------------

    async def describe(self, entries: Iterable[ModelEntry]) -> None:
        """Fill in metadata from each file's GGUF header (off the event loop) where no
        load has yet; a file that cannot be read is left undescribed."""
        for entry in entries:
            if entry.model is not None:
                continue
            try:
                st = entry.spec.path.stat()
            except OSError:
                continue
            stamp = (st.st_size, st.st_mtime_ns)
            if entry.described == stamp:
                continue
            entry.described = stamp
            try:
                header = await asyncio.to_thread(read_header, entry.spec.path)
            except InferdError as exc:
                log.debug("cannot describe %s: %s", entry.spec.name, exc.message)
                continue
            entry.metadata = header.metadata
            entry.n_params = header.n_params
            entry.array_lengths = header.array_lengths

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        for entry in self._names.entries(rescan=False):
            if entry.loading is not None and not entry.loading.done():
                await asyncio.gather(entry.loading, return_exceptions=True)
            await self._unload(entry, "shutting down")
