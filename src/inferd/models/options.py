"""The registry's settings: naming rules, residency limits, how long a request waits for a load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from inferd.config import Settings
from inferd.models.spec import base_name


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
            allowed_models=None if allowed is None else frozenset(map(base_name, allowed)),
            model_map={base_name(k): v for k, v in settings.model_map.items()},
        )
