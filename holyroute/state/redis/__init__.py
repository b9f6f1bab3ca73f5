"""The Redis state backend: many processes and hosts act as one router.

Which module holds what: ``backend`` is :class:`~holyroute.state.redis.backend.RedisBackend`, the protocol the
core calls, the threads' lifecycle, and degrading and recovering; ``grants`` the rpm/tpm grant round trip (sync and
asyncio), the lease taken with it and the tpm owed by settled calls; ``sync`` the sync thread and its one pipeline
(what goes out, the snapshots read back); ``listener`` the pub/sub thread and how a message is applied; ``scripts``
the Lua scripts; ``reports`` the once-each problem events; ``store`` the rollout store; ``payloads`` the key names
and the total parsers of everything read back; ``connect`` the client for the deployment ``state.url`` names (one
server, Redis Cluster, Sentinel; TLS) and which errors mean Redis is away. The parts never import ``backend``: each
says what it uses of it in a small protocol, and ``grants``, ``sync`` and ``listener`` do not know each other except
that ``sync`` hands the owed tokens of ``grants`` to its pipeline.

What is shared, and how each piece keeps the request path fast:

- **Health** (cooldowns, ejections, quota, headroom) lives in one hash, ``<prefix>:{health}``. A change made here is
  written by a Lua script (keep the longer cooldown, drop expired fields, expire the hash after the last one) that
  also publishes it on ``<prefix>:events``; every process's listener thread applies it to its local
  :class:`~holyroute.core.health.HealthBook` within milliseconds, and the sync thread re-reads the whole hash every
  ``sync_interval_s`` in case a message was missed. The request path reads only the local book.
- **rpm / tpm limits** are token buckets in ``<prefix>:{limits:<endpoint>}``, taken by one Lua script against Redis's
  own clock: the one round trip a request may make, and only for an endpoint with such a limit. A busy process takes
  a small lease with its grant (its next 100 ms of demand, at most ``lease_fraction`` of the limit, only from what
  the bucket holds beyond the request: :class:`~holyroute.state.base.Leases`), so most requests make none. When a call
  ends, its ``tpm`` grant is settled with what it used (a 400 gives it all back) without a round trip of its own:
  what each endpoint is owed is added up here and sent with this process's next grant request or sync, whichever
  comes first (a large amount wakes the sync at once).
- **Rollouts**: state in ``<prefix>:{rollout:<route>}:state`` (a read, then a compare-and-set script, so two processes
  never both advance a step), measurements in ``<prefix>:{rollout:<route>}:m:<window>:<arm>`` as counters and
  latency-sketch buckets that every process adds to (``HINCRBY``), so the analysis sees every process's calls.
- **Spend** per hour, day and month in ``<prefix>:{spend}:<period>:<bucket>``, in numbered batches a script counts
  at most once, each kept a few seconds after a master took it and sent again if a failover replaced that master.

Measurements and spend are sent in one pipeline per ``sync_interval_s`` by a background thread, which reads the
snapshots back in the same round trip. Every key carries a hash tag, so one script's keys share a Redis Cluster
slot, and every key but a rollout's state (one per route) expires.

When Redis is down or slower than ``timeout_ms``, nothing fails: the process routes on what it knows, emits
``holyroute.state_degraded`` once, keeps its measurements and spend, limits itself to its share of each rpm/tpm limit
(the limit divided by the processes last seen alive, from what the shared bucket last held), and when Redis answers
again pushes what it learnt, charges the shared buckets with what it gave out alone, re-reads everything and emits
``holyroute.state_restored``. The URL may hold a password: it is never logged.
"""
