"""Dependency aliases: what routes get from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from inferd.config import Settings
from inferd.errors import StoreUnavailable
from inferd.models.registry import ModelRegistry
from inferd.storage.store import Store


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def _store(request: Request) -> Store:
    store: Store | None = getattr(request.app.state, "store", None)
    if store is None:
        raise StoreUnavailable("this server keeps no usage or conversation store")
    return store


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
StoreDep = Annotated[Store, Depends(_store)]
