"""Daily demo budgets: how many free demo rows one client IP, or one model, may use per UTC day.

Demo credits are per account (``demo_credits_per_model``), so registering many accounts would
farm them. These budgets are shared by every account: ``demo_ip_daily_rows`` per client IP
(``cyxwiz.web.clientip.client_ip``: the socket peer, or X-Forwarded-For behind the declared
trusted proxies; IPv6 by /64) and ``demo_model_daily_rows`` per model (what all demo callers of
one model together may cost its nodes in a day). A demo call takes its rows from every budget
that applies, all or none, before it spends the caller's credits; a cancelled demo call gives
them back. Paid and owner calls never touch them.

In-process by default (one API replica: N replicas allow N times the budget); with
``CYXWIZ_REDIS_URL`` the counters live in Redis (one atomic Lua script per demo call, keys
expiring after two days), shared by every replica.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cyxwiz.clock import Clock
from cyxwiz.config import Settings
from cyxwiz.errors import DomainError

KEY_TTL_SECONDS = 2 * 24 * 3600  # a day's counters outlive the day (clock skew between replicas)


@dataclass(frozen=True, slots=True)
class BudgetKey:
    """One daily budget: ``key`` (``ip:<address>`` / ``model:<id>``) allows ``limit`` rows."""

    key: str
    limit: int
    scope: str  # ip | model (shown in the problem)


@dataclass(frozen=True, slots=True)
class DemoSpend:
    """What a demo call took from the budgets (given back if the call is cancelled)."""

    keys: list[BudgetKey]
    rows: int
    day: str


def utc_day(clock: Clock) -> str:
    """Today (UTC) as ``YYYY-MM-DD``: budgets reset at midnight UTC."""
    return clock.now().astimezone(UTC).date().isoformat()


def seconds_to_midnight(now: datetime) -> int:
    """Whole seconds until the next UTC midnight (at least 1): the ``Retry-After``."""
    now = now.astimezone(UTC)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds() + 0.999))


class DemoBudgetExhausted(DomainError):
    """429: the free demo rows of the caller's network (or of the model) are used up today."""

    code = "demo_budget_exhausted"
    status = 429
    title = "Demo budget exhausted"

    @classmethod
    def for_(cls, key: BudgetKey, rows: int, clock: Clock) -> DemoBudgetExhausted:
        """The problem for a refusal by ``key`` (Retry-After: the next UTC midnight)."""
        retry = seconds_to_midnight(clock.now())
        whom = (
            "your network (IP address)" if key.scope == "ip" else "all demo callers of this model"
        )
        return cls(
            f"the free demo calls of {whom} are used up for today ({key.limit} rows a day"
            + (f"; this call has {rows} rows" if rows > 1 else "")
            + "); call with an API key and a balance to pay per use, or retry after "
            "midnight UTC",
            headers={"Retry-After": str(retry)},
            scope=key.scope,
            limit=key.limit,
        )


class DemoBudget(Protocol):
    async def take(self, keys: list[BudgetKey], rows: int, *, day: str) -> BudgetKey | None:
        """Take ``rows`` from every budget of ``keys`` for ``day``, all or none: None when
        taken, else the (first) budget that has not that much left."""
        ...

    async def give_back(self, keys: list[BudgetKey], rows: int, *, day: str) -> None:
        """Return ``rows`` to every budget of ``keys`` for ``day`` (a cancelled demo call)."""
        ...

    async def close(self) -> None: ...


class MemoryDemoBudget:
    """Counters in this process; past ``max_keys`` the least recently used are forgotten (a
    forgotten counter restarts at zero: errs towards allowing, never towards refusing)."""

    def __init__(self, *, max_keys: int = 1_000_000) -> None:
        self.max_keys = max_keys
        self._used: OrderedDict[str, int] = OrderedDict()
        self._day = ""

    def _roll(self, day: str) -> None:
        if day != self._day:  # a new day: yesterday's counters are of no use any more
            self._used.clear()
            self._day = day

    async def take(self, keys: list[BudgetKey], rows: int, *, day: str) -> BudgetKey | None:
        self._roll(day)
        for k in keys:
            if self._used.get(k.key, 0) + rows > k.limit:
                return k
        for k in keys:
            self._used[k.key] = self._used.get(k.key, 0) + rows
            self._used.move_to_end(k.key)
        while len(self._used) > self.max_keys:
            self._used.popitem(last=False)
        return None

    async def give_back(self, keys: list[BudgetKey], rows: int, *, day: str) -> None:
        if day != self._day:
            return  # taken yesterday: today's budgets start fresh anyway
        for k in keys:
            left = self._used.get(k.key, 0) - rows
            if left > 0:
                self._used[k.key] = left
            else:
                self._used.pop(k.key, None)

    async def close(self) -> None:
        return None


# KEYS: the budgets' counters; ARGV: rows, ttl, then each key's limit. Returns 0 when taken,
# else the 1-based index of the first budget without room (nothing is taken then).
_TAKE_LUA = """
local n = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
for i, k in ipairs(KEYS) do
  local used = tonumber(redis.call('GET', k) or '0')
  if used + n > tonumber(ARGV[i + 2]) then return i end
end
for _, k in ipairs(KEYS) do
  redis.call('INCRBY', k, n)
  redis.call('EXPIRE', k, ttl)
end
return 0
"""
_GIVE_BACK_LUA = """
local n = tonumber(ARGV[1])
for _, k in ipairs(KEYS) do
  if redis.call('EXISTS', k) == 1 and redis.call('DECRBY', k, n) <= 0 then
    redis.call('DEL', k)
  end
end
return 0
"""


class RedisDemoBudget:
    """Counters in Redis (``CYXWIZ_REDIS_URL``), shared by every API replica."""

    def __init__(self, *, url: str, prefix: str = "cyxwiz:demo:", client: Any = None) -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        self._redis = client if client is not None else aioredis.from_url(url)
        self._take = self._redis.register_script(_TAKE_LUA)
        self._give_back = self._redis.register_script(_GIVE_BACK_LUA)

    def _keys(self, keys: list[BudgetKey], day: str) -> list[str]:
        return [f"{self.prefix}{day}:{k.key}" for k in keys]

    async def take(self, keys: list[BudgetKey], rows: int, *, day: str) -> BudgetKey | None:
        refused = int(
            await self._take(
                keys=self._keys(keys, day),
                args=[rows, KEY_TTL_SECONDS, *(k.limit for k in keys)],
            )
        )
        return keys[refused - 1] if refused else None

    async def give_back(self, keys: list[BudgetKey], rows: int, *, day: str) -> None:
        await self._give_back(keys=self._keys(keys, day), args=[rows])

    async def close(self) -> None:
        await self._redis.aclose()


def demo_budget_from_settings(settings: Settings) -> DemoBudget:
    """Redis when ``redis_url`` is set, else in-process."""
    if settings.redis_url:
        return RedisDemoBudget(url=settings.redis_url)
    return MemoryDemoBudget()
