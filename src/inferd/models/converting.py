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
from inferd.models.convert_cache import CacheEntry, ConvertCache, gguf_bytes
from inferd.models.engines import EngineFactory
from inferd.models.entry import LoadedModel
from inferd.models.progress import ProgressCallback, from_thread, logging_progress
from inferd.models.spec import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_QUANT = "f16"


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
        entry = await asyncio.to_thread(self.convert, spec, from_thread(on_progress))
        model = await self._gguf.load(served_spec(spec, entry.path), on_finish=on_finish)
        # the registry knows the model by its checkpoint: keep that spec, and say what it was
        model.metadata = {**model.metadata, "inferd.converted_from": entry.source}
        return dataclasses.replace(model, spec=spec)

    def convert(self, spec: ModelSpec, report: ProgressCallback | None = None) -> CacheEntry:
        """The checkpoint's cached GGUF, converted first when no earlier run did (blocking)."""
        ckpt = checkpoint.inspect(spec.path)
        progress = logging_progress(log, spec.name, report)
        return self.cache.get_or_convert(ckpt, self.quant(spec), on_progress=progress)

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
