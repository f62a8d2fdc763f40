"""Per-key limits (requests/min, tokens/min, parallel), the per-address window without keys,
the server's capacity (503) and body/header/time limits, with exact statuses, headers and
bodies (RELIABILITY.md 11, 19, 23). The engine is the fake backend: these are the layers
above it; tests/e2e/test_security.py runs the real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from inferd.config import Settings
from inferd.security.keys import KeyRing
from tests.conftest import AppHandle, FakeFactory

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
OLLAMA_CHAT = {**CHAT, "stream": False}


async def make_key(h: AppHandle, **kw: Any) -> dict[str, str]:
    keys: KeyRing = h.app.state.keys
    new = await keys.create(kw.pop("name", "limited"), **kw)
    return {"Authorization": f"Bearer {new.secret}"}


async def still_serving(h: AppHandle, headers: dict[str, str] | None = None) -> None:
    assert (await h.client.get("/health/live")).status_code == 200
    r = await h.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 200, r.text


# ---- requests per minute --------------------------------------------------------------------


async def test_requests_per_minute_headers_and_429(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        key = await make_key(h, rpm=3)
        for remaining in (2, 1, 0):
            r = await h.client.post("/v1/chat/completions", json=CHAT, headers=key)
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit-requests"] == "3"
            assert r.headers["x-ratelimit-remaining-requests"] == str(remaining)
            assert r.headers["x-ratelimit-reset-requests"] in {f"{s}s" for s in range(58, 61)}
            assert "x-ratelimit-limit-tokens" not in r.headers  # no tpm on this key
        r = await h.client.post("/v1/chat/completions", json=CHAT, headers=key)
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.json() == {
            "error": {
                "message": "Rate limit reached: 3 requests per minute for this API key",
                "type": "rate_limit_error",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        r = await h.client.post("/api/chat", json=OLLAMA_CHAT, headers=key)  # Ollama's shape
        assert r.status_code == 429 and r.json() == {
            "error": "Rate limit reached: 3 requests per minute for this API key"
        }
        assert "retry-after" in r.headers
        await still_serving(h, await make_key(h, name="other"))


async def test_requests_per_minute_hold_under_concurrency(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        key = await make_key(h, rpm=10)
        rs = await asyncio.gather(
            *(h.client.post("/v1/chat/completions", json=CHAT, headers=key) for _ in range(40))
        )
        codes = sorted(r.status_code for r in rs)
        assert codes.count(200) == 10 and codes.count(429) == 30


# ---- parallel requests ----------------------------------------------------------------------


async def _max_in_engine(h: AppHandle, burst: Any) -> tuple[int, list[httpx.Response]]:
    """Run `burst`, sampling how many sequences the engine holds; the most seen."""
    seen = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal seen
        while not done.is_set():
            st = h.engine().stats()
            seen = max(seen, st.running + st.waiting)
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    try:
        rs = await burst
    finally:
        done.set()
        await sampler
    return seen, rs


async def test_a_burst_of_50_on_max_parallel_4_never_runs_more_than_4(
    fake_app: FakeFactory,
) -> None:
    async with fake_app(step_delay=0.01, max_seqs=16) as h:
        unlimited = await make_key(h, name="unlimited")
        limited = await make_key(h, max_parallel=4)

        def burst(key: dict[str, str]) -> Any:
            return asyncio.gather(
                *(h.client.post("/v1/chat/completions", json=CHAT, headers=key) for _ in range(50))
            )

        # the check can fail: without the limit, the burst runs far more than 4 at once
        seen, rs = await _max_in_engine(h, burst(unlimited))
        assert seen > 4 and all(r.status_code == 200 for r in rs)
        seen, rs = await _max_in_engine(h, burst(limited))
        codes = [r.status_code for r in rs]
        assert seen <= 4
        assert codes.count(200) >= 4 and set(codes) == {200, 429}
        refused = next(r for r in rs if r.status_code == 429)
        assert refused.headers["retry-after"] == "1"
        assert "4 parallel requests" in refused.json()["error"]["message"]
        # every slot was given back: four at once pass again
        rs = await asyncio.gather(
            *(h.client.post("/v1/chat/completions", json=CHAT, headers=limited) for _ in range(4))
        )
        assert [r.status_code for r in rs] == [200] * 4


# ---- tokens per minute ----------------------------------------------------------------------


async def test_tokens_are_reserved_then_settled_to_actual_usage(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        key = await make_key(h, tpm=5000)
        principal = await h.app.state.keys.verify(key["Authorization"][7:])
        limits = h.app.state.limits
        r = await h.client.post(
            "/v1/chat/completions", json={**CHAT, "max_tokens": 400}, headers=key
        )
        assert r.status_code == 200
        usage = r.json()["usage"]
        reserved = usage["prompt_tokens"] + 400
        # the headers went out while the reservation still held
        assert r.headers["x-ratelimit-limit-tokens"] == "5000"
        assert r.headers["x-ratelimit-remaining-tokens"] == str(5000 - reserved)
        window = await limits.tokens(principal)
        assert window.remaining == 5000 - usage["total_tokens"]  # settled: what it used
        r = await h.client.get("/v1/models", headers=key)
        assert r.headers["x-ratelimit-remaining-tokens"] == str(5000 - usage["total_tokens"])


async def test_tokens_per_minute_hold_under_concurrency(fake_app: FakeFactory) -> None:
    async with fake_app(step_delay=0.01) as h:
        key = await make_key(h, tpm=1000)
        body = {**CHAT, "max_tokens": 200}
        rs = await asyncio.gather(
            *(h.client.post("/v1/chat/completions", json=body, headers=key) for _ in range(20))
        )
        ok = [r for r in rs if r.status_code == 200]
        refused = [r for r in rs if r.status_code == 429]
        assert ok and refused and len(ok) + len(refused) == 20
        per_request = ok[0].json()["usage"]["prompt_tokens"] + 200
        assert len(ok) * per_request <= 1000  # the reservations admitted fit the limit
        err = refused[0].json()["error"]
        assert err["code"] == "rate_limit_exceeded" and "tokens per minute" in err["message"]
        assert int(refused[0].headers["retry-after"]) >= 1


async def test_a_request_larger_than_the_tpm_limit(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        key = await make_key(h, tpm=100)
        r = await h.client.post(
            "/v1/chat/completions", json={**CHAT, "max_tokens": 200}, headers=key
        )
        assert r.status_code == 429 and r.json()["error"]["param"] == "max_tokens"
        r = await h.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5}, headers=key)
        assert r.status_code == 200


async def test_a_refused_stream_is_a_status_not_an_event(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        key = await make_key(h, tpm=100)
        body = {**CHAT, "stream": True, "max_tokens": 200}
        for path, b in (
            ("/v1/chat/completions", body),
            ("/api/chat", {**CHAT, "max_tokens": 200, "options": {"num_predict": 200}}),
            ("/chat/stream", {"messages": CHAT["messages"], "max_tokens": 200}),
        ):
            r = await h.client.post(path, json=b, headers=key)
            assert r.status_code == 429, (path, r.text)


# ---- without keys: per client address -------------------------------------------------------


async def test_per_address_window_without_keys(fake_app: FakeFactory) -> None:
    async with fake_app(Settings(rate_limit_calls=3, rate_limit_seconds=60)) as h:
        for remaining in (2, 1, 0):
            r = await h.client.get("/v1/models")
            assert r.status_code == 200
            assert r.headers["x-ratelimit-remaining-requests"] == str(remaining)
        r = await h.client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        assert (await h.client.get("/health")).status_code == 200  # health is not counted
        other = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=h.app, client=("10.0.0.2", 1234)),
            base_url="http://127.0.0.1",
        )
        async with other:
            assert (await other.get("/v1/models")).status_code == 200


# ---- server capacity ------------------------------------------------------------------------


async def test_beyond_slots_and_queue_is_503_and_the_queued_complete(
    fake_app: FakeFactory,
) -> None:
    settings = Settings(max_concurrent_requests=2, max_queue=1)
    async with fake_app(settings, step_delay=0.02) as h:
        rs = await asyncio.gather(
            *(h.client.post("/v1/chat/completions", json=CHAT) for _ in range(10)),
            *(h.client.post("/api/chat", json=OLLAMA_CHAT) for _ in range(2)),
        )
        codes = [r.status_code for r in rs]
        assert codes.count(200) == 3 and codes.count(503) == 9
        for i, r in enumerate(rs):
            if r.status_code != 503:
                continue
            assert r.headers["retry-after"] == "1"
            err = r.json()["error"]
            if i < 10:
                assert err["code"] == "overloaded" and err["type"] == "server_error"
                assert "at capacity" in err["message"]
            else:
                assert isinstance(err, str) and "at capacity" in err  # Ollama's shape
        assert h.app.state.capacity.running == 0 and h.app.state.capacity.waiting == 0
        await still_serving(h)


# ---- bodies, headers, slow clients ----------------------------------------------------------


async def test_a_huge_body_is_413_quickly(fake_app: FakeFactory) -> None:
    async with fake_app(Settings(max_body_bytes=1 << 20)) as h:
        started = time.monotonic()
        r = await h.client.post(
            "/v1/chat/completions",
            content=b"{}",
            headers={"content-type": "application/json", "content-length": str(100 << 20)},
        )
        assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):  # 100 MB, chunked: refused after the first MB
                yield b" " * (1 << 20)

        r = await h.client.post(
            "/api/chat", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and isinstance(r.json()["error"], str)
        assert time.monotonic() - started < 5
        await still_serving(h)


async def test_huge_headers_are_431(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        r = await h.client.get("/health", headers={"x-junk": "a" * 20000})
        assert r.status_code == 431
        many = {f"x-h{i}": "v" * 100 for i in range(200)}
        r = await h.client.post("/v1/chat/completions", json=CHAT, headers=many)
        assert r.status_code == 431 and r.json()["error"]["message"] == "Request headers too large"
        await still_serving(h)


async def test_a_body_sent_too_slowly_is_408(fake_app: FakeFactory) -> None:
    async with fake_app(Settings(request_timeout=0.3)) as h:

        async def slow() -> AsyncIterator[bytes]:
            yield b'{"model": "fake", '
            await asyncio.sleep(1.0)
            yield b'"messages": []}'

        r = await h.client.post(
            "/v1/chat/completions", content=slow(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 408
        await still_serving(h)
