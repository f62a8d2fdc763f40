"""The app a server runs, built from the settings: the registry, keys, limits and store.

`inferd serve` runs it under uvicorn in the foreground; `inferd run` runs it in a background
thread when no server is reachable (cli/local.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferd.config import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from inferd.models.registry import ModelRegistry
    from inferd.storage.store import Store


@dataclass(frozen=True)
class Launch:
    app: FastAPI
    registry: ModelRegistry
    store: Store  # its database engine is disposed by whoever runs the app, in its loop
    auth: bool  # API keys exist or require_auth is on


def tune_dir(settings: Settings) -> Path | None:
    """Where kernel choices measured on this machine are cached (None: tuning is off)."""
    return settings.data_dir / "tuning" if settings.tune_kernels else None


def build(settings: Settings, model_flags: dict[str, Any]) -> Launch:
    """Raises InferdError for settings that cannot be served (a missing file, bad values)."""
    from inferd.api.app import create_app
    from inferd.cli.keys import open_keys
    from inferd.models.loading import convert_cache, engine_factory, quantizer
    from inferd.models.registry import ModelRegistry, RegistryOptions
    from inferd.models.spec import specs_from_settings
    from inferd.models.store import ModelStore
    from inferd.models.workshop import Workshop
    from inferd.security.keys import KeyRing
    from inferd.security.limits import RateLimits
    from inferd.storage.repository import Repository
    from inferd.storage.store import Store

    registry = ModelRegistry(
        specs_from_settings(settings, model_flags),
        engine_factory(
            verbose=settings.llama_verbose,
            conversions=settings.convert_cache_dir,
            quantize=settings.quantize,
            tune_dir=tune_dir(settings),
            idle_tunes=settings.tune_when_idle,
        ),
        default=settings.default_model,
        options=RegistryOptions.from_settings(settings),
        store=ModelStore(settings.models_dir),
        model_overrides=model_flags,
    )

    async def any_keys() -> bool:
        async with open_keys(settings) as ring:
            return await ring.any_keys_now()

    has_keys = asyncio.run(any_keys())  # also creates or migrates the schema
    limits = RateLimits(settings.rate_limit_storage)
    # one database engine for the keys and the store: created here, first used in the
    # server's loop, where the app's lifespan starts the store and closes it (disposing it)
    store = Store.from_settings(settings)
    keys = KeyRing(Repository(store.engine), max_age=settings.key_cache_seconds)
    app = create_app(settings, registry, keys=keys, limits=limits, store=store, open_store=True)
    # what /api/pull and /api/create make models with
    app.state.workshop = Workshop(
        registry,
        convert_cache(settings.convert_cache_dir),
        quantizer(),
        default_quant=settings.quantize,
    )
    return Launch(app, registry, store, auth=settings.require_auth or has_keys)
