"""Small in-process caches for the gateway: results of deterministic models, and a TTL map.

Results are keyed by (version id, form, sha256 of the canonical input): published versions are
immutable, so a hit is the answer the node would give. Per API replica, bounded (LRU) and
expiring after ``ttl`` seconds; ``ttl`` 0 disables it.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import OrderedDict
from typing import Any, Generic, TypeVar

import orjson

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """A bounded map whose entries expire ``ttl`` seconds after they were put (LRU past
    ``max_entries``)."""

    def __init__(self, *, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K, now: float | None = None) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= (time.monotonic() if now is None else now):
            self._data.pop(key, None)
            return None
        self._data.move_to_end(key)
        return item[1]

    def put(self, key: K, value: V, now: float | None = None) -> None:
        if self.ttl <= 0:
            return
        self._data[key] = ((time.monotonic() if now is None else now) + self.ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def input_digest(value: Any) -> str:
    """sha256 of ``value`` as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


class ResultCache:
    """Answers of deterministic models by (version, form, input digest)."""

    def __init__(self, *, ttl: float, max_entries: int = 10_000) -> None:
        self._cache: TTLCache[tuple[uuid.UUID, str, str], Any] = TTLCache(
            ttl=ttl, max_entries=max_entries
        )

    @property
    def enabled(self) -> bool:
        return self._cache.ttl > 0

    def get(self, version_id: uuid.UUID, form: str, digest: str) -> Any:
        return self._cache.get((version_id, form, digest))

    def put(self, version_id: uuid.UUID, form: str, digest: str, value: Any) -> None:
        self._cache.put((version_id, form, digest), value)

    def __len__(self) -> int:
        return len(self._cache)
