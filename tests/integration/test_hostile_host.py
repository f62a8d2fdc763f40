"""Host header edge cases on a loopback server (issue 23 item 6): the header must be exactly
one authority (a name or IPv4 address, or a bracketed IPv6 address as a whole, then an optional
port), present once, and present at all in HTTP/1.1; anything else is a 400 invalid_host."""

from __future__ import annotations

from typing import Any

import pytest

from inferd.api.guard import host_name
from tests.conftest import FakeFactory

REFUSED = [
    "[::1].evil.com",
    "[::1]evil",
    "[::1]:8000.evil.com",
    "[::1",
    "[evil.com]",
    "[127.0.0.1]",
    "::1",
    "localhost:80:80",
    "localhost:8o",
    "localhost:123456",
    "localhost evil.com",
    "localhost/evil",
    "user@localhost",
    "localhost%2e",
    ":8000",
]
ACCEPTED = ["127.0.0.1:8000", "localhost", "[::1]:8000", "[::1]", "localhost:", "LocalHost:1"]


async def status(app: Any, headers: list[tuple[bytes, bytes]], http_version: str = "1.1") -> int:
    """Call the app as the server would, with exactly these headers (no client adds any)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": http_version,
        "method": "GET",
        "scheme": "http",
        "path": "/v1/models",
        "raw_path": b"/v1/models",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


@pytest.mark.parametrize("host", REFUSED)
async def test_hosts_that_are_not_one_authority_are_refused(
    fake_app: FakeFactory, host: str
) -> None:
    assert host_name(host) is None
    async with fake_app() as h:
        r = await h.client.get("/v1/models", headers={"Host": host})
        assert r.status_code == 400, host
        assert r.json()["error"]["code"] == "invalid_host"


@pytest.mark.parametrize("host", ACCEPTED)
async def test_valid_loopback_authorities_are_accepted(fake_app: FakeFactory, host: str) -> None:
    async with fake_app() as h:
        assert (await h.client.get("/v1/models", headers={"Host": host})).status_code == 200


async def test_two_host_headers_are_refused_even_when_both_are_loopback(
    fake_app: FakeFactory,
) -> None:
    async with fake_app() as h:
        ok = [(b"host", b"localhost")]
        assert await status(h.app, ok) == 200
        assert await status(h.app, [(b"host", b"localhost"), (b"host", b"evil.com")]) == 400
        assert await status(h.app, [(b"host", b"evil.com"), (b"host", b"localhost")]) == 400
        assert await status(h.app, [(b"host", b"localhost"), (b"host", b"localhost")]) == 400


async def test_a_missing_host_is_refused_in_http_1_1_only(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        assert await status(h.app, [], http_version="1.1") == 400
        assert await status(h.app, [], http_version="1.0") == 200


async def test_a_server_beyond_loopback_checks_no_host(fake_app: FakeFactory) -> None:
    from inferd.config import Settings

    async with fake_app(Settings(host="0.0.0.0", insecure=True)) as h:
        assert await status(h.app, [(b"host", b"[::1]evil")]) == 200


@pytest.mark.parametrize(
    "path",
    ["/v1/models/fake%0A", "/v1/models/fake%0D%0A", "/api/models/fake%0A", "/v1/models/fa%00ke"],
)
async def test_names_with_control_characters_never_resolve(
    fake_app: FakeFactory, path: str
) -> None:
    # issue 23 item 12b: Starlette's `$` matched before the final newline, so the model
    # route found "fake" in "fake\n" (200) while the same name in a body was a 404
    async with fake_app() as h:
        assert (await h.client.get("/v1/models/fake")).status_code == 200
        r = await h.client.get(path)
        assert r.status_code == 404, path
        error = r.json()["error"]  # in the dialect's shape: Ollama's is a string
        assert (
            isinstance(error, str)
            if path.startswith("/api/")
            else error["type"] == "not_found_error"
        )
        r = await h.client.post(
            "/v1/chat/completions",
            json={"model": "fake\n", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 404
