"""Talking to a running inferd server over HTTP, through its public API only.

Where the server is: `INFERD_HOST` (read as the `host` setting, as `inferd serve` reads it) may
be a host, `host:port` or a URL, as `OLLAMA_HOST` is for `ollama`; the port is otherwise the
`port` setting. A wildcard listening address (0.0.0.0, ::) is reached on loopback.
`INFERD_API_KEY` is sent as a Bearer token when set.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from inferd.config import Settings

API_KEY_ENV = "INFERD_API_KEY"


class ServerError(Exception):
    """The server answered an error (its message, in any dialect's shape), or none answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Unreachable(ServerError):
    """No server answers at the URL."""


def server_url(settings: Settings) -> str:
    """The base URL of the server the settings describe."""
    host = settings.host.strip()
    scheme = "https" if settings.ssl_certfile else "http"
    port: int | None = settings.port
    if "://" in host:
        parts = urlsplit(host)
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or settings.port
    elif host.startswith("["):  # [::1]:8000
        name, _, rest = host[1:].partition("]")
        host, port = name, int(rest[1:]) if rest.startswith(":") else settings.port
    elif host.count(":") == 1:  # host:port (more colons: a bare IPv6 address)
        name, _, number = host.partition(":")
        host, port = name, int(number) if number else settings.port
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def is_local(url: str) -> bool:
    """The URL names this machine (a server could be started here for it)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or f"HTTP {response.status_code}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    if response.status_code == 401:
        return f"{error or 'unauthenticated'} (set {API_KEY_ENV} to an API key of the server)"
    return str(error or body)


def model_path(name: str) -> str:
    """A model name as one path segment of the native routes."""
    return quote(name, safe="")


class Client:
    """Blocking calls to one server; every error is a ServerError with the server's words."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        self.url = url
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=url, headers=headers, timeout=httpx.Timeout(timeout, connect=5.0)
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def alive(self) -> bool:
        """A server answers at the URL (whatever it says)."""
        try:
            self._http.get("/health/live", timeout=2.0)
        except httpx.HTTPError:
            return False
        return True

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded JSON answer (None for an empty one)."""
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach an inferd server at {self.url} ({exc})") from None
        if response.status_code >= 400:
            raise ServerError(_message(response), response.status_code)
        return response.json() if response.content else None

    @contextlib.contextmanager
    def stream(self, path: str, body: Any) -> Iterator[Iterator[dict[str, Any]]]:
        """The NDJSON objects of a streamed answer; leaving the block early closes the
        connection, which stops the generation on the server."""
        try:
            with self._http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ServerError(_message(response), response.status_code)
                yield _objects(response)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach an inferd server at {self.url} ({exc})") from None


def _objects(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if not line.strip():
            continue
        item = json.loads(line)
        if "error" in item:
            raise ServerError(str(item["error"]))
        yield item
