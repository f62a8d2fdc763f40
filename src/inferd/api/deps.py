"""Dependency aliases: what routes get from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from inferd.config import Settings
from inferd.models.registry import ModelRegistry


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
