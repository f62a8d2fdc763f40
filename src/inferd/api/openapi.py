"""The OpenAPI document as the server behaves: the errors each operation may answer, in its
dialect's shape, and the media types of streamed answers.

FastAPI declares 200 and 422 for every route; inferd never answers 422 (a bad body is a 400,
api/errors.py), and its guard, pipeline and store add statuses no route declares. So the
document is rewritten once, from what each route is: every operation may get 400 (a Host
header that is not allowed, a bad value) and 431 (headers too large); one that needs a key,
401, 403 and 429; one that reads a body, 408 and 413, and, with a body or a path parameter
naming a model or a conversation, 404 and 503 (loading, full, no store). A route declares
any other status it answers (`responses={503: ...}`) and gets the error schema here.
Streamed answers are declared where the route is (`SSE`, `NDJSON`). Kept true by
tests/integration/test_openapi_conformance.py (schemathesis over the whole document).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from inferd.api.routing import Dialect, DialectRoute, endpoints

# one server-sent event (as OpenAPI 3.1 describes a stream: its `schema` is one event's)
_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "description": "a chunk's JSON, or [DONE]"}},
}
# the media types of a streamed answer: on the route's 200 beside its JSON answer, if any
SSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream: true` server-sent events: one `data:` line of "
        'JSON per chunk (an error after the stream began is an event `{"error": ...}`)',
        "content": {"text/event-stream": {"schema": _EVENT}},
    }
}
NDJSON: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON with `stream: false`; streamed by default: one JSON object a "
        'line (an error after the stream began is a last line `{"error": "..."}`)',
        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
    }
}
# a route without a body that names a model in its query (GET /tokenizer_info?model=)
MODEL_QUERY: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such model"},
    503: {"description": "the model is loading (Retry-After)"},
}
# a route of the store (usage, conversations): 503 when the server keeps none
STORE: dict[int | str, dict[str, Any]] = {
    503: {"description": "the server keeps no usage or conversation store, or it cannot answer"}
}

_DESCRIPTIONS = {
    400: "a bad request: a value out of range, a malformed body, a Host header not allowed",
    401: "no key, or a wrong, revoked or expired one",
    403: "the key may not do this (an admin route, a model outside its list)",
    404: "no such model (or conversation)",
    408: "the body did not arrive within request_timeout",
    413: "the body is larger than max_body_bytes",
    429: "the key's own limit (Retry-After, x-ratelimit-*)",
    431: "the request headers are larger than max_header_bytes",
    503: "the model is loading, the server is full, or the answer was cut off (Retry-After)",
}

_OPENAI_ERROR = "Error"
_OLLAMA_ERROR = "OllamaError"
_NULLABLE_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}
_SCHEMAS = {
    _OPENAI_ERROR: {
        "title": "Error",
        "description": "An error in the OpenAI and native dialects (and of routes of none)",
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": _NULLABLE_STRING,
                    "code": _NULLABLE_STRING,
                },
            }
        },
    },
    _OLLAMA_ERROR: {
        "title": "OllamaError",
        "description": "An error on Ollama's routes",
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
}


def install_openapi(app: FastAPI, public: frozenset[str] | set[str]) -> None:
    """Serve the rewritten document at /openapi.json; `public`: paths that need no key."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app, public)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document(app: FastAPI, public: frozenset[str] | set[str]) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for route in endpoints(app.routes):
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        operations = doc["paths"].get(route.path_format, {})
        for method in route.methods or ():
            operation = operations.get(method.lower())
            if operation is not None:
                _declare_errors(operation, route, route.path in public)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(_SCHEMAS)
    return doc


def _declare_errors(operation: dict[str, Any], route: APIRoute, public: bool) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)
    statuses = {400, 431}
    if not public:
        statuses |= {401, 403, 429}
    if route.body_field is not None:
        statuses |= {408, 413}
    if route.body_field is not None or route.param_convertors:
        statuses |= {404, 503}
    dialect = route.dialect if isinstance(route, DialectRoute) else Dialect.OPS
    error = _OLLAMA_ERROR if dialect is Dialect.OLLAMA else _OPENAI_ERROR
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{error}"}}}
    for code in statuses:
        responses.setdefault(str(code), {"description": _DESCRIPTIONS[code]})
    for status, response in responses.items():
        if status.isdigit() and int(status) >= 400:
            response.setdefault("content", content)
