"""The guard: a pure ASGI middleware in front of every route, on every listener (the
Ollama port serves the same app). In order: header size (431), declared body size (413), a
path with a control character (404), Host allowlist on loopback (400), authentication (401)
unless the path is public, the key's requests per minute and parallel requests or, without
keys, the client address's window (429), a time limit on receiving the body (408). Every
response of a limited key carries x-ratelimit-* headers.

Routes do the rest through `api.access`: model lists and admin routes (403), capacity (503)
and tokens per minute (429)."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import re
from collections.abc import Awaitable, Iterable

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.api.access import Ticket
from inferd.api.errors import domain_error_response, error_response
from inferd.errors import InferdError, Unauthenticated
from inferd.security.capacity import CapacityGate
from inferd.security.keys import KeyRing
from inferd.security.limits import RateLimits, Window

# Paths that never need a key (exact matches: `//health` or `/health/` are not public);
# /metrics joins them by the metrics_require_key setting (default: on loopback only).
PUBLIC_PATHS = frozenset({"/", "/health", "/health/live", "/health/ready"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# POSTs here upload a model's blob (Ollama's /api/blobs/:digest): gigabytes, no body limit
UPLOADS = "/api/blobs/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# a name (RFC 3986 reg-name, without percent-encoding) or an IPv4 address; a port of digits
_NAME = re.compile(r"[a-z0-9\-._~!$&'()*+,;=]+")
_PORT = re.compile(r"(:[0-9]{0,5})?")


def host_name(header: str) -> str | None:
    """The host in a Host header, without the port (`[::1]:8000` -> `::1`), or None when the
    header is not one authority: a name or an IPv4 address, or an IPv6 address in brackets
    as a whole, then an optional port (`[::1].evil.com`, `[::1]evil`, `::1`, `a b` are not)."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        host, port = value[1:end], value[end + 1 :]
        if end < 0 or not _is_ipv6(host):
            return None
    else:
        host = value.partition(":")[0]
        port = value[len(host) :]
        if not _NAME.fullmatch(host):
            return None
    return host if _PORT.fullmatch(port) else None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key from `Authorization: Bearer KEY` or `x-api-key: KEY`; Unauthenticated for a
    malformed header (another scheme, spaces or control characters in the key)."""
    auth = api_key = None
    for k, v in headers:
        if k == b"authorization":
            auth = v.decode("latin-1")
        elif k == b"x-api-key":
            api_key = v.decode("latin-1")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthenticated("Use 'Authorization: Bearer YOUR_KEY' or an x-api-key header")
        return _clean(token)
    if api_key is not None:
        return _clean(api_key)
    return None


def _clean(token: str) -> str:
    if not token or not token.isprintable() or any(c.isspace() for c in token):
        raise Unauthenticated("Malformed API key")
    return token


def _reset(seconds: float) -> bytes:
    return f"{math.ceil(seconds)}s".encode()


def ratelimit_headers(requests: Window | None, tokens: Window | None) -> list[tuple[bytes, bytes]]:
    out = []
    for kind, w in (("requests", requests), ("tokens", tokens)):
        if w is not None:
            out += [
                (f"x-ratelimit-limit-{kind}".encode(), str(w.limit).encode()),
                (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, w.remaining)).encode()),
                (f"x-ratelimit-reset-{kind}".encode(), _reset(w.reset)),
            ]
    return out


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyRing,
        limits: RateLimits,
        gate: CapacityGate,
        require_auth: bool,
        host: str,
        allowed_hosts: Iterable[str] = (),
        public: frozenset[str],
        max_header_bytes: int,
        max_body_bytes: int,
        body_timeout: float,
        client_calls: int | None,
        client_seconds: int,
    ) -> None:
        self.app = app
        self.keys = keys
        self.limits = limits
        self.gate = gate
        self.require_auth = require_auth
        self.check_host = is_loopback(host)
        self.allowed_hosts = LOOPBACK_NAMES | {h.lower() for h in allowed_hosts}
        self.public = public
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.client_calls = client_calls
        self.client_seconds = client_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        headers = scope["headers"]
        if sum(len(k) + len(v) + 4 for k, v in headers) > self.max_header_bytes:
            await error_response(request, 431, "Request headers too large")(scope, receive, send)
            return
        upload = scope["path"].startswith(UPLOADS) and scope["method"] == "POST"
        if self._declared_length(headers) > self.max_body_bytes and not upload:
            # refused before reading a byte; a chunked body is counted as it arrives
            await error_response(request, 413, "Content Too Large")(scope, receive, send)
            return
        if not scope["path"].isprintable():
            # no route or name holds a control character; Starlette's path patterns end in
            # `$`, which matches before a final newline: /v1/models/NAME%0A would find NAME
            message = f"No route {scope['method']} {scope['path'][:200]!r}"
            await error_response(request, 404, message)(scope, receive, send)
            return
        if self.check_host and not self._host_allowed(scope):
            await error_response(request, 400, "Invalid Host header", code="invalid_host")(
                scope, receive, send
            )
            return
        ticket = Ticket(None, self.limits, self.gate)
        scope.setdefault("state", {})
        scope["state"]["ticket"] = ticket
        scope["state"]["key_id"] = None

        async def start_with_limits(message: Message) -> None:
            if ticket.principal is not None:
                if ticket.tokens is None and ticket.principal.tpm is not None:
                    ticket.tokens = await self.limits.tokens(ticket.principal)
                extra = ratelimit_headers(ticket.requests, ticket.tokens)
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            elif ticket.requests is not None:
                extra = ratelimit_headers(ticket.requests, None)
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        def send_with_limits(message: Message) -> Awaitable[None]:
            # the body's writes go straight on: no coroutine of their own
            if message["type"] == "http.response.start":
                return start_with_limits(message)
            return send(message)

        try:
            try:
                await self._admit(ticket, scope)
            except InferdError as exc:
                await domain_error_response(request, exc)(scope, receive, send_with_limits)
                return
            await self.app(scope, self._limited(receive, upload=upload), send_with_limits)
        finally:
            # a cancelled request (shutdown, client gone) still gives its share back
            await asyncio.shield(ticket.close())

    @staticmethod
    def _declared_length(headers: list[tuple[bytes, bytes]]) -> int:
        for k, v in headers:
            if k == b"content-length":
                return int(v) if v.isdigit() else 0
        return 0

    def _host_allowed(self, scope: Scope) -> bool:
        """Exactly one Host header naming an allowed host; none only in HTTP/1.0 (nothing
        there for a rebinding attack to use; HTTP/1.1 requires one)."""
        hosts = [v for k, v in scope["headers"] if k == b"host"]
        if not hosts:
            return scope.get("http_version") == "1.0"
        name = host_name(hosts[0].decode("latin-1")) if len(hosts) == 1 else None
        return name is not None and name in self.allowed_hosts

    async def _admit(self, ticket: Ticket, scope: Scope) -> None:
        path: str = scope["path"]
        ticket.auth = self.require_auth or await self.keys.any_keys_now()
        if path in self.public and scope["method"] in ("GET", "HEAD"):
            return
        if not ticket.auth:
            client = scope.get("client")
            if self.client_calls is not None and client:
                args = (client[0], self.client_calls, self.client_seconds)
                try:
                    ticket.requests = await self.limits.hit_client(*args)
                except InferdError:
                    ticket.requests = await self.limits.client(*args)
                    raise
            return
        secret = presented_key(scope["headers"])
        if secret is None:
            raise Unauthenticated(
                "Missing API key: send 'Authorization: Bearer YOUR_KEY' or 'x-api-key'"
            )
        principal = await self.keys.verify(secret)
        ticket.principal = principal
        scope["state"]["key_id"] = principal.key_id
        # parallel first: a request refused for it does not use up a request of the minute
        ticket.running = await self.limits.enter(principal)
        if principal.rpm is not None:
            try:
                ticket.requests = await self.limits.hit_requests(principal)
            except InferdError:
                ticket.requests = await self.limits.requests(principal)
                raise

    def _limited(self, receive: Receive, *, upload: bool = False) -> Receive:
        """`receive` with a size limit (413) and a deadline (408) for the whole body. The
        HTTPExceptions raised here reach the app's error handler through FastAPI's body
        reading, so they answer in the dialect's shape. An upload (a model's blob, already
        admitted: its route needs an admin key) has no size limit, and its deadline is for
        each part of the body, not the whole."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        done = False
        size = 0

        async def limited() -> Message:
            nonlocal done, size, deadline
            if done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, "The request body was not received in time") from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_body_bytes and not upload:
                    raise HTTPException(413, "Content Too Large")
                if upload:
                    deadline = loop.time() + self.body_timeout
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        return limited
