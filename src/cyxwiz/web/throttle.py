"""Sign-in and sign-up throttles (docs/security.md, "Accounts and web").

Fixed-window counters, in this process (``MemoryCounters``) or in Redis (``RedisCounters``,
when ``CYXWIZ_REDIS_URL`` is set, shared by every API replica). A counter's window starts at
its first hit and lasts ``window`` seconds; ``Retry-After`` is what is left of it.

Sign-in (the API token route and the web form share the counters), each attempt counted
*before* the password is checked, so parallel guesses cannot slip past the check, and taken
back when the password was right:

* per client IP, failures across all accounts (password spraying from one address);
* per account + IP pair, failures (guessing one account from one address) — the tight limit;
* per account, failures from any IP (a botnet guessing one account) — the looser limit. It is
  *skipped* for an IP that signed in to that account successfully within
  ``login_known_ip_days``, so an attacker cannot lock the owner out from where they usually
  sign in; from a new address the owner waits at most the window.

A correct password during a throttle is refused like a wrong one (429), so a throttled guesser
learns nothing; a refused attempt checks no password and is not counted (so one address hammering
a pair never trips the account-wide limit for everyone else). Sign-up: successful registrations per client IP (failed attempts are taken
back: a registrant fixing a weak password is not punished).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from cyxwiz.config import Settings
from cyxwiz.errors import TooManyAttempts


class Counters(Protocol):
    def hit(self, key: str, window: float) -> tuple[int, float]:
        """Add one to ``key`` (its window starts at its first hit): (count, seconds left)."""
        ...

    def unhit(self, key: str) -> None:
        """Take one back from ``key`` (if it still exists)."""
        ...

    def clear(self, key: str) -> None: ...

    def flag(self, key: str, ttl: float) -> None:
        """Remember ``key`` for ``ttl`` seconds."""
        ...

    def flagged(self, key: str) -> bool: ...


class MemoryCounters:
    """Counters in this process; past ``max_keys`` the least recently used are forgotten
    (which only ever errs towards allowing). Thread-safe: sync routes run in a thread pool."""

    def __init__(self, *, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._data: OrderedDict[str, tuple[int, float]] = OrderedDict()  # count, expires

    def _live(self, key: str, now: float) -> tuple[int, float] | None:
        entry = self._data.get(key)
        if entry is not None and entry[1] <= now:
            del self._data[key]
            return None
        return entry

    def _put(self, key: str, value: tuple[int, float]) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_keys:
            self._data.popitem(last=False)

    def hit(self, key: str, window: float) -> tuple[int, float]:
        now = time.monotonic()
        with self._lock:
            entry = self._live(key, now)
            count, expires = (0, now + window) if entry is None else entry
            self._put(key, (count + 1, expires))
            return count + 1, expires - now

    def unhit(self, key: str) -> None:
        with self._lock:
            entry = self._live(key, time.monotonic())
            if entry is not None:
                self._data[key] = (max(0, entry[0] - 1), entry[1])

    def clear(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def flag(self, key: str, ttl: float) -> None:
        with self._lock:
            self._put(key, (1, time.monotonic() + ttl))

    def flagged(self, key: str) -> bool:
        with self._lock:
            return self._live(key, time.monotonic()) is not None


# KEYS[1] counter; ARGV[1] window in ms. Returns {count, ms left}.
_HIT_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""
_UNHIT_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(redis.call('GET', KEYS[1])) > 0 then
  redis.call('DECR', KEYS[1])
end
return 0
"""


