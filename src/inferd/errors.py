"""Domain errors with a stable `code`. The API layer maps them to statuses in one table."""

from __future__ import annotations


class InferdError(Exception):
    """Base class: `code` is stable and machine-readable, `param` names the culprit."""

    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(InferdError):
    code = "invalid_request"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class ContextTooLong(InvalidRequest):
    code = "context_length_exceeded"


class ModelNotFound(InferdError):
    """No model by that name; `name` as the client sent it (cut for display), for dialects
    that word this error their own way."""

    code = "model_not_found"

    def __init__(self, message: str, *, param: str | None = None, name: str | None = None):
        super().__init__(message, param=param)
        self.name = name


class ModelNotReady(InferdError):
    """The model exists but is still loading (or failed to load)."""

    code = "model_not_ready"


class Unauthenticated(InferdError):
    """No key, a malformed Authorization header, or a wrong, revoked or expired key."""

    code = "invalid_api_key"


class PermissionDenied(InferdError):
    """The key is valid but may not do this (an admin route, a model not in its list)."""

    code = "permission_denied"


class RateLimited(InferdError):
    """A key's (or a client address's) own limit: requests, tokens or parallel requests."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after


class Overloaded(InferdError):
    """The server is full: every request slot is taken and the queue is full."""

    code = "overloaded"


class EngineStopped(InferdError):
    code = "engine_stopped"


class GenerationInterrupted(EngineStopped):
    """A request's model was unloaded, or the server shut down, before its answer ended."""

    code = "generation_interrupted"


class BackendError(InferdError):
    code = "backend_error"


class ConfigError(InferdError):
    code = "config_error"


class InvalidModelFile(InferdError):
    """A file that is not a GGUF model (empty, truncated, garbage, absurd counts)."""

    code = "invalid_model_file"


class ProtectedModel(InferdError):
    """A model that may not be changed through the API (bundled or configured)."""

    code = "model_protected"


class PullFailed(InferdError):
    """A model could not be copied or downloaded into the models directory."""

    code = "pull_failed"


class StoreUnavailable(InferdError):
    """The usage and conversation store is not configured or cannot answer."""

    code = "store_unavailable"


class InvalidCheckpoint(InvalidModelFile):
    """A Hugging Face checkpoint that cannot be converted: no config, weights or tokenizer,
    garbage or truncated weights, a config that lies."""

    code = "invalid_checkpoint"


class UnsupportedArchitecture(InvalidCheckpoint):
    """A checkpoint whose architecture the converter or llama.cpp does not handle."""

    code = "unsupported_architecture"


class ConversionFailed(InferdError):
    """Converting or quantizing a model failed (the converter crashed or was killed, or the
    disk is too full)."""

    code = "conversion_failed"
