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
    code = "model_not_found"


class ModelNotReady(InferdError):
    """The model exists but is still loading (or failed to load)."""

    code = "model_not_ready"


class Overloaded(InferdError):
    code = "overloaded"


class EngineStopped(InferdError):
    code = "engine_stopped"


class BackendError(InferdError):
    code = "backend_error"


class ConfigError(InferdError):
    code = "config_error"


class StoreUnavailable(InferdError):
    """The usage and conversation store is not configured or cannot answer."""

    code = "store_unavailable"
