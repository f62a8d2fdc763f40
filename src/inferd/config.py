"""Settings: one pydantic-settings model read from INFERD_* variables, a TOML file and CLI flags.

Precedence, highest first: CLI flags, environment variables, the TOML file, defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from inferd.errors import ConfigError


class ModelConfig(BaseModel):
    """One model to serve."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="Path to a .gguf file")
    name: str | None = Field(None, description="Name clients use (default: the file's stem)")
    aliases: list[str] = Field(default_factory=list, description="Other names for this model")
    n_ctx: int = Field(4096, ge=16, description="Context window of one sequence, in tokens")
    kv_cells: int | None = Field(
        None, ge=16, description="KV cache cells shared by all sequences (default: sized to slots)"
    )
    max_seqs: int = Field(16, ge=1, le=256, description="Sequences decoded together per step")
    n_batch: int = Field(256, ge=16, description="Tokens per engine step (chunked prefill budget)")
    prefill_per_decode: int | None = Field(
        None,
        ge=0,
        description="Prompt tokens per decoding sequence in a mixed step (default: 2 on CPU, "
        "no cap with GPU offload; 0: no cap)",
    )
    prefix_cache: bool = Field(True, description="Reuse cached KV of earlier prompts' prefixes")
    n_threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores)")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers to offload to the GPU (-1: all)")
    chat_template: str | None = Field(
        None, description="Jinja chat template overriding the one in the GGUF metadata"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="INFERD_", extra="ignore", env_nested_delimiter="__"
    )

    host: str = Field("127.0.0.1", description="Address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on")
    ollama_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Also listen on this port (11434 for Ollama tools), same routes",
    )
    models: list[ModelConfig] = Field(
        default_factory=list,
        description="Models to serve; empty serves the bundled SmolLM2-135M-Instruct",
    )
    default_model: str | None = Field(
        None, description="Model used when a request names none (default: the first one)"
    )
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Default temperature")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Default top_p")
    top_k: int = Field(40, ge=0, description="Default top_k (0 disables)")
    min_p: float = Field(0.05, ge=0.0, le=1.0, description="Default min_p")
    default_max_tokens: int | None = Field(
        None, ge=1, description="max_tokens when a request gives none (default: fill the context)"
    )
    max_tokens_limit: int | None = Field(
        None, ge=1, description="Hard cap: requests asking for more max_tokens get a 400"
    )
    max_n: int = Field(8, ge=1, le=128, description="Largest `n` (choices) a request may ask for")
    max_batch_choices: int = Field(
        64, ge=1, description="Most sequences one completions request may start (prompts x n)"
    )
    max_stop: int = Field(16, ge=0, description="Most stop strings per request")
    max_stop_length: int = Field(256, ge=1, description="Longest stop string, in characters")
    max_logit_bias: int = Field(1024, ge=0, description="Most logit_bias entries per request")
    drain_timeout: float = Field(
        30.0, ge=0, description="Seconds running requests get to finish on shutdown"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")
    log_format: Literal["auto", "json", "pretty"] = Field(
        "auto",
        description="Log lines as JSON or for a terminal; auto: pretty on a TTY, else JSON",
    )
    llama_verbose: bool = Field(False, description="Let llama.cpp print its own logs")
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("inferd")),
        description="Directory of the SQLite database and the usage spool file",
    )
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("INFERD_DATABASE_URL", "database_url", "DATABASE_URL"),
        description="Database for usage and conversations, e.g. postgresql://user:pw@host/db "
        "(also read from DATABASE_URL; default: SQLite file inferd.db in data_dir)",
    )
    spool_path: Path | None = Field(
        None,
        description="File holding usage records until the database has them "
        "(default: usage-spool.jsonl in data_dir)",
    )
    log_content: bool = Field(
        False,
        description="Store the conversation of every chat request, not only those with "
        "a session_id",
    )
    usage_retention_days: float | None = Field(
        None, gt=0, description="Delete usage records older than this many days (default: keep)"
    )
    content_retention_days: float | None = Field(
        None,
        gt=0,
        description="Delete stored conversation messages older than this many days (default: keep)",
    )
    retention_interval: float = Field(
        3600.0, gt=0, description="Seconds between two retention runs"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Build the settings from flags (`overrides`), the environment and an optional TOML file."""
    if config_file is None:
        return Settings(**overrides)  # type: ignore[arg-type]
    if not config_file.is_file():
        raise ConfigError(f"config file not found: {config_file}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    return FileSettings(**overrides)  # type: ignore[arg-type]
