"""The served models: names and aliases, loading in the background, lookup."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from inferd.config import Settings
from inferd.engine.backends.base import Backend
from inferd.engine.client import AsyncEngine, FinishHook
from inferd.engine.types import GenerationOutput
from inferd.errors import (
    ConfigError,
    InferdError,
    InvalidRequest,
    ModelNotFound,
    ModelNotReady,
    ProtectedModel,
)
from inferd.models.chat_template import CHATML, ChatTemplate
from inferd.models.gguf_header import read_header
from inferd.models.spec import ModelSpec, Source, directory_spec
from inferd.models.store import ModelStore, check_name

log = logging.getLogger(__name__)

BackendLoader = Callable[[ModelSpec], Backend]
# bytes a model will take once loaded (weights and KV cache), estimated before loading it
Footprint = Callable[[ModelSpec], int]


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
    # what the last load (or a read of the file's header) learnt, kept after an unload
    metadata: dict[str, str] = field(default_factory=dict)
    n_params: int = 0
    array_lengths: dict[str, int] = field(default_factory=dict)
    described: tuple[int, int] | None = None  # (size, mtime) of the file described
    # the spec as configured or found; `spec` adds the aliases from copies and model_map
    base: ModelSpec | None = None
    last_used: float = field(default_factory=time.monotonic)
    keep_alive: float | None = None  # set by a request (Ollama's keep_alive); None: default
    acquired: int = 0  # requests that acquired the current load (see ModelRegistry._busy)


def _display(name: str) -> str:
    return name if len(name) <= 64 else name[:64] + "..."


def _base_name(name: str) -> str:
    """`smollm2:latest` is `smollm2`."""
    return name.removesuffix(":latest")


# A request that acquired a model but has not reached its engine yet (it is being tokenized)
# protects the model from eviction for this long.
_ACQUIRE_GRACE_SECONDS = 2.0
_MAX_NAME = 1024


@dataclass(frozen=True)
class RegistryOptions:
    """Limits and naming rules of a registry (from the settings)."""

    max_loaded_models: int | None = None
    max_memory: int | None = None  # bytes of model weights and KV caches
    keep_alive: float = -1.0  # seconds idle before unloading; negative: never
    allowed_models: frozenset[str] | None = None
    model_map: Mapping[str, str] = field(default_factory=dict)
    load_wait: float = 120.0  # seconds a request waits for an on-demand load

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryOptions:
        allowed = settings.allowed_models
        return cls(
            max_loaded_models=settings.max_loaded_models,
            max_memory=None if settings.max_memory is None else int(settings.max_memory),
            keep_alive=settings.keep_alive,
            allowed_models=None if allowed is None else frozenset(map(_base_name, allowed)),
            model_map={_base_name(k): v for k, v in settings.model_map.items()},
        )


class ModelRegistry:
    """Knows every served model by name and alias; never falls back to another model.

    Models come from `specs` (the settings or the bundled model) and from the .gguf files of
    `store` (the models directory, rescanned when it changes). Loading runs off the event
    loop, one load at a time; `options` bounds how many models (and how many bytes of
    weights and KV caches) stay loaded, unloading the least recently used idle one to make
    room, and unloads models idle for longer than their keep_alive.
    """

    def __init__(
        self,
        specs: list[ModelSpec],
        loader: BackendLoader,
        *,
        default: str | None = None,
        on_finish: FinishHook | None = None,
        options: RegistryOptions | None = None,
        store: ModelStore | None = None,
        model_overrides: Mapping[str, object] | None = None,
        footprint: Footprint | None = None,
    ) -> None:
        self._loader = loader
        self._footprint = footprint
        # called when a generation finishes on any model's engine (metrics, traces, logs);
        # the app sets it when it is built
        self.on_finish = on_finish
        self.options = options or RegistryOptions()
        self.store = store
        self._overrides = dict(model_overrides or {})
        self._entries: dict[str, ModelEntry] = {}
        self._names: dict[str, str] = {}
        self._store_version: int | None = None
        self._load_lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        for spec in specs:
            if spec.name in self._entries:
                raise ConfigError(f"model name {spec.name!r} is used twice")
            if self._allowed(spec):
                self._entries[spec.name] = ModelEntry(spec, base=spec)
        self._rescan(force=True)
        if not self._entries:
            raise ConfigError("no model to serve: allowed_models excludes every model")
        if default:
            try:
                self.default_name = self._canonical(default)
            except ModelNotFound:
                raise ConfigError(f"default_model {default!r} is not a served model") from None
        else:
            self.default_name = next(iter(self._entries))

    # ---- names -------------------------------------------------------------------------

    def _allowed(self, spec: ModelSpec) -> bool:
        allowed = self.options.allowed_models
        return allowed is None or any(_base_name(n) in allowed for n in spec.names)

    def _rescan(self, *, force: bool = False) -> bool:
        """Pick up files added to or removed from the models directory, and its aliases.
        Only when the directory changed (cheap: one stat). True when it did."""
        store = self.store
        version = None if store is None else store.version()
        if not force and version == self._store_version:
            return False
        self._store_version = version
        if store is not None:
            files = store.files()
            present = {p.absolute() for p in files}
            for name, entry in list(self._entries.items()):
                on_disk = entry.spec.path.absolute() in present
                gone = entry.spec.source == Source.DIRECTORY and not on_disk
                if gone and entry.model is None and entry.status is not ModelStatus.LOADING:
                    del self._entries[name]
            # the same path twice (a configured model inside the directory) is one model;
            # a symlink to another model's file is a model of its own
            known = {e.spec.path.absolute() for e in self._entries.values()}
            taken = {n for e in self._entries.values() for n in (e.base or e.spec).names}
            for path in files:
                spec = directory_spec(path, self._overrides)
                if path.absolute() in known or spec.name in taken or not self._allowed(spec):
                    continue
                # directory models load on demand (the default one also at startup)
                self._entries[spec.name] = ModelEntry(spec, ModelStatus.UNLOADED, base=spec)
                taken.add(spec.name)
        self._rebuild_names()
        return True

    def _rebuild_names(self) -> None:
        """Every name → canonical name: specs' own names first, then model_map, then the
        aliases saved by copies. A name already taken keeps its first meaning."""
        names: dict[str, str] = {}
        for e in self._entries.values():
            for n in (e.base or e.spec).names:
                names.setdefault(_base_name(n), e.base.name if e.base else e.spec.name)
        fixed = dict(names)
        extra: dict[str, list[str]] = {}
        saved = self.store.aliases() if self.store is not None else {}
        for source in (self.options.model_map, saved):
            for alias, target in source.items():
                alias = _base_name(alias)
                canonical = fixed.get(_base_name(target))
                if canonical is None:
                    log.warning("alias %r points at unknown model %r", alias, target)
                    continue
                if alias in names:
                    continue
                names[alias] = canonical
                extra.setdefault(canonical, []).append(alias)
        self._names = names
        for e in self._entries.values():
            base = e.base or e.spec
            more = tuple(a for a in extra.get(base.name, []) if a not in base.names)
            e.spec = dataclasses.replace(base, aliases=base.aliases + more) if more else base

    def _canonical(self, name: str) -> str:
        if len(name) <= _MAX_NAME:
            for attempt in range(2):
                found = self._names.get(name) or self._names.get(_base_name(name))
                if found is not None:
                    return found
                if attempt == 0 and not self._rescan():
                    break
        raise ModelNotFound(f"The model '{_display(name)}' does not exist", param="model")

    # ---- lookup ------------------------------------------------------------------------

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
            if entry.error:
                detail += f": {entry.error}"
            raise ModelNotReady(f"The model '{entry.spec.name}' {detail}", param="model")
        return entry.model

    async def acquire(self, name: str | None, *, wait: float | None = None) -> LoadedModel:
        """Like `get`, but an unloaded model is loaded again first, and requests arriving
        meanwhile share that load (each waits up to `wait` seconds, default
        options.load_wait). A model still in its startup load answers 503 at once, as
        /health/ready does."""
        entry = self.entry(name)
        if entry.status is ModelStatus.UNLOADED:
            self._start_load(entry, on_demand=True)
        if entry.status is ModelStatus.LOADING and entry.on_demand and entry.loading:
            limit = self.options.load_wait if wait is None else wait
            with contextlib.suppress(TimeoutError):  # still loading: get() says 503
                await asyncio.wait_for(asyncio.shield(entry.loading), limit)
        model = self.get(name)
        entry.last_used = time.monotonic()
        entry.acquired += 1
        return model

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

    async def unload(self, name: str | None) -> bool:
        """Stop a model's engine and free it. False when it was not loaded."""
        return await self._unload(self.entry(name), "on request")

    async def _unload(self, entry: ModelEntry, reason: str) -> bool:
        model = entry.model
        if model is None:
            return False
        entry.model = None
        entry.status = ModelStatus.UNLOADED
        entry.keep_alive = None
        entry.acquired = 0
        await model.engine.stop()
        log.info("model %s unloaded (%s)", entry.spec.name, reason)
        return True

    def entries(self) -> list[ModelEntry]:
        self._rescan()
        return list(self._entries.values())

    @property
    def ready(self) -> bool:
        """The default model is loaded, or was unloaded on purpose and loads on demand."""
        status = self._entries[self.default_name].status
        return status in (ModelStatus.READY, ModelStatus.UNLOADED)

    # ---- keep-alive and eviction -------------------------------------------------------

    def set_keep_alive(self, name: str, seconds: float | None) -> None:
        """A request's keep_alive for the model (None: back to the configured default)."""
        entry = self.entry(name)
        entry.keep_alive = seconds
        entry.last_used = time.monotonic()

    def keep_alive_of(self, entry: ModelEntry) -> float:
        if entry.keep_alive is not None:
            return entry.keep_alive
        configured = entry.spec.config.keep_alive
        return self.options.keep_alive if configured is None else configured

    def expires_in(self, entry: ModelEntry) -> float | None:
        """Seconds until an idle unload, None for never."""
        keep = self.keep_alive_of(entry)
        if keep < 0:
            return None
        return max(0.0, keep - (time.monotonic() - entry.last_used))

    def _busy(self, entry: ModelEntry) -> bool:
        """Requests in flight: in the engine, or acquired moments ago and not there yet."""
        model = entry.model
        if model is None:
            return False
        stats = model.engine.stats()
        if stats.running or stats.waiting:
            return True
        recent = time.monotonic() - entry.last_used < _ACQUIRE_GRACE_SECONDS
        return recent and entry.acquired > model.engine.submitted

    def _memory(self, entry: ModelEntry) -> int:
        """Bytes of a model's weights and KV cache: as loaded, else as estimated (the file's
        size where there is no estimate)."""
        if entry.model is not None and entry.model.engine.info.size_bytes:
            info = entry.model.engine.info
            return info.size_bytes + info.kv_bytes
        try:
            if self._footprint is not None:
                return self._footprint(entry.spec)
            return entry.spec.path.stat().st_size
        except (OSError, InferdError):  # a missing or broken file: its load will say so
            return 0

    async def _make_room(self, entry: ModelEntry, need: int, *, evict: bool) -> str | None:
        """Unload least recently used idle models until `entry` fits the limits.
        None when it fits, else why it does not."""
        budget, most = self.options.max_memory, self.options.max_loaded_models
        while True:
            loaded = [e for e in self._entries.values() if e.model is not None and e is not entry]
            over_count = most is not None and len(loaded) >= most
            used = sum(self._memory(e) for e in loaded)
            over_memory = budget is not None and used + need > budget
            if not (over_count or over_memory):
                return None
            limit = "max_loaded_models" if over_count else "max_memory"
            idle = sorted((e for e in loaded if not self._busy(e)), key=lambda e: e.last_used)
            if not evict:
                return f"{limit} is reached"
            if not idle:
                return f"{limit} is reached and every loaded model is busy"
            await self._unload(idle[0], f"least recently used, to make room for {entry.spec.name}")

    async def _reap_idle(self) -> None:
        """Unload models idle for longer than their keep_alive (never a busy one)."""
        while True:
            pause = 0.25
            for entry in list(self._entries.values()):
                left = None if entry.model is None else self.expires_in(entry)
                if left is None:
                    continue
                if left <= 0 and not self._busy(entry):
                    try:
                        await self._unload(entry, f"idle for {self.keep_alive_of(entry):g}s")
                    except Exception:  # the watcher must outlive one failed unload
                        log.exception("idle unload of %s failed", entry.spec.name)
                else:
                    pause = min(pause, max(left, 0.05))
            await asyncio.sleep(pause)

    # ---- copies and deletes (Ollama's /api/copy and /api/delete) -------------------------

    def copy(self, source: str, destination: str) -> ModelEntry:
        """Give `source`'s model the extra name `destination`, saved in the models
        directory so that it survives restarts."""
        entry = self.entry(source)
        target = (entry.base or entry.spec).name
        dest = _base_name(check_name(destination, param="destination"))
        fixed = {_base_name(n) for e in self._entries.values() for n in (e.base or e.spec).names}
        if dest in fixed or dest in self.options.model_map:
            if self._names.get(dest) == target:
                return entry
            raise InvalidRequest(
                f"'{dest}' is already the name of another model", param="destination"
            )
        if self.store is None:
            raise InvalidRequest("copies need a models directory (models_dir)", param="source")
        self.store.set_alias(dest, target)
        self._rescan(force=True)
        return entry

    async def delete(self, name: str) -> str:
        """Remove an alias made by `copy`, or a model file of the models directory (its
        aliases go with it). Bundled and configured models cannot be deleted."""
        key = _base_name(name)
        if self.store is not None and key in self.store.aliases():
            self.store.remove_aliases(alias=key)
            self._rescan(force=True)
            return "alias"
        entry = self.entry(name)
        base = entry.base or entry.spec
        if key in self.options.model_map:
            raise ProtectedModel(f"'{key}' is a name set in the settings (model_map)")
        if base.source != Source.DIRECTORY or self.store is None:
            what = "bundled" if base.source == Source.BUNDLED else "configured in the settings"
            raise ProtectedModel(f"The model '{base.name}' is {what} and cannot be deleted")
        if base.name == self.default_name:
            raise ProtectedModel(f"The model '{base.name}' is the default model")
        if entry.loading is not None and not entry.loading.done():
            await asyncio.gather(entry.loading, return_exceptions=True)
        await self._unload(entry, "deleted")
        self.store.remove_file(base.path)
        self.store.remove_aliases(target=base.name)
        self._entries.pop(base.name, None)
        self._rescan(force=True)
        log.info("model %s deleted", base.name)
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

    # ---- lifecycle -------------------------------------------------------------------------

    async def load_all(self) -> None:
        """Load the default model, then the other configured ones while they fit the
        limits (the rest, and the models directory's, load on demand), one after another,
        off the event loop. Failures are kept. Starts the idle-unload watcher."""
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap_idle())
        default = self._entries[self.default_name]
        for entry in [default, *(e for e in self._entries.values() if e is not default)]:
            if entry is default or entry.spec.source != Source.DIRECTORY:
                await self._start_load(entry)

    async def _load(self, entry: ModelEntry, *, evict: bool) -> None:
        async with self._load_lock:
            if entry.model is not None:  # loaded meanwhile
                entry.status = ModelStatus.READY
                return
            # the estimate parses the GGUF header (~30 ms here): off the event loop
            budget, need = self.options.max_memory, await asyncio.to_thread(self._memory, entry)
            if budget is not None and need > budget:  # never fits: a failed load, not a wait
                entry.status = ModelStatus.FAILED
                entry.error = (
                    f"its weights and KV cache ({need} bytes) exceed max_memory ({budget} "
                    "bytes); a smaller n_ctx, max_seqs or kv_cells shrinks the KV cache"
                )
                log.error("model %s cannot load: %s", entry.spec.name, entry.error)
                return
            why = await self._make_room(entry, need, evict=evict)
            if why is not None:
                entry.status = ModelStatus.UNLOADED
                entry.error = why if evict else None
                log.info("model %s not loaded: %s", entry.spec.name, why)
                return
            await self._load_now(entry, need)

    async def _load_now(self, entry: ModelEntry, need: int) -> None:
        spec = entry.spec
        started = time.perf_counter()
        log.info("loading model %s (%d MB)", spec.name, need // 1_000_000)
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
            prefix_cache=cfg.prefix_cache,
            prefix_cache_bytes=cfg.prefix_cache_mb << 20,
        )
        engine.start()
        entry.model = LoadedModel(spec, engine, template)
        entry.status = ModelStatus.READY
        entry.error = None
        entry.load_seconds = time.perf_counter() - started
        facts = engine.facts()
        entry.metadata = facts.get("metadata", {})
        entry.n_params = info.n_params
        entry.last_used = time.monotonic()
        entry.acquired = 0
        log.info(
            "model %s ready in %.2fs (context %d, %d slots, %s)",
            spec.name,
            time.perf_counter() - started,
            info.n_ctx,
            info.max_seqs,
            ", ".join(f"{k} {v}" for k, v in facts.items() if k != "metadata"),
        )

    def _finished(self, model: str, output: GenerationOutput, seconds: float) -> None:
        entry = self._entries.get(model)
        if entry is not None:
            entry.last_used = time.monotonic()
        if self.on_finish is not None:
            self.on_finish(model, output, seconds)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        for entry in list(self._entries.values()):
            if entry.loading is not None and not entry.loading.done():
                await asyncio.gather(entry.loading, return_exceptions=True)
            await self._unload(entry, "shutting down")
