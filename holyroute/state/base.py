"""State backends: what the processes of one deployment share, and the in-process default.

The core keeps its working state locally (the :class:`~holyroute.core.health.HealthBook`, each rollout engine's
measurements) and reads only that on the request path. A backend decides what else the process learns and tells:

- changes to endpoint health made here (:meth:`StateBackend.publish`: cooldowns, ejections, restorations, quota,
  headroom), which a shared backend spreads to every other process and applies there;
- client-side ``rpm`` / ``tpm`` limits: when :attr:`StateBackend.shares_limits` is true, the core asks the backend
  for a grant (:meth:`StateBackend.acquire`, the only call that may cost a round trip on the request path) instead
  of taking from its local buckets, and settles each call's ``tpm`` grant with its real usage when it ends
  (:meth:`StateBackend.settle`, never a round trip);
- rollout state (:meth:`StateBackend.rollout_store`) and the rollout measurements of every process;
- spend counters per hour, day and month (:meth:`StateBackend.add_spend` / :meth:`StateBackend.spent`).

:class:`holyroute.state.memory.MemoryBackend` (``backend: memory`` or ``file``) shares nothing beyond the rollout
store: each process is its own router. ``backend: redis`` is
:class:`holyroute.state.redis.backend.RedisBackend`. A backend must never make a request fail: when it cannot reach
its store it says so once and the process carries on with what it knows.

The interface itself (:class:`StateBackend`) and its value types are the core's (:mod:`holyroute.core.ports`): the
core states what it needs, the backends here implement it, and :mod:`holyroute.state.factory` chooses one. This
module imports no backend.
"""

from __future__ import annotations

from collections.abc import Callable

from holyroute.core.ports import PERIODS, AttachedRouter, HealthChange, Period, StateBackend, period_key
from holyroute.forking import new_lock
from holyroute.rollout.engine import RolloutState, StateStore

__all__ = [
    "PERIODS",
    "AttachedRouter",
    "HealthChange",
    "Leases",
    "Period",
    "ReadOnlyStore",
    "StateBackend",
    "period_key",
]


class _Lease:
    __slots__ = ("requests", "seen", "since", "tokens", "until")

    def __init__(self, now: float) -> None:
        self.requests = 0  # requests granted ahead and not used yet
        self.tokens = 0  # tokens granted ahead and not used yet
        self.until = 0.0  # what is left is dropped after this (monotonic time)
        self.since = now  # start of the current demand window
        self.seen = 0  # acquires in the current window


class Leases:
    """Shared rpm/tpm grants taken ahead of demand, so most requests spend no round trip on a shared limit.

    A process that asks for room under an endpoint's shared limit often asks again within milliseconds. Instead of
    one round trip each, a grant may cover the requests this process expects in the next ``horizon_s`` (from its
    recent rate), capped at ``fraction`` of the limit (so a process never holds more than that share of it ahead of
    use) and only from what the shared bucket holds beyond this request: when the limit binds, the bucket holds less
    than two requests and every grant is for one, exactly as without leases. What a lease still holds after
    ``ttl_s`` is dropped, never returned: the shared limit can only be undershot by it, never exceeded. ``fraction``
    0 turns leasing off. Sans-I/O and thread-safe; the backend does the asking.
    """

    __slots__ = ("_clock", "_leases", "_lock", "fraction", "horizon_s", "ttl_s")

    def __init__(
        self, clock: Callable[[], float], *, fraction: float = 0.01, horizon_s: float = 0.1, ttl_s: float = 1.0
    ) -> None:
        self._clock = clock
        self.fraction = fraction
        self.horizon_s = horizon_s
        self.ttl_s = ttl_s
        self._leases: dict[str, _Lease] = {}
        self._lock = new_lock()

    def take(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> tuple[int, int] | None:
        """Serve the request from this process's lease (``None``), or say what to ask the store for: ``(requests,
        tokens)`` including this request's own one and ``tokens``."""
        now = self._clock()
        with self._lock:
            lease = self._leases.get(endpoint)
            if lease is None:
                lease = self._leases[endpoint] = _Lease(now)
            if now - lease.since >= 1.0:  # about the last second of demand: halve what is older, as half a second
                lease.seen //= 2
                lease.since = now - 0.5
            lease.seen += 1
            if lease.until > now and (not rpm or lease.requests >= 1) and (not tpm or lease.tokens >= tokens):
                lease.requests -= 1
                lease.tokens -= tokens
                return None
            if self.fraction <= 0:
                return 1, tokens
            rate = lease.seen / max(now - lease.since, 0.25)
            ahead = int(rate * self.horizon_s)
            requests = 1 + max(0, min(ahead, int(rpm * self.fraction) - 1 if rpm else ahead))
            want = tokens * requests
            if tpm:
                want = max(tokens, min(want, int(tpm * self.fraction)))
            return requests, want

    def granted(self, endpoint: str, requests: int, tokens: int, used_tokens: int) -> None:
        """The store granted ``requests`` and ``tokens``; one request and ``used_tokens`` go to the caller now."""
        with self._lock:
            lease = self._leases.get(endpoint)
            if lease is None:
                return
            lease.requests = max(0, requests - 1)
            lease.tokens = max(0, tokens - used_tokens)
            lease.until = self._clock() + self.ttl_s

    def clear(self) -> None:
        """Drop every lease (the store went away or came back: its buckets are the truth again)."""
        with self._lock:
            for lease in self._leases.values():
                lease.requests = lease.tokens = 0
                lease.until = 0.0


class ReadOnlyStore:
    """A view of ``store`` that is never written (``holyroute explain``): changes stay in this object."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._changed: dict[str, RolloutState] = {}

    def load(self, route: str) -> RolloutState | None:
        found = self._changed.get(route)
        return found if found is not None else self._store.load(route)

    def update(self, route: str, change: Callable[[RolloutState | None], RolloutState | None]) -> RolloutState | None:
        new = change(self.load(route))
        if new is not None:
            self._changed[route] = new
        return new
