"""What the registry knows of one served model: its state, and the engine while loaded."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from functools import cached_property

from inferd.engine.client import EngineClient
from inferd.models.chat_template import ChatTemplate
from inferd.models.progress import LoadProgress
from inferd.models.spec import ModelSpec
from inferd.models.tool_formats import ToolSupport, tool_support


class ModelStatus(enum.StrEnum):
    LOADING = "loading"
    CONVERTING = "converting"  # a Hugging Face checkpoint becoming a GGUF file, then loading
    READY = "ready"
    FAILED = "failed"
    UNLOADED = "unloaded"


@dataclass
class LoadedModel:
    """A started engine with what serving it needs, as an engine factory made it."""

    spec: ModelSpec
    engine: EngineClient
    template: ChatTemplate
    memory: int = 0  # bytes it holds: weights and KV cache (what max_memory counts)
    metadata: dict[str, str] = field(default_factory=dict)  # the model file's, for /api/show
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def tools(self) -> ToolSupport | None:
        """How it calls tools (chosen once, from its settings and template); None: it
        serves no tools."""
        config = self.spec.config
        return tool_support(
            config.tool_format,
            self.template.source,
            exclude_when_none=config.exclude_tools_when_tool_choice_none,
        )


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
    progress: LoadProgress | None = None  # how far a conversion or a load is, where known
    memory_estimate: int = 0  # bytes the current or last load was estimated to take
    # what the last load (or a read of the file's header) learnt, kept after an unload
    metadata: dict[str, str] = field(default_factory=dict)
    n_params: int = 0
    array_lengths: dict[str, int] = field(default_factory=dict)
    described: tuple[int, int] | None = None  # (size, mtime) of the file described
    # the spec as configured or found; `spec` adds the aliases from copies and model_map
    base: ModelSpec | None = None
    # residency (kept by ResidencyPolicy, on its clock)
    last_used: float = 0.0
    keep_alive: float | None = None  # set by a request (Ollama's keep_alive); None: default
    acquired: int = 0  # requests that acquired the current load (see ResidencyPolicy.busy)
    in_use: int = 0  # requests using it outside its engine's queue (embeddings, tokenizer)
