"""Hugging Face checkpoints served through another engine factory: converted to GGUF (and
quantized) through the conversion cache on first load, then loaded like any GGUF file.

The conversion runs in a worker thread (the converter and quantizer themselves in child
processes), so the event loop and every other model's engine keep serving; its progress goes
to the load's `on_progress`, on the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

from inferd.engine.client import FinishHook
from inferd.errors import InferdError
from inferd.models import checkpoint
from inferd.models.convert import ConvertProgress, ProgressCallback
from inferd.models.convert_cache import CacheEntry, ConvertCache, gguf_bytes
from inferd.models.engines import EngineFactory
from inferd.models.entry import LoadedModel
from inferd.models.spec import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_QUANT = "f16"
_LOG_EVERY = 0.25  # log a conversion's progress at each quarter


class ConvertingFactory:
    """An EngineFactory for checkpoint folders: `cache` makes the GGUF, `gguf` serves it.
    A model's `quantize` setting picks the type, else `default_quant`."""

    def __init__(
        self, cache: ConvertCache, gguf: EngineFactory, *, default_quant: str | None = None
    ) -> None:
        self.cache = cache
        self._gguf = gguf
        self._default = default_quant or DEFAULT_QUANT

    def quant(self, spec: ModelSpec) -> str:
        return spec.config.quantize or self._default

    async def load(
        self,
        spec: ModelSpec,
        *,
        on_finish: FinishHook,
        on_progress: ProgressCallback | None = None,
    ) -> LoadedModel:
        loop = asyncio.get_running_loop()

        def report(p: ConvertProgress) -> None:  # in the worker thread
            if on_progress is not None:
                loop.call_soon_threadsafe(on_progress, p)

        entry = await asyncio.to_thread(self.convert, spec, report)
        model = await self._gguf.load(served_spec(spec, entry.path), on_finish=on_finish)
        # the registry knows the model by its checkpoint: keep that spec, and say what it was
        model.metadata = {**model.metadata, "inferd.converted_from": entry.source}
        return dataclasses.replace(model, spec=spec)

    def convert(self, spec: ModelSpec, report: ProgressCallback | None = None) -> CacheEntry:
        """The checkpoint's cached GGUF, converted first when no earlier run did (blocking)."""
        quant = self.quant(spec)
        logged = [-1.0]

        def progress(p: ConvertProgress) -> None:
            if p.phase != "done" and p.fraction >= logged[0] + _LOG_EVERY:
                logged[0] = p.fraction
                log.info("model %s: %s %d%%", spec.name, p.phase, round(p.fraction * 100))
            if report is not None:
                report(p)

        ckpt = checkpoint.inspect(spec.path)
        return self.cache.get_or_convert(ckpt, quant, on_progress=progress)

    def footprint(self, spec: ModelSpec) -> int:
        """The converted file's footprint once it is cached, else the estimate of its size
        (reads headers and the hash memo: call it off the event loop)."""
        ckpt = checkpoint.inspect(spec.path)
        quant = self.quant(spec)
        try:
            found = self.cache.lookup(self.cache.key(ckpt, quant))
        except (OSError, InferdError):
            found = None
        if found is not None:
            return self._gguf.footprint(served_spec(spec, found.path))
        return gguf_bytes(ckpt, quant)


def served_spec(spec: ModelSpec, gguf: Path) -> ModelSpec:
    """`spec` with its checkpoint folder replaced by the GGUF file made from it."""
    config = spec.config.model_copy(update={"path": gguf})
    return dataclasses.replace(spec, path=gguf, config=config)