class RedisCounters:
    """Counters in Redis, shared by every API replica (atomic Lua per hit)."""

    def __init__(self, *, url: str, prefix: str = "cyxwiz:auth:", client: Any = None) -> None:
        import redis

        self.prefix = prefix
        self._redis = client if client is not None else redis.Redis.from_url(url)
        self._hit = self._redis.register_script(_HIT_LUA)
        self._unhit = self._redis.register_script(_UNHIT_LUA)

    def hit(self, key: str, window: float) -> tuple[int, float]:
        count, left_ms = self._hit(keys=[self.prefix + key], args=[max(1, int(window * 1000))])
        return int(count), int(left_ms) / 1000

    def unhit(self, key: str) -> None:
        self._unhit(keys=[self.prefix + key])

    def clear(self, key: str) -> None:
        self._redis.delete(self.prefix + key)

    def flag(self, key: str, ttl: float) -> None:
        self._redis.set(self.prefix + key, b"1", px=max(1, int(ttl * 1000)))

    def flagged(self, key: str) -> bool:
        return bool(self._redis.exists(self.prefix + key))

    def close(self) -> None:
        self._redis.close()


def counters_from_settings(settings: Settings) -> Counters:
    """Redis counters when ``redis_url`` is set, else this process's memory."""
    if settings.redis_url:
        return RedisCounters(url=settings.redis_url)
    return MemoryCounters()


@dataclass(frozen=True)
class LoginAttempt:
    """The counters one sign-in attempt took (given back by ``AuthThrottle.login_succeeded``)."""

    ip: str
    account: str
    keys: tuple[str, ...]


def _account_key(login: str) -> str:
    # Hashed: Redis keys need no escaping, and a dump of them lists no usernames.
    return hashlib.sha256(login.strip().lower().encode("utf-8", "replace")).hexdigest()[:32]


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class AuthThrottle:
    """The sign-in and sign-up throttles for one app (limits from ``Settings``)."""

    def __init__(self, settings: Settings, counters: Counters) -> None:
        self.settings = settings
        self.counters = counters

    def login_attempt(self, *, ip: str, login: str) -> LoginAttempt:
        """Count one sign-in attempt against every limit; TooManyAttempts (429) if one is over."""
        s = self.settings
        account = _account_key(login)
        rules = [
            (f"login:ip:{ip}", s.login_ip_max_failures, s.login_ip_window_seconds),
            (
                f"login:pair:{account}:{ip}",
                s.login_account_ip_max_failures,
                s.login_account_ip_window_seconds,
            ),
        ]
        if not self.counters.flagged(f"login:known:{account}:{ip}"):
            rules.append(
                (
                    f"login:account:{account}",
                    s.login_account_max_failures,
                    s.login_account_window_seconds,
                )
            )
        wait = 0.0
        for key, limit, window in rules:
            count, left = self.counters.hit(key, window)
            if count > limit:
                wait = max(wait, left)
        if wait > 0:
            for key, _, _ in rules:  # a refused attempt checks no password: it costs nothing
                self.counters.unhit(key)
            raise TooManyAttempts(
                "too many failed sign-in attempts; wait before trying again",
                headers=_retry_after(wait),
                retry_after=max(1, math.ceil(wait)),
            )
        return LoginAttempt(ip=ip, account=account, keys=tuple(k for k, _, _ in rules))

    def login_succeeded(self, attempt: LoginAttempt) -> None:
        """The password was right: give the attempt back, clear the pair, remember the IP."""
        for key in attempt.keys:
            if key.startswith("login:pair:"):
                self.counters.clear(key)
            else:
                self.counters.unhit(key)
        self.counters.flag(
            f"login:known:{attempt.account}:{attempt.ip}",
            self.settings.login_known_ip_days * 86_400,
        )

    def register_attempt(self, *, ip: str) -> str:
        """Count one registration from ``ip``; TooManyAttempts (429) past the limit. Returns
        the key, for ``register_failed``."""
        s = self.settings
        key = f"register:ip:{ip}"
        count, left = self.counters.hit(key, s.register_ip_window_seconds)
        if count > s.register_ip_max_accounts:
            self.counters.unhit(key)
            raise TooManyAttempts(
                "too many accounts created from this address; wait before trying again",
                headers=_retry_after(left),
                retry_after=max(1, math.ceil(left)),
            )
        return key

    def register_failed(self, key: str) -> None:
        """The registration was refused (bad input, username taken): it does not count."""
        self.counters.unhit(key)
