"""Builds the redis-py client a parsed ``state.url`` names (:mod:`holyroute.boundary.redis_url`): one server, Redis
Cluster (``RedisCluster``) or Sentinel (``Sentinel.master_for``), each sync or asyncio, with or without TLS; and
says which errors mean "Redis cannot be reached now" (degrade, keep what is pending, try again) rather than "Redis
refused this one command".

Every client is built never to retry on its own (``Retry(NoBackoff(), 0)``): a slow or moving Redis is a down Redis
for the request path, and the backend's sync thread finds the new topology when it comes back. A cluster client
refreshes its slot map after a failed command; a Sentinel client asks the Sentinels for the master on every new
connection, and drops a connection to a master that was demoted (``READONLY`` becomes a ``ConnectionError``).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ClusterError, RedisClusterException, TryAgainError

from holyroute.boundary.redis_url import RedisUrl

__all__ = ["FAILURES", "Client", "close_client", "open_async_client", "open_client", "unreachable"]

#: What a sync client is: one server (or Sentinel's master) or a cluster.
Client = redis.Redis | redis.cluster.RedisCluster

#: After a failed command a cluster client reads the slot map again at most this often (redis-py's default, 1 s,
#: would add up to a second to noticing that a replica took over).
TOPOLOGY_REFRESH_S = 0.1

#: Every error a Redis command may raise (a cluster's own are not all ``RedisError``s).
FAILURES: tuple[type[BaseException], ...] = (redis.RedisError, RedisClusterException, OSError)


def unreachable(error: BaseException) -> bool:
    """True when ``error`` says Redis (or the part of a cluster holding a key) cannot answer now, rather than that it
    refused one command: a connection error or timeout, a cluster that is down or moving (``CLUSTERDOWN``,
    ``TRYAGAIN``, a slot no node covers), a replica answering for a demoted master, a master refusing writes because
    its replicas are gone (``NOREPLICAS``: a Sentinel promoted one of them)."""
    if isinstance(error, redis.ResponseError) and str(error).startswith(("NOREPLICAS", "MASTERDOWN")):
        return True  # a master cut off from its replicas (min-replicas-to-write), or a replica cut off from its master
    return isinstance(
        error,
        redis.ConnectionError
        | redis.TimeoutError
        | ClusterError
        | TryAgainError
        | RedisClusterException
        | redis.ReadOnlyError
        | OSError,
    )


def _address(found: tuple[object, object] | list[object]) -> tuple[str, int]:
    host, port = found
    return (host.decode() if isinstance(host, bytes) else str(host)), int(str(port))


class _Sentinel(redis.sentinel.Sentinel):
    """Asks for the master as Redis's client guidelines say, ``SENTINEL GET-MASTER-ADDR-BY-NAME``: from the moment a
    replica is promoted it names the new master, where ``SENTINEL MASTERS`` (redis-py's way) names the old one until
    the whole failover ends (every other replica reconfigured: seconds), while the old master still takes writes."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        for number, sentinel in enumerate(self.sentinels):
            try:
                found = sentinel.sentinel_get_master_addr_by_name(service_name)
            except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
                continue
            if isinstance(found, tuple | list) and len(found) == 2:
                self.sentinels[0], self.sentinels[number] = sentinel, self.sentinels[0]  # ask it first next time
                return _address(found)
        raise redis.sentinel.MasterNotFoundError(f"no Sentinel names a master for {service_name!r}")


class _AsyncSentinel(redis.asyncio.sentinel.Sentinel):
    """:class:`_Sentinel` on asyncio."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        for number, sentinel in enumerate(self.sentinels):
            try:
                found = await sentinel.sentinel_get_master_addr_by_name(service_name)
            except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
                continue
            if isinstance(found, tuple | list) and len(found) == 2:
                self.sentinels[0], self.sentinels[number] = sentinel, self.sentinels[0]
                return _address(found)
        raise redis.sentinel.MasterNotFoundError(f"no Sentinel names a master for {service_name!r}")


def _tls(url: RedisUrl) -> dict[str, Any]:
    if not url.tls:
        return {}
    options: dict[str, Any] = {"ssl": True}
    if url.ca_file:
        options["ssl_ca_certs"] = url.ca_file
    if url.cert_file:
        options["ssl_certfile"] = url.cert_file
    if url.key_file:
        options["ssl_keyfile"] = url.key_file
    if url.check_hostname is not None:
        options["ssl_check_hostname"] = url.check_hostname
    if url.cert_reqs is not None:
        options["ssl_cert_reqs"] = url.cert_reqs
    return options


def _options(url: RedisUrl, timeout: float | None, connect_timeout: float) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": 0,
        "client_name": "holyroute",
        **_tls(url),
    }
    if url.username:
        options["username"] = url.username
    if url.password:
        options["password"] = url.password
    return options


def _sentinel_options(url: RedisUrl, timeout: float | None, connect_timeout: float) -> dict[str, Any]:
    """How the Sentinels themselves are asked (their own credentials, if any; the same TLS)."""
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout, **_tls(url)}
    if url.sentinel_username:
        options["username"] = url.sentinel_username
    if url.sentinel_password:
        options["password"] = url.sentinel_password
    return options


def open_client(url: RedisUrl, *, timeout: float | None, connect_timeout: float) -> Client:
    """A sync client for ``url`` that never retries on its own; ``timeout`` None for a blocking subscriber."""
    options = _options(url, timeout, connect_timeout)
    retry = redis.retry.Retry(NoBackoff(), 0)
    if url.kind == "cluster":
        nodes = [redis.cluster.ClusterNode(host, port) for host, port in url.hosts]  # type: ignore[no-untyped-call]
        return redis.cluster.RedisCluster(
            startup_nodes=nodes, retry=retry, topology_refresh_min_interval=TOPOLOGY_REFRESH_S, **options
        )
    if url.kind == "sentinel":
        sentinel = _Sentinel(
            list(url.hosts), sentinel_kwargs=_sentinel_options(url, timeout, connect_timeout), retry=retry, **options
        )
        master: redis.Redis = sentinel.master_for(url.service or "", db=url.db)
        return master
    if url.socket is not None:
        return redis.Redis(unix_socket_path=url.socket, db=url.db, retry=retry, **options)
    host, port = url.hosts[0]
    return redis.Redis(host=host, port=port, db=url.db, retry=retry, **options)


def close_client(client: Client) -> None:
    """Close ``client``: its connections, and for a Sentinel deployment's master client also its connections to the
    Sentinels, which closing the master's pool leaves open (each :func:`open_client` has Sentinels of its own)."""
    client.close()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        sentinel.close()


def open_async_client(url: RedisUrl, *, timeout: float, connect_timeout: float) -> Any:
    """The asyncio twin of :func:`open_client` (for the grant round trip on an event loop)."""
    options = _options(url, timeout, connect_timeout)
    retry = redis.asyncio.retry.Retry(NoBackoff(), 0)
    if url.kind == "cluster":
        nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in url.hosts]
        return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, retry=retry, **options)
    if url.kind == "sentinel":
        sentinel = _AsyncSentinel(
            list(url.hosts), sentinel_kwargs=_sentinel_options(url, timeout, connect_timeout), retry=retry, **options
        )
        return sentinel.master_for(url.service or "", db=url.db)
    if url.socket is not None:
        return redis.asyncio.Redis(unix_socket_path=url.socket, db=url.db, retry=retry, **options)
    host, port = url.hosts[0]
    return redis.asyncio.Redis(host=host, port=port, db=url.db, retry=retry, **options)
