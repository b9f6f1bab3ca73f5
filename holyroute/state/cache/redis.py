"""The shared cache store: entries in Redis with their TTLs, under the ``state:`` prefix, bounded as a whole.

Each entry is a string key ``{<prefix>:cache}:e:<key>`` set with ``PX`` (one hash tag: one Redis Cluster slot). Next
to them, one script keeps an index (a sorted set by expiry time), each entry's size (a hash) and their total, so
that a write past ``max_entries`` or ``max_bytes`` removes the entries closest to expiry first: memory stays bounded
even where Redis has no ``maxmemory``. Every command is bounded by ``cache.timeout_ms`` and never retried: a slow
Redis is a miss, not a slow call.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from holyroute.boundary.redis_url import parse_redis_url
from holyroute.state.redis.connect import close_client, open_client

__all__ = ["RedisCache"]

_PUT = """
local index, sizes, total, base = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local member, value, ttl_ms, now_ms = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local max_bytes, max_entries = tonumber(ARGV[6]), tonumber(ARGV[7])
local function drop(name)
  local size = tonumber(redis.call('HGET', sizes, name) or '0')
  redis.call('HDEL', sizes, name)
  redis.call('ZREM', index, name)
  redis.call('DEL', base .. name)
  redis.call('DECRBY', total, size)
end
for _, name in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now_ms, 'LIMIT', 0, 100)) do drop(name) end
if redis.call('HEXISTS', sizes, member) == 1 then drop(member) end
local size = string.len(value) + string.len(member)
redis.call('SET', base .. member, value, 'PX', ttl_ms)
redis.call('ZADD', index, now_ms + ttl_ms, member)
redis.call('HSET', sizes, member, size)
local used = tonumber(redis.call('INCRBY', total, size))
local count = tonumber(redis.call('ZCARD', index))
local rounds = 0
while (used > max_bytes or count > max_entries) and rounds < 1000 do
  local first = redis.call('ZRANGE', index, 0, 0)
  if #first == 0 then break end
  drop(first[1])
  used = tonumber(redis.call('GET', total) or '0')
  count = count - 1
  rounds = rounds + 1
end
return redis.call('HEXISTS', sizes, member)
"""


class RedisCache:
    """Entries shared by every process on one Redis; see the module docstring. Methods raise ``redis`` errors: the
    driver makes any failure a miss."""

    blocking = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        max_entries: int,
        max_bytes: int,
        timeout_s: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._wall = wall_clock
        # One hash tag for every key: on Redis Cluster the entries and their index share a slot, so one script can
        # keep them together.
        tag = "{" + prefix + ":cache}"
        self._base = f"{tag}:e:"
        self._meta = (f"{tag}:index", f"{tag}:sizes", f"{tag}:bytes")
        found = parse_redis_url(url)
        if isinstance(found, str):  # the schema read it already: only a State built around its validator
            raise ValueError(f"state.url {found}")
        # The state backend's connection settings (one server, Sentinel or Cluster, TLS), never retrying: a slow
        # Redis is a miss on the request path.
        self.redis = open_client(found, timeout=timeout_s, connect_timeout=max(timeout_s, 0.05))
        self._put = self.redis.register_script(_PUT)

    def get(self, key: str) -> bytes | None:
        found = self.redis.get(self._base + key)
        return found if isinstance(found, bytes) or found is None else None

    def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        """Keep ``value``; False when it was not kept (too large, a TTL of 0, or the first to go past the bounds)."""
        if len(value) + len(key) > self.max_bytes or ttl_s <= 0:
            return False
        now_ms = int(self._wall() * 1000)
        kept = self._put(
            keys=list(self._meta),
            args=[self._base, key, value, max(1, int(ttl_s * 1000)), now_ms, self.max_bytes, self.max_entries],
        )
        return bool(kept)

    def used_bytes(self) -> int:
        """What the entries take, as counted against ``max_bytes`` (keys and values)."""
        found = self.redis.get(self._meta[2])
        try:
            return int(found) if isinstance(found, bytes | str) else 0
        except ValueError:
            return 0

    def close(self) -> None:
        close_client(self.redis)
