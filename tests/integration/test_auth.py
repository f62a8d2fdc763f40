"""Keys on every route: 401 without a valid key except on the public list, found by walking
the app's route table; 403 for admin routes and models outside a key's list; tricks with
paths and Host headers; CORS; keys never in logs (RELIABILITY.md 16-18, 20)."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from inferd.api.access import require_admin
from inferd.config import Settings
from inferd.security.keys import KeyRing, hash_key
from tests.conftest import AppHandle, FakeFactory

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
# Paths of management routes, whoever adds them: each must depend on require_admin.
# (/v1/conversations is not one: every key reaches its own sessions, see test_store.py.)
MANAGEMENT = re.compile(r"/(load|unload|pull|delete|copy|push|create|keys?|stats|admin)\b")


def routes(h: AppHandle) -> list[tuple[str, str, Any]]:
    """(method, concrete path, route) for every route of the app, HEAD-only ones included."""
    out = []
    for rc in iter_route_contexts(h.app.routes):
        path = re.sub(r"\{[^}]+\}", "fake", rc.path)
        methods = sorted(rc.methods or {"GET"})
        if "GET" in methods and "HEAD" in methods:
            methods.remove("HEAD")
        out += [(m, path, rc.original_route) for m in methods]
    assert len(out) > 25  # the walk found the app's routes
    return out


def is_admin_route(route: Any) -> bool:
    deps = getattr(getattr(route, "dependant", None), "dependencies", [])
    return any(d.call is require_admin for d in deps)


def keyring(h: AppHandle) -> KeyRing:
    keys: KeyRing = h.app.state.keys
    return keys


async def make_key(h: AppHandle, **kw: Any) -> str:
    new = await keyring(h).create(kw.pop("name", "test"), **kw)
    return new.secret


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def send(c: httpx.AsyncClient, method: str, path: str, **kw: Any) -> httpx.Response:
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return await c.request(method, path, json=body, **kw)


def assert_401(r: httpx.Response, path: str, method: str = "GET") -> None:
    assert r.status_code == 401, (path, r.status_code, r.text)
    assert r.headers["www-authenticate"] == "Bearer"
    if method == "HEAD":  # no body (HEAD /api/blobs/...)
        return
    body = r.json()
    if path.startswith("/api/") and path not in ("/api/llms",) and "/stream" not in path:
        assert isinstance(body["error"], str)  # Ollama's shape
    else:
        assert body["error"]["type"] == "authentication_error"
        assert body["error"]["code"] == "invalid_api_key"


async def test_no_auth_without_keys(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        assert (await h.client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await h.client.post("/models/fake/unload")).status_code != 401


async def test_every_route_needs_a_key_except_the_public_ones(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        good = await make_key(h, admin=True)
        revoked_new = await keyring(h).create("old")
        await keyring(h).revoke(revoked_new.record.id)
        expired = await make_key(h, expires_days=-1)
        bad_headers: list[dict[str, str]] = [
            {},
            {"Authorization": f"Basic {good}"},
            {"Authorization": f"Token {good}"},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer "},
            {"Authorization": f"Bearer {good[:-1]}"},
            {"Authorization": f"Bearer {good}x"},
            {"Authorization": f"Bearer  {good}"},
            {"Authorization": f"Bearer {good} "},
            {"Authorization": f"Bearer {good[:10]} {good[10:]}"},
            {"x-api-key": f" {good}"},
            {"x-api-key": "nope"},
            bearer(revoked_new.secret),
            bearer(expired),
        ]
        public = 0
        for method, path, _route in routes(h):
            if path in h.app.state.public_paths and method in ("GET", "HEAD"):
                public += 1
                r = await send(h.client, method, path)
                assert r.status_code == 200, (method, path)
                continue
            for headers in bad_headers:
                r = await send(h.client, method, path, headers=headers)
                assert_401(r, path, method)
            # with the key: never 401 (whatever the route answers to an empty body)
            r = await send(h.client, method, path, headers=bearer(good))
            assert r.status_code not in (401, 403), (method, path, r.text)
            assert "x-ratelimit" not in str(r.headers)  # no limits on this key
        # /, HEAD /, the three health routes, /metrics (public on loopback by default) and
        # the web page, /ui and /ui/ (its two files: tests/unit/test_web_ui_routes.py)
        assert public == 8


async def test_messages_never_quote_the_key(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        good = await make_key(h)
        for value in (good + "x", "Basic " + good, good[:8] + " " + good[8:]):
            r = await h.client.get("/v1/models", headers={"Authorization": value})
            assert r.status_code == 401 and good[:12] not in r.text


async def test_the_key_works_in_both_headers_on_every_dialect(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        key = await make_key(h)
        for headers in (bearer(key), {"x-api-key": key}, {"authorization": f"bearer {key}"}):
            r = await h.client.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert r.status_code == 200, r.text
            r = await h.client.post("/api/chat", json={**CHAT, "stream": False}, headers=headers)
            assert r.status_code == 200, r.text
            r = await h.client.post("/generate", json={"prompt": "hi"}, headers=headers)
            assert r.status_code == 200, r.text
        r = await h.client.post("/api/chat", json={**CHAT, "stream": False})
        assert r.status_code == 401 and isinstance(r.json()["error"], str)


async def test_require_auth_before_any_key_exists(fake_app: FakeFactory) -> None:
    async with fake_app(Settings(require_auth=True)) as h:
        assert (await h.client.get("/v1/models")).status_code == 401
        assert (await h.client.get("/health")).status_code == 200


async def test_revoking_the_last_key_keeps_auth_on(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        new = await keyring(h).create("only")
        assert (await h.client.get("/v1/models", headers=bearer(new.secret))).status_code == 200
        assert await keyring(h).revoke(new.record.id)
        assert not await keyring(h).revoke("key_unknown")
        r = await h.client.get("/v1/models", headers=bearer(new.secret))
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
        assert (await h.client.get("/v1/models")).status_code == 401


PATH_TRICKS = [
    "//v1/models",
    "/v1//models",
    "/v1/../v1/models",
    "/health/../v1/models",
    "/health/",
    "//health",
    "/health%2F..%2Fv1%2Fmodels",
    "/V1/models",
    "/metrics/../v1/models",
]


@pytest.mark.parametrize("path", PATH_TRICKS)
async def test_path_tricks_do_not_bypass_auth(fake_app: FakeFactory, path: str) -> None:
    async with fake_app() as h:
        await make_key(h)
        # send the raw path, unnormalised
        r = await h.client.send(h.client.build_request("GET", "http://127.0.0.1" + path))
        assert r.status_code == 401, (path, r.status_code)


HOSTS_REFUSED = ["evil.example", "attacker.com:8000", "127.0.0.1.nip.io", "localhost.evil", ""]
HOSTS_ACCEPTED = ["localhost", "localhost:8000", "127.0.0.1:9", "[::1]:8000", "LOCALHOST"]


@pytest.mark.parametrize("host", HOSTS_REFUSED)
async def test_foreign_host_headers_are_refused_on_loopback(
    fake_app: FakeFactory, host: str
) -> None:
    async with fake_app() as h:
        for path in ("/v1/models", "/health"):
            r = await h.client.get(path, headers={"Host": host})
            assert r.status_code == 400, (host, path)
            assert r.json()["error"]["code"] == "invalid_host"


@pytest.mark.parametrize("host", HOSTS_ACCEPTED)
async def test_loopback_host_headers_are_accepted(fake_app: FakeFactory, host: str) -> None:
    async with fake_app() as h:
        assert (await h.client.get("/v1/models", headers={"Host": host})).status_code == 200


async def test_host_allowlist_setting_and_non_loopback_binding(fake_app: FakeFactory) -> None:
    async with fake_app(Settings(allowed_hosts=["inferd.lan"])) as h:
        assert (await h.client.get("/health", headers={"Host": "inferd.lan"})).status_code == 200
        assert (await h.client.get("/health", headers={"Host": "other.lan"})).status_code == 400
    async with fake_app(Settings(host="0.0.0.0", insecure=True)) as h:  # any name reaches it
        assert (await h.client.get("/health", headers={"Host": "other.lan"})).status_code == 200


async def test_host_header_tricks_do_not_bypass_auth(fake_app: FakeFactory) -> None:
    async with fake_app(Settings(host="0.0.0.0")) as h:
        await make_key(h)
        for host in ("localhost", "127.0.0.1", "[::1]", "internal", "localhost:80"):
            r = await h.client.get("/v1/models", headers={"Host": host})
            assert r.status_code == 401, host


async def test_management_routes_need_an_admin_key(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        user = await make_key(h, name="user")
        admin = await make_key(h, name="admin", admin=True)
        admin_routes = [(m, p, r) for m, p, r in routes(h) if is_admin_route(r)]
        # every management-looking route is marked, and the marked ones are found
        for method, path, route in routes(h):
            if MANAGEMENT.search(getattr(route, "path", "")):
                assert is_admin_route(route), f"{method} {path} is not admin-only"
        assert {p for _, p, _ in admin_routes} >= {"/models/fake/load", "/models/fake/unload"}
        for method, path, _ in admin_routes:
            r = await send(h.client, method, path, headers=bearer(user))
            assert r.status_code == 403, (method, path)
            if method != "HEAD":  # HEAD answers without a body
                error = r.json()["error"]
                if path.startswith("/api/"):  # Ollama's shape: a message only
                    assert "admin" in error, (path, error)
                else:
                    assert error["type"] == "permission_error"
            r = await send(h.client, method, path, headers=bearer(admin))
            # past auth: Ollama's copy, delete, pull, create and blobs then want a body (or
            # a real digest), push is never done (501), and the store's routes answer 503
            # without a store (this app has none)
            expected = (
                (400,)
                if path in ("/api/copy", "/api/delete", "/api/pull", "/api/create")
                or path.startswith("/api/blobs/")
                else (501,)
                if path == "/api/push"
                else (503,)
                if path.startswith("/v1/stats")
                else (200, 202)
            )
            assert r.status_code in expected, (method, path, r.text)
        # the model is back for the next tests
        assert (await h.client.post("/models/fake/load", headers=bearer(admin))).status_code == 202


async def test_a_keys_model_list_is_enforced(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        other = await make_key(h, models=("other-model",))
        alias = await make_key(h, models=("default",))  # an alias of "fake"
        h_other = bearer(other)
        calls = [
            ("POST", "/v1/chat/completions", CHAT),
            ("POST", "/v1/completions", {"model": "fake", "prompt": "hi", "max_tokens": 2}),
            ("GET", "/v1/models/fake", None),
            ("POST", "/generate", {"model": "fake", "prompt": "hi"}),
            ("POST", "/chat/stream", {"model": "fake", "messages": CHAT["messages"]}),
            ("GET", "/models/fake", None),
            ("POST", "/api/chat", {**CHAT, "stream": False}),
            ("POST", "/api/generate", {"model": "fake", "prompt": "hi", "stream": True}),
            ("POST", "/api/show", {"model": "fake"}),
        ]
        for method, path, body in calls:
            r = await h.client.request(method, path, json=body, headers=h_other)
            assert r.status_code == 403, (path, r.status_code, r.text)
            err = r.json()["error"]
            message = err if isinstance(err, str) else err["message"]
            assert "may not use the model 'fake'" in message
            r = await h.client.request(method, path, json=body, headers=bearer(alias))
            assert r.status_code == 200, (path, r.text)
        # the default model (no name given) is checked too
        r = await h.client.post("/generate", json={"prompt": "hi"}, headers=h_other)
        assert r.status_code == 403


async def test_metrics_need_a_key_when_not_on_loopback(fake_app: FakeFactory) -> None:
    async with fake_app(Settings(host="0.0.0.0", insecure=True)) as h:
        key = await make_key(h)
        assert (await h.client.get("/metrics")).status_code == 401
        assert (await h.client.get("/metrics", headers=bearer(key))).status_code == 200
    async with fake_app(Settings(metrics_require_key=True)) as h:
        await make_key(h)
        assert (await h.client.get("/metrics")).status_code == 401
    async with fake_app(Settings(host="0.0.0.0", insecure=True, metrics_require_key=False)) as h:
        await make_key(h)
        assert (await h.client.get("/metrics")).status_code == 200


async def test_keys_are_stored_hashed_and_never_logged(
    fake_app: FakeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with fake_app() as h:
        new = await keyring(h).create("logged", admin=True)
        records = await keyring(h).store.list_keys()
        assert [r.key_hash for r in records] == [hash_key(new.secret)]
        assert new.secret not in repr(records)
        await h.client.get("/v1/models", headers=bearer(new.secret))
        await h.client.get("/v1/models", headers=bearer(new.secret + "x"))
        await h.client.get("/v1/models", headers={"x-api-key": new.secret[:-2]})
        await h.client.post("/v1/chat/completions", json=CHAT, headers=bearer(new.secret))
    assert caplog.records
    assert new.secret[len("inferd-") :][:16] not in caplog.text


async def test_cors_only_for_configured_origins(fake_app: FakeFactory) -> None:
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    async with fake_app() as h:
        await make_key(h)
        r = await h.client.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    async with fake_app(Settings(cors_origins=["https://app.example"])) as h:
        key = await make_key(h)
        r = await h.client.options("/v1/chat/completions", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = await h.client.options(
            "/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"
        r = await h.client.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={**bearer(key), "Origin": "https://app.example"},
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        # a CORS request does not skip auth
        r = await h.client.get("/v1/models", headers={"Origin": "https://app.example"})
        assert r.status_code == 401


async def test_keys_made_elsewhere_are_seen(fake_app: FakeFactory) -> None:
    """A key made by another process (another KeyRing on the same store) works at once;
    its revocation is seen within key_cache_seconds."""
    async with fake_app(Settings(key_cache_seconds=0)) as h:
        await make_key(h)
        other = KeyRing(keyring(h).store)
        new = await other.create("from the cli")
        assert (await h.client.get("/v1/models", headers=bearer(new.secret))).status_code == 200
        await other.revoke(new.record.id)
        assert (await h.client.get("/v1/models", headers=bearer(new.secret))).status_code == 401


async def test_the_guard_marks_the_key_id_for_the_usage_recorder() -> None:
    """The agreed interface with the store: `request.state.key_id` (None without auth)."""
    from starlette.types import Receive, Scope, Send

    from inferd.api.guard import PUBLIC_PATHS, Guard
    from inferd.security.capacity import CapacityGate
    from inferd.security.keys import MemoryKeyStore
    from inferd.security.limits import RateLimits

    seen: list[str | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["state"]["key_id"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    ring = KeyRing(MemoryKeyStore())
    guard = Guard(
        app,
        keys=ring,
        limits=RateLimits(),
        gate=CapacityGate(None),
        require_auth=False,
        host="127.0.0.1",
        public=PUBLIC_PATHS,
        max_header_bytes=16384,
        max_body_bytes=1024,
        body_timeout=5,
        client_calls=None,
        client_seconds=60,
    )
    transport = httpx.ASGITransport(app=guard)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        assert (await c.get("/anything")).status_code == 204
        new = await ring.create("recorded")
        assert (await c.get("/anything", headers=bearer(new.secret))).status_code == 204
        assert (await c.get("/health")).status_code == 204
    assert seen == [None, new.record.id, None]
