"""The in-process cache store: least recently used first out, bounded by entries and by bytes, entries expiring."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from holyroute.forking import new_lock

__all__ = ["ENTRY_OVERHEAD", "MemoryCache"]

#: Bytes counted per entry besides its key and value: the ordered dict's slot and link, the tuple, the expiry float and
#: the key's and value's object headers, measured with tracemalloc (about 310 B on CPython 3.11) plus room for the
#: dict's growth (benchmarks/bench_cache.py checks the memory held stays within the cap).
ENTRY_OVERHEAD = 360


class MemoryCache:
    """A least-recently-used map of bytes with TTLs, never over ``max_entries`` nor ``max_bytes`` (keys, values and
    :data:`ENTRY_OVERHEAD` per entry). Thread-safe; every operation is O(1) amortised.

    >>> cache = MemoryCache(max_entries=2, max_bytes=10_000)
    >>> for key in "abc":
    ...     cache.put(key, b"v", 60)
    >>> cache.get("a") is None, cache.get("c")
    (True, b'v')
    """

    blocking = False

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._lock = new_lock()
        #: What the entries take, as counted against ``max_bytes``.
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _cost(key: str, value: bytes) -> int:
        return len(key) + len(value) + ENTRY_OVERHEAD

    def get(self, key: str) -> bytes | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            value, expires = found
            if expires <= self._clock():
                del self._entries[key]
                self.size -= self._cost(key, value)
                return None
            self._entries.move_to_end(key)
            return value

    def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        cost = self._cost(key, value)
        if cost > self.max_bytes or ttl_s <= 0:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.size -= self._cost(key, old[0])
            self._entries[key] = (value, self._clock() + ttl_s)
            self.size += cost
            while self.size > self.max_bytes or len(self._entries) > self.max_entries:
                gone, (dropped, _) = self._entries.popitem(last=False)
                self.size -= self._cost(gone, dropped)
        return True

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
            self.size = 0
