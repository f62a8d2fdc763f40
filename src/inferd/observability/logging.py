"""Logging for `inferd serve`: JSON lines or a pretty console, with the request id on every
line logged while a request is handled."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

LogFormat = Literal["auto", "json", "pretty"]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


@dataclass
class RequestContext:
    """What is known about the request being handled, filled in as it goes."""

    request_id: str
    dialect: str = ""
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generations: int = 0
    span: Any = None  # the request's OpenTelemetry span, when tracing is on
    started: float = field(default_factory=time.perf_counter)


# The request being handled by the current task (and the tasks it starts).
_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "inferd_request", default=None
)


def current_request() -> RequestContext | None:
    return _current.get()


def set_current_request(ctx: RequestContext | None) -> contextvars.Token[RequestContext | None]:
    return _current.set(ctx)


def reset_current_request(token: contextvars.Token[RequestContext | None]) -> None:
    _current.reset(token)


def sanitize_request_id(value: str | None) -> str:
    """The client's X-Request-ID when it is 1-128 of [A-Za-z0-9._-], else a new uuid4 hex."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (or "-") to every record passing through the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            ctx = _current.get()
            record.request_id = ctx.request_id if ctx is not None else "-"
        return True


# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
    "color_message",  # uvicorn's colored copy of the message
    "rid",  # set by PrettyFormatter
    "more",
}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "-")
        if request_id != "-":
            out["request_id"] = request_id
        out.update(_extras(record))
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class PrettyFormatter(logging.Formatter):
    """Human-readable lines for a terminal, with the request id and extras."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(rid)s: %(message)s%(more)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", "-")
        record.rid = f" [{request_id}]" if request_id != "-" else ""
        record.more = "".join(f" {k}={v}" for k, v in _extras(record).items())
        return super().format(record)


def choose_format(log_format: LogFormat, stream: TextIO) -> Literal["json", "pretty"]:
    if log_format != "auto":
        return log_format
    isatty = getattr(stream, "isatty", None)
    return "pretty" if isatty is not None and isatty() else "json"


def make_handler(log_format: LogFormat = "auto", stream: TextIO | None = None) -> logging.Handler:
    """A stream handler with the request id filter and the chosen formatter."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    fmt = choose_format(log_format, stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PrettyFormatter())
    return handler


def configure_logging(
    level: str = "info", log_format: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """Route every logger (uvicorn's too) through one handler on the root logger."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(make_handler(log_format, stream))
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
