"""Keys, limits and the capacity gate without HTTP: memory storage, a fake clock."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest

from inferd.errors import ConfigError, Overloaded, RateLimited, Unauthenticated
from inferd.security import keys as keys_module
from inferd.security.capacity import CapacityGate
from inferd.security.keys import KeyRing, MemoryKeyStore, hash_key
from inferd.security.limits import RateLimits, storage_uri
from inferd.security.principal import Principal
from inferd.storage.records import ApiKeyRecord

# ---- keys ----------------------------------------------------------------------------------


async def test_a_new_key_is_shown_once_and_stored_as_a_hash() -> None:
    store = MemoryKeyStore()
    ring = KeyRing(store)
    new = await ring.create("ci", admin=True, models=("a", "b"), rpm=5, tpm=100, max_parallel=2)
    assert new.secret.startswith("inferd-") and len(new.secret) > 40
    assert new.record.id.startswith("key_") and new.secret not in new.record.id
    (stored,) = await store.list_keys()
    assert stored.key_hash == hashlib.sha256(new.secret.encode()).hexdigest()
    assert new.secret not in repr(stored)
    p = await ring.verify(new.secret)
    assert (p.key_id, p.name, p.admin, p.models) == (new.record.id, "ci", True, ("a", "b"))
    assert (p.rpm, p.tpm, p.max_parallel) == (5, 100, 2)
    other = await ring.create("ci")
    assert other.secret != new.secret and other.record.id != new.record.id


async def test_verification_compares_every_hash_in_constant_time() -> None:
    ring = KeyRing(MemoryKeyStore())
    made = [await ring.create(f"k{i}") for i in range(5)]
    with mock.patch.object(keys_module.hmac, "compare_digest", wraps=hmac.compare_digest) as cmp:
        await ring.verify(made[0].secret)
    assert cmp.call_count == 5  # no early exit on the first match


@pytest.mark.parametrize("bad", ["", "inferd-", "x" * 10_000, "\udcff", "inferd-\x00"])
async def test_unknown_keys(bad: str) -> None:
    ring = KeyRing(MemoryKeyStore())
    await ring.create("one")
    with pytest.raises(Unauthenticated) as err:
        await ring.verify(bad)
    assert err.value.message == "Incorrect API key provided"


async def test_revoked_and_expired_keys() -> None:
    ring = KeyRing(MemoryKeyStore())
    gone = await ring.create("gone")
    assert await ring.revoke(gone.record.id)
    assert await ring.revoke(gone.record.id)  # known: still True, first time kept
    assert not await ring.revoke("key_nope")
    with pytest.raises(Unauthenticated, match="revoked"):
        await ring.verify(gone.secret)
    old = await ring.create("old", expires_days=-0.001)
    with pytest.raises(Unauthenticated, match="expired"):
        await ring.verify(old.secret)
    fresh = await ring.create("fresh", expires_days=1)
    assert (await ring.verify(fresh.secret)).name == "fresh"
    assert [r.name for r in await ring.list()] == ["gone", "old", "fresh"]


async def test_the_cache_is_refreshed_by_age_and_on_a_miss() -> None:
    now = [0.0]
    store = MemoryKeyStore()
    ring = KeyRing(store, max_age=10, clock=lambda: now[0])
    assert not await ring.any_keys_now()
    elsewhere = KeyRing(store)  # `inferd keys create` in another process
    new = await elsewhere.create("cli")
    assert not await ring.any_keys_now()  # cached for max_age
    now[0] = 1.0
    assert (await ring.verify(new.secret)).name == "cli"  # a miss refreshes (once a second)
    await elsewhere.revoke(new.record.id)
    now[0] = 5.0
    assert (await ring.verify(new.secret)).name == "cli"  # revocation not seen yet
    now[0] = 11.0
    with pytest.raises(Unauthenticated, match="revoked"):
        await ring.verify(new.secret)
    assert await ring.any_keys_now()  # a revoked key still counts: auth stays on


class FlakyStore(MemoryKeyStore):
    down = False

    async def list_keys(self) -> list[ApiKeyRecord]:
        if self.down:
            raise OSError("database is down")
        return await super().list_keys()


async def test_a_store_outage_keeps_the_cached_keys() -> None:
    now = [0.0]
    store = FlakyStore()
    ring = KeyRing(store, max_age=1, clock=lambda: now[0])
    new = await ring.create("k")
    store.down = True
    now[0] = 5.0
    assert (await ring.verify(new.secret)).name == "k"
    with pytest.raises(Unauthenticated):
        await ring.verify("inferd-unknown")
    with pytest.raises(OSError):  # never loaded: no cache to fall back on
        await KeyRing(store).verify(new.secret)


async def test_expiry_is_checked_at_use() -> None:
    store = MemoryKeyStore()
    ring = KeyRing(store)
    new = await ring.create("soon", expires_days=1)
    await ring.verify(new.secret)
    later = replace(new.record, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    await store.add_key(later)
    await ring.refresh()
    with pytest.raises(Unauthenticated, match="expired"):
        await ring.verify(new.secret)


def test_hash_is_hex_sha256() -> None:
    assert hash_key("abc") == hashlib.sha256(b"abc").hexdigest()


# ---- limits --------------------------------------------------------------------------------


def test_storage_uris() -> None:
    assert storage_uri("memory://") == "async+memory://"
    assert storage_uri("redis://h:6379/0") == "async+redis://h:6379/0"
    assert storage_uri("async+redis://h") == "async+redis://h"
    with pytest.raises(ConfigError):
        RateLimits("nosuch://x")


async def test_requests_per_minute() -> None:
    limits = RateLimits()
    p = Principal("key_a", "a", rpm=2)
    w = await limits.hit_requests(p)
    assert w is not None and (w.limit, w.remaining) == (2, 1) and 59 <= w.reset <= 60
    await limits.hit_requests(p)
    with pytest.raises(RateLimited) as err:
        await limits.hit_requests(p)
    assert 1 <= err.value.retry_after <= 60
    assert await limits.hit_requests(Principal("key_b", "b", rpm=2))  # own window per key
    assert await limits.hit_requests(Principal("key_c", "c")) is None  # no limit


async def test_parallel_requests_count_in_and_out() -> None:
    limits = RateLimits()
    p = Principal("key_p", "p", max_parallel=2)
    assert await limits.enter(p) and await limits.enter(p)
    with pytest.raises(RateLimited, match="2 parallel"):
        await limits.enter(p)
    await limits.leave(p)
    assert await limits.enter(p)
    assert not await limits.enter(Principal("key_q", "q"))  # unlimited: not counted


async def test_parallel_requests_hold_under_concurrency() -> None:
    limits = RateLimits()
    p = Principal("key_p", "p", max_parallel=3)
    results = await asyncio.gather(*(limits.enter(p) for _ in range(50)), return_exceptions=True)
    assert sum(r is True for r in results) == 3
    assert sum(isinstance(r, RateLimited) for r in results) == 47


async def test_tokens_reserve_then_settle() -> None:
    limits = RateLimits()
    p = Principal("key_t", "t", tpm=1000)
    w = await limits.reserve(p, 600)
    assert w is not None and w.remaining == 400
    with pytest.raises(RateLimited, match="1000 tokens per minute"):
        await limits.reserve(p, 500)  # 600 reserved + 500 > 1000
    await limits.settle(p, 600, 100)  # it used 100 of the 600
    t = await limits.tokens(p)
    assert t is not None and t.remaining == 900 and t.reset > 0
    assert await limits.reserve(p, 900)
    with pytest.raises(RateLimited):
        await limits.reserve(p, 1)
    await limits.settle(p, 900, 2000)  # more than reserved counts as the reservation
    t = await limits.tokens(p)
    assert t is not None and t.remaining == 0
    with pytest.raises(RateLimited, match="more than this API key's limit") as err:
        await limits.reserve(Principal("key_u", "u", tpm=10), 11)
    assert err.value.param == "max_tokens"


async def test_tokens_hold_under_concurrency() -> None:
    limits = RateLimits()
    p = Principal("key_t", "t", tpm=1000)
    results = await asyncio.gather(
        *(limits.reserve(p, 150) for _ in range(40)), return_exceptions=True
    )
    admitted = sum(not isinstance(r, BaseException) for r in results)
    assert 1 <= admitted <= 6  # 6 x 150 = 900 <= 1000 < 7 x 150


async def test_per_client_window() -> None:
    limits = RateLimits()
    assert (await limits.hit_client("10.0.0.1", 2, 10)).remaining == 1
    await limits.hit_client("10.0.0.1", 2, 10)
    with pytest.raises(RateLimited, match="2 requests per 10 s"):
        await limits.hit_client("10.0.0.1", 2, 10)
    assert (await limits.hit_client("10.0.0.2", 2, 10)).remaining == 1
    assert (await limits.client("10.0.0.1", 2, 10)).remaining == 0


# ---- capacity ------------------------------------------------------------------------------


async def test_capacity_slots_then_queue_then_503() -> None:
    gate = CapacityGate(2, max_queue=1)
    await gate.enter()
    await gate.enter()
    queued = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    assert gate.waiting == 1 and not queued.done()
    with pytest.raises(Overloaded, match="at capacity"):
        await gate.enter()
    gate.leave()
    await queued  # the queued one got the freed slot
    assert (gate.running, gate.waiting) == (2, 0)
    gate.leave()
    gate.leave()
    assert gate.running == 0


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    gate = CapacityGate(1, max_queue=1)
    await gate.enter()
    waiter = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting == 0
    gate.leave()
    async with gate.slot():
        assert gate.running == 1
    assert gate.running == 0


async def test_no_capacity_limit() -> None:
    gate = CapacityGate(None)
    for _ in range(1000):
        await gate.enter()
    assert gate.running == 1000
