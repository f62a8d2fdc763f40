"""The engine factory seam: how the registry gets a started engine for a model spec.

The registry knows engines only as `EngineClient`s made by an `EngineFactory`. A factory per
kind of engine: `BackendEngineFactory` runs inferd's own engine (scheduler, core thread) over a
`Backend` (llama.cpp, or PyTorch through transformers); a whole engine with its own scheduler
(vLLM) would be a factory of its own. `EngineFactories` picks one per spec with `engine_kind`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from inferd.engine.backends.base import Backend
from inferd.engine.client import AsyncEngine, FinishHook
from inferd.engine.speculative import NgramDrafter
from inferd.errors import ConfigError, InferdError
from inferd.models.chat_template import CHATML, ChatTemplate
from inferd.models.checkpoint import CONFIG, SUPPORTED_ARCHITECTURES, find
from inferd.models.entry import LoadedModel
from inferd.models.progress import ProgressCallback, from_thread
from inferd.models.spec import ModelSpec

log = logging.getLogger(__name__)

LLAMACPP = "llama.cpp"
TRANSFORMERS = "transformers"
CHECKPOINT = "hf-checkpoint"  # converted to GGUF (models/converting.py), then llama.cpp

BackendLoader = Callable[[ModelSpec], Backend]


class EngineFactory(Protocol):
    """Makes started engines of one kind (or picks the factory of the right kind)."""

    async def load(
        self,
        spec: ModelSpec,
        *,
        on_finish: FinishHook,
        on_progress: ProgressCallback | None = None,
    ) -> LoadedModel:
        """The model with its engine started, its chat template and its memory; blocking work
        runs off the event loop. Raises InferdError (a clean message) when it cannot load,
        having released whatever it had taken. Work before the load proper (a conversion)
        reports to `on_progress`, called on the event loop."""
        ...

    def footprint(self, spec: ModelSpec) -> int:
        """Bytes the model will take once loaded (weights and KV cache), estimated without
        loading it; may read the model's file (call it off the event loop)."""
        ...


def engine_kind(spec: ModelSpec, *, cuda: Callable[[], bool] = lambda: False) -> str:
    """The kind of engine that serves `spec`: the one place this is decided.

    The model's `backend` setting wins: `transformers` runs it on PyTorch; `llama.cpp` runs a
    GGUF file, or a Hugging Face checkpoint converted to GGUF first (CHECKPOINT). Otherwise
    (auto): a GGUF file runs on llama.cpp; a checkpoint runs on transformers when a CUDA device
    is present (`cuda`, asked only for a checkpoint) or when its architecture does not convert
    to GGUF, and is converted for llama.cpp otherwise.
    """
    backend = spec.config.backend
    if backend == TRANSFORMERS:
        return TRANSFORMERS
    folder = find(str(spec.path))
    if folder is None:
        return LLAMACPP
    if backend == "auto" and (cuda() or not convertible(folder)):
        return TRANSFORMERS
    return CHECKPOINT


def convertible(folder: Path) -> bool:
    """Whether a checkpoint's architecture converts to GGUF. An unreadable config counts as
    convertible: the conversion path inspects the checkpoint first and names what is wrong."""
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        return str(config["architectures"][0]) in SUPPORTED_ARCHITECTURES
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return True


class EngineFactories:
    """An EngineFactory that hands each spec to the factory of its kind (`resolve`)."""

    def __init__(
        self,
        kinds: Mapping[str, EngineFactory],
        resolve: Callable[[ModelSpec], str] = engine_kind,
    ) -> None:
        self._kinds = dict(kinds)
        self._resolve = resolve

    def _factory(self, spec: ModelSpec) -> EngineFactory:
        kind = self._resolve(spec)
        factory = self._kinds.get(kind)
        if factory is None:
            raise ConfigError(f"this server cannot run {kind} models ({spec.name})")
        return factory

    async def load(
        self,
        spec: ModelSpec,
        *,
        on_finish: FinishHook,
        on_progress: ProgressCallback | None = None,
    ) -> LoadedModel:
        return await self._factory(spec).load(spec, on_finish=on_finish, on_progress=on_progress)

    def footprint(self, spec: ModelSpec) -> int:
        return self._factory(spec).footprint(spec)


def _file_size(spec: ModelSpec) -> int:
    return spec.path.stat().st_size


class BackendEngineFactory:
    """inferd's own engine (`AsyncEngine`) over a Backend made by `backend`, for runtimes
    that run under inferd's scheduler. `footprint` estimates a model before loading it
    (default: its file's size)."""

    def __init__(
        self, backend: BackendLoader, footprint: Callable[[ModelSpec], int] = _file_size
    ) -> None:
        self._backend = backend
        self._footprint = footprint

    def footprint(self, spec: ModelSpec) -> int:
        return self._footprint(spec)

    async def load(
        self,
        spec: ModelSpec,
        *,
        on_finish: FinishHook,
        on_progress: ProgressCallback | None = None,
    ) -> LoadedModel:
        report = from_thread(on_progress)
        backend, template, memory = await asyncio.to_thread(self._prepare, spec, report)
        cfg = spec.config
        engine = AsyncEngine(
            backend,
            name=spec.name,
            on_finish=on_finish,
            prefix_cache=cfg.prefix_cache,
            prefix_cache_bytes=cfg.prefix_cache_mb << 20,
            drafter=(
                NgramDrafter(
                    cfg.speculative_max_draft, cfg.speculative_ngram_min, cfg.speculative_ngram_max
                )
                if cfg.speculative == "ngram"
                else None
            ),
        )
        engine.start()
        facts = engine.facts()
        runtime = ", ".join(f"{k} {v}" for k, v in facts.items() if k != "metadata")
        log.info("model %s: %s", spec.name, runtime)
        return LoadedModel(spec, engine, template, memory=memory, metadata=facts["metadata"])

    def backend(self, spec: ModelSpec, report: ProgressCallback) -> Backend:
        """The loaded backend (blocking, in a worker thread). `report` hears how far the
        load is, from runtimes that can tell (a subclass passes it on)."""
        return self._backend(spec)

    def _prepare(
        self, spec: ModelSpec, report: ProgressCallback
    ) -> tuple[Backend, ChatTemplate, int]:
        """In a worker thread: the backend, the model's chat template and its memory."""
        backend = self.backend(spec, report)
        try:
            return backend, chat_template(spec, backend), self._memory(spec, backend)
        except BaseException:
            backend.close()
            raise

    def _memory(self, spec: ModelSpec, backend: Backend) -> int:
        """What the backend holds: its weights and KV cells (the estimate where it cannot
        say)."""
        info = backend.info
        if info.size_bytes:
            return info.size_bytes + info.kv_bytes
        try:
            return self._footprint(spec)
        except (OSError, InferdError):
            return 0


def chat_template(spec: ModelSpec, backend: Backend) -> ChatTemplate:
    """The model's chat template: the configured one, else the one its file carries, else
    ChatML. Made where the model is loaded because only the runtime knows where its kind of
    model keeps a template (GGUF metadata here; a transformers model's tokenizer config), and
    so that a broken template fails the load, for every kind alike."""
    info = backend.info
    source = spec.config.chat_template or info.chat_template or CHATML
    return ChatTemplate(source, bos_token=info.bos_token, eos_token=info.eos_token)
