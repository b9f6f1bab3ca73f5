"""Chooses the cache store a configuration asks for (``cache.backend``); Redis is imported only when configured."""

from __future__ import annotations

from holyroute.config.schema import Config
from holyroute.core.cache import CacheStore
from holyroute.state.cache.memory import MemoryCache

__all__ = ["open_cache"]


def open_cache(config: Config) -> CacheStore:
    """The store ``config.cache`` configures: the in-process LRU, or Redis at ``state.url`` under ``state.prefix``."""
    cache = config.cache
    if cache.backend == "redis":
        from holyroute.state.cache.redis import RedisCache
        from holyroute.state.factory import require_backend

        require_backend(config.state.model_copy(update={"backend": "redis"}))
        return RedisCache(
            config.state.url.get_secret_value(),
            prefix=config.state.prefix,
            max_entries=cache.max_entries,
            max_bytes=cache.max_bytes,
            timeout_s=cache.timeout_ms / 1000.0,
        )
    return MemoryCache(max_entries=cache.max_entries, max_bytes=cache.max_bytes)
