"""Token-bucket rate limits: in-process by default, Redis when configured.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; each request
takes one. The limit is given with each call (``take(key, limit)``), so one limiter serves
buckets of different sizes — the gateway keys its buckets by plan and caller
(``demo:k:<api key id>``) and passes that plan's ``Limit``. ``take`` answers 0.0 when the
request may go ahead, else the seconds until a token is back (the ``Retry-After``). The Redis
limiter runs one atomic Lua script per request (read, refill, take, write, expire) on the
server's own clock, so every API replica sharing the Redis shares the buckets exactly.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Limit:
    """``rate`` tokens per second, up to ``burst`` at once."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")


class RateLimiter(Protocol):
    async def take(self, key: str, limit: Limit) -> float:
        """0.0 if a token was taken from ``key``'s bucket (of ``limit``); otherwise seconds
        until one is available. A key must always be used with the same limit."""
        ...

    async def close(self) -> None: ...


class MemoryRateLimiter:
    """Buckets in this process (one API replica); the least recently used are forgotten past
    ``max_keys`` (a forgotten bucket comes back full, which only ever errs towards allowing)."""

    def __init__(self, *, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def take(self, key: str, limit: Limit) -> float:
        return self.take_now(key, limit, time.monotonic())

    def take_now(self, key: str, limit: Limit, now: float) -> float:
        burst = float(limit.burst)
        tokens, last = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - last) * limit.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            self._buckets.move_to_end(key)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / limit.rate

    async def close(self) -> None:
        self._buckets.clear()


# KEYS[1] bucket; ARGV: rate (tokens/s), burst. Returns {allowed (0|1), wait in microseconds}.
_TAKE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate / 1000000)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, wait}
"""


class RedisRateLimiter:
    """Buckets in Redis (``CYXWIZ_REDIS_URL``), shared by every API replica."""

    def __init__(self, *, url: str, prefix: str = "cyxwiz:rl:", client: Any = None) -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        self._redis = client if client is not None else aioredis.from_url(url)
        self._script = self._redis.register_script(_TAKE_LUA)
        self._args: dict[Limit, list[str]] = {}

    async def take(self, key: str, limit: Limit) -> float:
        args = self._args.get(limit)
        if args is None:
            args = self._args[limit] = [repr(float(limit.rate)), str(limit.burst)]
        allowed, wait_us = await self._script(keys=[self.prefix + key], args=args)
        return 0.0 if int(allowed) == 1 else int(wait_us) / 1_000_000

    async def close(self) -> None:
        await self._redis.aclose()


def rate_limiter_from_settings(*, redis_url: str | None, prefix: str = "cyxwiz:rl:") -> RateLimiter:
    if redis_url:
        return RedisRateLimiter(url=redis_url, prefix=prefix)
    return MemoryRateLimiter()
