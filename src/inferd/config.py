"""Settings: one pydantic-settings model read from INFERD_* variables, a TOML file and CLI flags.

Precedence, highest first: CLI flags, environment variables, the TOML file, defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import (
    AliasChoices,
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from inferd.errors import ConfigError

# llama.cpp's llama_model_kv_override holds a key and a string value in 128-byte buffers
# (NUL-terminated): longer ones cannot be passed.
KV_OVERRIDE_MAX_BYTES = 127
KvOverrideValue = StrictBool | StrictInt | StrictFloat | StrictStr
# KV cache element types llama.cpp's CPU and GPU kernels take for K and V
KvCacheType = Literal["f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]

# The types a model can be quantized to, by llama.cpp's names (llama_ftype
# LLAMA_FTYPE_MOSTLY_<NAME>; the quantizer in engine/backends/llamacpp writes them).
QUANT_TYPES = (
    "f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q5_1",
    "q4_k_m", "q4_k_s", "q4_0", "q4_1", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k",
    "iq4_nl", "iq4_xs",
)  # fmt: skip
# mistral.rs's ISQ names (LLM_ISQ_TYPE=Q4K, Q4_K, ...) for the K-quants: their medium variant
_ISQ_NAMES = {"q2k": "q2_k", "q3k": "q3_k_m", "q4k": "q4_k_m", "q5k": "q5_k_m", "q6k": "q6_k"}
_FALSE = ("0", "false", "no", "off")


def quant_type(text: str) -> str:
    """`text` as one of QUANT_TYPES: any case, and mistral.rs's names (Q4K, Q4_K: q4_k_m).
    ValueError naming the types for anything else."""
    name = text.strip().lower()
    name = _ISQ_NAMES.get(name.replace("_", ""), name) if name not in QUANT_TYPES else name
    if name not in QUANT_TYPES:
        raise ValueError(f"unknown quantization type {text!r}; one of {', '.join(QUANT_TYPES)}")
    return name


def _quant_or_none(value: object) -> object:
    return quant_type(value) if isinstance(value, str) else value


class ModelConfig(BaseModel):
    """One model to serve."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(
        description="Path to a .gguf file, `org/repo:file.gguf` in the Hugging Face cache, or "
        "a Hugging Face checkpoint folder"
    )
    backend: Literal["auto", "llama.cpp", "transformers"] = Field(
        "auto",
        description="Runtime that serves the model. auto: llama.cpp for a GGUF file; for a "
        "Hugging Face checkpoint transformers when a CUDA device is present or its "
        "architecture does not convert to GGUF, else llama.cpp",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="transformers backend: weights and KV cache dtype (auto: float32 on a CPU, "
        "bfloat16 on a GPU that supports it, else float16)",
    )
    device: str | None = Field(
        None,
        pattern=r"^(cpu|cuda(:\d+)?|mps)$",
        description="transformers backend: the torch device (default: cuda when present, else cpu)",
    )
    trust_remote_code: bool = Field(
        False,
        description="transformers backend: run the checkpoint's own Python code (a warning "
        "is logged; only for checkpoints you trust)",
    )
    name: str | None = Field(None, description="Name clients use (default: the file's stem)")
    aliases: list[str] = Field(default_factory=list, description="Other names for this model")
    n_ctx: int = Field(4096, ge=16, description="Context window of one sequence, in tokens")
    kv_cells: int | None = Field(
        None, ge=16, description="KV cache cells shared by all sequences (default: sized to slots)"
    )
    max_seqs: int = Field(16, ge=1, le=256, description="Sequences decoded together per step")
    kv_split: bool | None = Field(
        None,
        description="One KV cache stream per sequence slot instead of one shared cache: "
        "faster with many streams (each attends only over its own cells), but every slot "
        "holds at most kv_cells / max_seqs tokens (default kv_cells then n_ctx x max_seqs). "
        "Default: split on a CPU when n_ctx x max_seqs cells fit in 1/8 of the memory and "
        "kv_cells is not set, else shared",
    )
    n_batch: int | None = Field(
        None,
        ge=16,
        description="Tokens per engine step, the chunked prefill budget (default: 128 on CPU, "
        "512 with GPU offload; at least max_seqs)",
    )
    prefill_per_decode: int | None = Field(
        None,
        ge=0,
        description="Prompt tokens per decoding sequence in a mixed step (default: 1 on CPU, "
        "no cap with GPU offload; 0: no cap)",
    )
    prefix_cache: bool = Field(True, description="Reuse the KV state of earlier prompts' prefixes")
    prefix_cache_mb: int = Field(
        1024,
        ge=0,
        description="Host memory for finished requests' saved KV state, in MiB (least "
        "recently used dropped first)",
    )
    speculative: Literal["off", "ngram", "draft"] = Field(
        "off",
        description="Speculative decoding: ngram drafts the tokens that followed the last "
        "n-gram's earlier occurrence in the prompt or answer (prompt lookup), draft has a "
        "small model of the same vocabulary (speculative_draft) guess them; verified in the "
        "engine step, where worth their cost; the output is unchanged (llama.cpp only)",
    )
    speculative_draft: str | None = Field(
        None,
        description="Speculative decoding with speculative = draft: the draft model, a GGUF "
        "path (or org/repo:file in the Hugging Face cache) or a configured model's name",
    )
    speculative_max_draft: int = Field(
        8, ge=2, le=64, description="Speculative decoding: most draft tokens per step"
    )
    speculative_ngram_min: int = Field(
        2, ge=1, le=16, description="Speculative decoding: shortest n-gram looked up"
    )
    speculative_ngram_max: int = Field(
        4, ge=1, le=16, description="Speculative decoding: longest n-gram looked up (tried first)"
    )
    n_ctx_embed: int = Field(
        2048,
        ge=16,
        description="Longest embeddings input in tokens (capped by n_ctx); memory grows with it",
    )
    n_threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores)")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers to offload to the GPU (-1: all)")
    flash_attn: Literal["auto", "on", "off"] | None = Field(
        None,
        description="Flash attention (default on a CPU: measured once per machine and model "
        "when tune_kernels is on, else off; auto with GPU offload)",
    )
    cache_type_k: KvCacheType = Field(
        "f16", description="KV cache element type for keys (quantized types take less memory)"
    )
    cache_type_v: KvCacheType = Field(
        "f16",
        description="KV cache element type for values; a quantized one needs flash attention "
        "(turned on for this model unless flash_attn is set)",
    )
    chat_template: str | None = Field(
        None, description="Jinja chat template overriding the one in the GGUF metadata"
    )
    keep_alive: float | None = Field(
        None, description="Seconds idle before this model is unloaded (default: keep_alive)"
    )
    quantize: str | None = Field(
        None,
        description="A Hugging Face checkpoint is converted to GGUF at this type (q8_0, "
        "q4_k_m, f16, ...; default: the quantize setting)",
    )
    tool_format: Literal["auto", "hermes", "llama3", "mistral", "json", "off"] = Field(
        "auto",
        description="How the model writes tool calls (docs/api.md, Tools): auto reads it from "
        "the chat template (Hermes when the template takes no tools); off serves no tools",
    )
    exclude_tools_when_tool_choice_none: bool = Field(
        False,
        description="A request with tool_choice none tells the model no tools (vLLM's "
        "--exclude-tools-when-tool-choice-none); by default its tools are in the prompt as "
        "OpenAI has them, only the answer is left free",
    )
    thinking: bool | None = Field(
        None,
        description="The model writes its reasoning in a <think>...</think> section before "
        "the answer, shown apart from it (default: when its chat template writes <think>)",
    )
    kv_overrides: dict[str, KvOverrideValue] = Field(
        default_factory=dict,
        description="GGUF metadata overridden at load, key -> bool, int, float or string "
        "(e.g. {'tokenizer.ggml.fim_pre_token_id' = 3})",
    )

    _check_quantize = field_validator("quantize", mode="before")(_quant_or_none)

    @model_validator(mode="after")
    def _check_cache_types(self) -> ModelConfig:
        if self.cache_type_v not in ("f32", "f16") and self.flash_attn == "off":
            raise ValueError(
                f"cache_type_v = {self.cache_type_v!r} needs flash attention: "
                "flash_attn cannot be 'off'"
            )
        return self

    @model_validator(mode="after")
    def _check_ngrams(self) -> ModelConfig:
        if self.speculative_ngram_min > self.speculative_ngram_max:
            raise ValueError("speculative_ngram_min cannot be above speculative_ngram_max")
        if self.speculative == "draft" and not self.speculative_draft:
            raise ValueError("speculative = 'draft' needs speculative_draft (the draft model)")
        return self

    @field_validator("kv_overrides", mode="before")
    @classmethod
    def _check_kv_overrides(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value  # pydantic says it is not a table
        for key, v in value.items():
            if not isinstance(key, str):
                raise ValueError("kv_overrides keys must be strings")
            if not isinstance(v, bool | int | float | str):
                raise ValueError(
                    f"kv_overrides[{key[:60]!r}] must be a bool, an integer, a float or a "
                    f"string, not {type(v).__name__}"
                )
            if not key or len(key.encode()) > KV_OVERRIDE_MAX_BYTES:
                raise ValueError(
                    f"kv_overrides key {key[:40]!r} must be 1 to {KV_OVERRIDE_MAX_BYTES} bytes"
                )
            if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
                raise ValueError(f"kv_overrides[{key!r}] does not fit a 64-bit integer")
            if isinstance(v, str) and len(v.encode()) > KV_OVERRIDE_MAX_BYTES:
                raise ValueError(
                    f"kv_overrides[{key!r}] is longer than {KV_OVERRIDE_MAX_BYTES} bytes"
                )
        return value


def default_models_dir() -> Path:
    """$XDG_DATA_HOME/inferd/models, else ~/.local/share/inferd/models."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "inferd" / "models"


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
    models_dir: Path = Field(
        default_factory=default_models_dir,
        description="Directory scanned for .gguf files (served by file name) and holding "
        "aliases.json; `inferd models pull` writes here",
    )
    max_loaded_models: int | None = Field(
        None,
        ge=1,
        description="Most models loaded at once; the least recently used idle one "
        "is unloaded to make room (default: no limit)",
    )
    max_memory: ByteSize | None = Field(
        None,
        description="Memory budget for loaded models' weights and KV caches, e.g. '8GB'; "
        "least recently used idle models are unloaded to make room (default: no limit)",
    )
    keep_alive: float = Field(
        -1.0,
        description="Seconds a model stays loaded after its last request (negative: forever)",
    )
    allowed_models: list[str] | None = Field(
        None,
        description="Only these models are served (by name or alias); others are 404 "
        "(default: all)",
    )
    model_map: dict[str, str] = Field(
        default_factory=dict,
        description="Extra names for models, e.g. {'mistral:latest' = 'smollm2:135m'}",
    )
    quantize: str | None = Field(
        None,
        description="Type Hugging Face checkpoints are converted to when their model sets "
        "none (q8_0, q4_k_m, ...; default: f16). Without it, LLM_ISQ_TYPE is used unless "
        "LLM_ENABLE_ISQ is false",
    )
    convert_cache_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_cache_dir("inferd")) / "converted",
        description="Where converted Hugging Face checkpoints are kept (GGUF files by content)",
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
    max_embedding_inputs: int = Field(
        256, ge=1, description="Most inputs one embeddings request may hold"
    )
    drain_timeout: float = Field(
        30.0, ge=0, description="Seconds running requests get to finish on shutdown"
    )
    # ---- security: keys, limits, hardening ----------------------------------------------
    require_auth: bool = Field(
        False, description="Require an API key even before any key exists (on once one does)"
    )
    insecure: bool = Field(
        False, description="Allow serving on a non-loopback address without authentication"
    )
    ssl_certfile: Path | None = Field(None, description="TLS certificate (PEM): serve HTTPS")
    ssl_keyfile: Path | None = Field(None, description="TLS private key (PEM) for ssl_certfile")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (none by default)",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values accepted besides localhost, 127.0.0.1 and ::1 when "
        "bound to a loopback address (DNS rebinding defence)",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body; larger ones get a 413"
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Largest total size of request headers; larger: 431"
    )
    request_timeout: float = Field(
        60.0, gt=0, description="Seconds a client gets to send its request body; slower: 408"
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection gets to send a request's headers (a new connection, "
        "or the next request on a kept-alive one); slower: closed",
    )
    max_connections: int = Field(
        512, ge=1, description="Open client connections per listener; beyond: closed at once"
    )
    max_concurrent_requests: int | None = Field(
        64, ge=1, description="Generation requests running at once (none: no limit)"
    )
    max_queue: int = Field(
        64, ge=0, description="Generation requests waiting for a slot; beyond them: 503"
    )
    max_concurrent_renders: int = Field(
        2,
        ge=1,
        description="Prompt templates (a request's own, or a long conversation) rendering "
        "at once, each on a worker thread",
    )
    render_wait_timeout: float = Field(
        10.0, ge=0, description="Seconds a render waits for its turn; longer: 503"
    )
    rate_limit_storage: str = Field(
        "memory://",
        description="Where rate limits are counted: memory:// or a redis:// URL shared by replicas",
    )
    rate_limit_calls: int | None = Field(
        None, ge=1, description="Without keys: requests per client address per window"
    )
    rate_limit_seconds: int = Field(60, ge=1, description="The window of rate_limit_calls")
    metrics_require_key: bool | None = Field(
        None,
        description="/metrics needs an API key (default: public on loopback, else needs a key)",
    )
    key_cache_seconds: float = Field(
        5.0, ge=0, description="How stale the in-memory key cache may get (keys made elsewhere)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")
    log_format: Literal["auto", "json", "pretty"] = Field(
        "auto",
        description="Log lines as JSON or for a terminal; auto: pretty on a TTY, else JSON",
    )
    llama_verbose: bool = Field(False, description="Let llama.cpp print its own logs")
    tune_kernels: bool = Field(
        True,
        description="Measure at a CPU model's first load whether llama.cpp's flash attention "
        "is faster on this machine, when its flash_attn is not set (seconds; cached in "
        "data_dir/tuning); off: flash attention stays off on CPU",
    )
    tune_when_idle: int = Field(
        3,
        ge=0,
        description="How many times a flash attention pick that a load's measurement left "
        "open (within its noise) is measured again while the model is idle, until one "
        "settles and is stored for the next load (0: never; the probes' memory, up to 1 GB, "
        "is held while one runs)",
    )
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

    _check_quantize = field_validator("quantize", mode="before")(_quant_or_none)

    @model_validator(mode="after")
    def _isq_from_env(self) -> Settings:
        """The seed's mistral.rs settings, when `quantize` is set nowhere else."""
        isq_type = os.environ.get("LLM_ISQ_TYPE")
        enabled = os.environ.get("LLM_ENABLE_ISQ", "true").strip().lower() not in _FALSE
        if self.quantize is None and isq_type and enabled:
            self.quantize = quant_type(isq_type)
        return self

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
    """Build the settings from flags (`overrides`), the environment and an optional TOML file.

    Invalid values raise ConfigError naming each setting."""
    if config_file is None:
        cls = Settings
    elif not config_file.is_file():
        raise ConfigError(f"config file not found: {config_file}")
    else:

        class FileSettings(Settings):
            model_config = SettingsConfigDict(toml_file=config_file)

        cls = FileSettings
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
