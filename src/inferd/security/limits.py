"""Per-key and per-client rate limits on the `limits` library.

Requests per minute and tokens per minute are moving windows. Parallel requests and the
tokens reserved by requests still running are counters in the same storage, so a `redis://`
storage shares every limit between replicas. Tokens: a request reserves its prompt plus
max_tokens at admission (refused when settled usage + all reservations would pass the limit),
and settles to its actual usage when it ends.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import cast

from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from inferd.errors import ConfigError, RateLimited
from inferd.security.principal import Principal

# Counters of running requests and reserved tokens expire after this long untouched, so a
# crashed replica's share is eventually given back.
COUNTER_EXPIRY = 24 * 3600
PREFIX = "inferd"


@dataclass(frozen=True, slots=True)
class Window:
    """One limit's state, for the x-ratelimit-* headers."""

    limit: int
    remaining: int
    reset: float  # seconds until the window has room again (0: it has room now)


def storage_uri(uri: str) -> str:
    """The `limits` async storage URI for a setting: `memory://` or `redis://host:port/db`."""
    return uri if uri.startswith("async+") else "async+" + uri


def retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


class RateLimits:
    def __init__(self, storage: str = "memory://") -> None:
        try:
            uri = storage_uri(storage)
            # redis through redis-py (the limits[redis] extra), not coredis
            options = {"implementation": "redispy"} if uri.startswith("async+redis") else {}
            self.storage = cast(Storage, storage_from_string(uri, **options))
        except Exception as exc:  # the limits library raises several kinds
            raise ConfigError(f"rate_limit_storage {storage!r}: {exc}") from None
        self._window = MovingWindowRateLimiter(self.storage)

    async def _stats(self, item: RateLimitItem, *ids: str) -> Window:
        stats = await self._window.get_window_stats(item, *ids)
        used = item.amount - stats.remaining
        reset = max(0.0, stats.reset_time - time.time()) if used else 0.0
        return Window(item.amount, stats.remaining, reset)

    async def _hit(self, item: RateLimitItem, what: str, *ids: str) -> Window:
        if not await self._window.hit(item, *ids):
            state = await self._stats(item, *ids)
            raise RateLimited(
                f"Rate limit reached: {item.amount} {what}", retry_after=retry_after(state.reset)
            )
        return await self._stats(item, *ids)

    # ---- requests ------------------------------------------------------------------------

    async def hit_requests(self, principal: Principal) -> Window | None:
        """Count one request against the key's requests per minute."""
        if principal.rpm is None:
            return None
        return await self._hit(
            RateLimitItemPerMinute(principal.rpm, namespace=PREFIX),
            "requests per minute for this API key",
            "rpm",
            principal.key_id,
        )

    async def requests(self, principal: Principal) -> Window | None:
        """The key's requests-per-minute state, without counting a request."""
        if principal.rpm is None:
            return None
        item = RateLimitItemPerMinute(principal.rpm, namespace=PREFIX)
        return await self._stats(item, "rpm", principal.key_id)

    async def hit_client(self, client: str, calls: int, seconds: int) -> Window:
        """Count one request against a client address's window (servers without keys)."""
        item = RateLimitItemPerSecond(calls, seconds, namespace=PREFIX)
        return await self._hit(item, f"requests per {seconds} s from this address", "ip", client)

    async def client(self, client: str, calls: int, seconds: int) -> Window:
        """A client address's window, without counting a request."""
        item = RateLimitItemPerSecond(calls, seconds, namespace=PREFIX)
        return await self._stats(item, "ip", client)

    # ---- parallel requests ---------------------------------------------------------------

    def _running_key(self, principal: Principal) -> str:
        return f"{PREFIX}/running/{principal.key_id}"

    async def enter(self, principal: Principal) -> bool:
        """Count a running request; RateLimited when the key already runs its maximum.
        True when counted (then `leave` must follow)."""
        if principal.max_parallel is None:
            return False
        key = self._running_key(principal)
        running = await self.storage.incr(key, COUNTER_EXPIRY, 1)
        if running > principal.max_parallel:
            await self.storage.incr(key, COUNTER_EXPIRY, -1)
            raise RateLimited(
                f"Rate limit reached: {principal.max_parallel} parallel requests for this API key",
                retry_after=1,
            )
        return True

    async def leave(self, principal: Principal) -> None:
        await self.storage.incr(self._running_key(principal), COUNTER_EXPIRY, -1)

    # ---- tokens per minute ---------------------------------------------------------------

    def _tokens_item(self, principal: Principal) -> RateLimitItem:
        assert principal.tpm is not None
        return RateLimitItemPerMinute(principal.tpm, namespace=PREFIX)

    def _reserved_key(self, principal: Principal) -> str:
        return f"{PREFIX}/reserved/{principal.key_id}"

    async def tokens(self, principal: Principal) -> Window | None:
        """The key's tokens-per-minute state: settled usage and running reservations."""
        if principal.tpm is None:
            return None
        settled = await self._stats(self._tokens_item(principal), "tpm", principal.key_id)
        reserved = max(0, await self.storage.get(self._reserved_key(principal)))
        remaining = max(0, settled.remaining - reserved)
        return Window(principal.tpm, remaining, settled.reset)

    async def reserve(self, principal: Principal, tokens: int) -> Window | None:
        """Reserve `tokens` (prompt + max_tokens) of the key's tokens per minute."""
        if principal.tpm is None:
            return None
        if tokens > principal.tpm:
            raise RateLimited(
                f"This request needs up to {tokens} tokens (prompt + max_tokens), more than "
                f"this API key's limit of {principal.tpm} tokens per minute",
                retry_after=60,
                param="max_tokens",
            )
        key = self._reserved_key(principal)
        reserved = await self.storage.incr(key, COUNTER_EXPIRY, tokens)
        settled = await self._stats(self._tokens_item(principal), "tpm", principal.key_id)
        if settled.limit - settled.remaining + reserved > principal.tpm:
            await self.storage.incr(key, COUNTER_EXPIRY, -tokens)
            raise RateLimited(
                f"Rate limit reached: {principal.tpm} tokens per minute for this API key "
                f"(this request needs up to {tokens})",
                retry_after=retry_after(settled.reset),
            )
        return Window(principal.tpm, max(0, settled.remaining - reserved), settled.reset)

    async def settle(self, principal: Principal, reserved: int, used: int) -> None:
        """Replace a reservation by the tokens actually used (at most the reservation)."""
        if principal.tpm is None:
            return
        used = min(max(used, 0), reserved)
        if used:
            # fits: the reservation it replaces was counted when it was admitted
            await self._window.hit(self._tokens_item(principal), "tpm", principal.key_id, cost=used)
        await self.storage.incr(self._reserved_key(principal), COUNTER_EXPIRY, -reserved)
