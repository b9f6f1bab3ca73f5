"""Where the response cache keeps answers: the bounded in-process LRU (``memory``) and the shared, bounded Redis store
(``redis``), each implementing :class:`holyroute.core.cache.CacheStore`; ``factory`` chooses one from the
configuration. The stores know bytes and TTLs only: what is cached and under which key is decided in
:mod:`holyroute.core.cache`. They never import the router, the drivers or each other.
"""
