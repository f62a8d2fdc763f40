"""Which route a request reaches, decided once, before anything else reads it.

Every router declares its dialect (`dialect_router`); its routes carry it. `Routing`, the
outermost middleware, finds the route a request will reach (as the router will) and keeps it
in the scope, so the guard's errors, the error table, the access log, metrics and usage
records all read the same answer (`dialect_of`, `route_of`, `generates`). Nothing guesses a
dialect from the path.

A route generates (and gets a usage record) when its endpoint takes the request's record
(`RecordDep`): the route says so in its signature, there is no list of paths.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from inferd.api.record import RequestRecord

_ROUTE = "inferd.route"  # the scope key of the matched route


class Dialect(enum.StrEnum):
    OPENAI = "openai"
    OLLAMA = "ollama"
    NATIVE = "native"
    OPS = "ops"  # health, metrics, docs: any route that declares no dialect


async def record_of(request: Request) -> RequestRecord:
    """The request's record (routes that take it are generation routes)."""
    record: RequestRecord = request.state.record
    return record


RecordDep = Annotated[RequestRecord, Depends(record_of)]


class DialectRoute(APIRoute):
    """A route of a dialect; `generates` when its endpoint takes the request's record."""

    dialect: ClassVar[Dialect] = Dialect.OPS

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.generates = any(d.call is record_of for d in self.dependant.dependencies)


class OpenAIRoute(DialectRoute):
    dialect = Dialect.OPENAI


class OllamaRoute(DialectRoute):
    dialect = Dialect.OLLAMA


class NativeRoute(DialectRoute):
    dialect = Dialect.NATIVE


_ROUTE_CLASSES: dict[Dialect, type[DialectRoute]] = {
    Dialect.OPENAI: OpenAIRoute,
    Dialect.OLLAMA: OllamaRoute,
    Dialect.NATIVE: NativeRoute,
    Dialect.OPS: DialectRoute,
}


class Namespace(BaseRoute):
    """Paths under `prefix` that no route serves still belong to `dialect` (Ollama's
    `/api/`: its clients read errors as `{"error": "..."}`): a 404 in that shape. It only
    ever matches partially, after every real route, so a real route always wins (and a
    known path with another method stays a 405). Added last to the app's routes."""

    def __init__(self, prefix: str, dialect: Dialect) -> None:
        self.prefix = prefix
        self.dialect = dialect

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            return Match.PARTIAL, {}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise HTTPException(404, "Not Found")


def dialect_router(dialect: Dialect, **kwargs: Any) -> APIRouter:
    """A router whose routes speak `dialect`."""
    return APIRouter(route_class=_ROUTE_CLASSES[dialect], **kwargs)


def endpoints(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, with included routers flattened (FastAPI keeps an included router whole,
    as `original_router`; inferd includes its routers without a prefix)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from endpoints(inner.routes)
        else:
            yield route


def matched_route(routes: Iterable[BaseRoute], scope: Scope) -> BaseRoute | None:
    """The route the router will pick: the first full match, else the first partial one
    (a known path with another method: 405)."""
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial


def route_of(scope: Scope) -> str | None:
    """The matched route's template (`/v1/chat/completions`), never the raw URL."""
    path = getattr(scope.get(_ROUTE), "path", None)
    return path if isinstance(path, str) else None


def dialect_of(scope: Scope) -> Dialect | None:
    """The dialect of the request's route; None when no route matches."""
    route = scope.get(_ROUTE)
    if route is None:
        return None
    return route.dialect if isinstance(route, DialectRoute | Namespace) else Dialect.OPS


def generates(scope: Scope) -> bool:
    """Whether the request's route generates (and so gets a usage record)."""
    route = scope.get(_ROUTE)
    return isinstance(route, DialectRoute) and route.generates and scope["method"] == "POST"


class Routing:
    """Outermost middleware: keeps the matched route in the scope. Ollama routes read the
    body as JSON whatever its Content-Type (Ollama's own docs use `curl -d`, which sends a
    form type); the other dialects want JSON (or no type)."""

    def __init__(self, app: ASGIApp, *, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = routes
        self._flat: list[BaseRoute] | None = None  # the app's routes, read at the first request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self._flat is None:
                self._flat = list(endpoints(self.routes))
            scope[_ROUTE] = matched_route(self._flat, scope)
            if dialect_of(scope) is Dialect.OLLAMA:
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope["headers"] = [*headers, (b"content-type", b"application/json")]
        await self.app(scope, receive, send)
