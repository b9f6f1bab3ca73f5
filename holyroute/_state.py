"""State backends: what the processes of one deployment share, and the in-process default.

The core keeps its working state locally (the :class:`~holyroute._health.HealthBook`, each rollout engine's
measurements) and reads only that on the request path. A backend decides what else the process learns and tells:

- changes to endpoint health made here (:meth:`StateBackend.publish`: cooldowns, ejections, restorations, quota,
  headroom), which a shared backend spreads to every other process and applies there;
- client-side ``rpm`` / ``tpm`` limits: when :attr:`StateBackend.shares_limits` is true, the core asks the backend
  for a grant (:meth:`StateBackend.acquire`, the only call that may cost a round trip on the request path) instead
  of taking from its local buckets, and settles each call's ``tpm`` grant with its real usage when it ends
  (:meth:`StateBackend.settle`, never a round trip);
- rollout state (:meth:`StateBackend.rollout_store`) and the rollout measurements of every process;
- spend counters per hour, day and month (:meth:`StateBackend.add_spend` / :meth:`StateBackend.spent`).

:class:`MemoryBackend` (``backend: memory`` or ``file``) shares nothing beyond the rollout store: each process is its
own router. ``backend: redis`` is :class:`holyroute._redis.RedisBackend`. A backend must never make a request fail:
when it cannot reach its store it says so once and the process carries on with what it knows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from ._core import Router
    from ._rollout import StateStore
    from .config import State

__all__ = ["HealthChange", "Leases", "MemoryBackend", "Period", "StateBackend", "open_backend", "period_key"]

Period = Literal["hour", "day", "month"]
PERIODS: tuple[Period, ...] = ("hour", "day", "month")
EventSink = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A change to an endpoint's health made by this process, for other processes to apply.

    ``until`` is wall-clock (Unix) time, so processes with different monotonic clocks agree on it. ``model`` is set
    for cooldowns and headroom (they are per endpoint and model) and empty otherwise.
    """

    kind: Literal["cooldown", "ejected", "restored", "quota", "headroom"]
    endpoint: str
    model: str = ""
    until: float = 0.0
    reason: str = ""
    tokens_left: int | None = None  # headroom: x-ratelimit-remaining-tokens, as last seen


def period_key(period: Period, wall: float) -> str:
    """The bucket a spend at Unix time ``wall`` falls in: ``2026112214`` (hour), ``20261122`` (day), ``202611``."""
    stamp = time.gmtime(wall)
    if period == "hour":
        return time.strftime("%Y%m%d%H", stamp)
    if period == "day":
        return time.strftime("%Y%m%d", stamp)
    return time.strftime("%Y%m", stamp)


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
        self._lock = threading.Lock()

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


class StateBackend(Protocol):
    """What the core asks of a state backend. Every method returns quickly and never raises for its store's sake."""

    name: str

    @property
    def shares_limits(self) -> bool:
        """True while rpm/tpm grants come from :meth:`acquire` (shared); False: the local buckets decide."""
        ...

    def attach(self, router: Router) -> None:
        """Start following and sharing for ``router`` (background work, if any, starts here)."""

    def close(self) -> None:
        """Stop background work and flush what is pending (bounded in time)."""

    async def aclose(self) -> None:
        """:meth:`close` from an event loop (also closes what the loop's :meth:`aacquire` opened)."""

    def acquire(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        """Take one request and ``tokens`` tokens from the endpoint's shared limits: 0.0 granted, > 0 the seconds
        until there is room (nothing taken), None when the store could not answer (decide locally)."""
        ...

    async def aacquire(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        """:meth:`acquire` for the event loop."""
        ...

    def publish(self, change: HealthChange) -> None:
        """Tell the other processes about a health change made here (non-blocking)."""

    def settle(self, endpoint: str, tpm: int, tokens: int) -> None:
        """A finished call's shared ``tpm`` grant, settled with what it used: give ``tokens`` back to the endpoint's
        shared bucket (negative: take that many more), which never leaves ``[-tpm, tpm]``. Non-blocking: no round
        trip on the request path."""

    def add_spend(self, name: str, usd: float) -> None:
        """Count ``usd`` against ``name`` (``route:chat``, ``shadow:chat``, ...) in this hour, day and month."""

    def spent(self, name: str, period: Period) -> float:
        """USD counted against ``name`` in the current ``period``, by every process that shares this backend."""
        ...

    def rollout_store(self) -> StateStore:
        """Where rollout state lives."""
        ...


class MemoryBackend:
    """Nothing shared between processes: health, limits, measurements and spend live in this process.

    Rollout state goes to ``store`` (a :class:`~holyroute._rollout.FileStore` for ``backend: file``, so processes on
    one host still follow one rollout).
    """

    name = "memory"
    shares_limits = False

    def __init__(self, store: StateStore | None = None, *, wall_clock: Callable[[], float] = time.time) -> None:
        if store is None:
            from ._rollout import MemoryStore

            store = MemoryStore()
        self._store = store
        self._wall = wall_clock
        self._spend: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def attach(self, router: Router) -> None:
        return None

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def acquire(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        return None

    async def aacquire(self, endpoint: str, rpm: int | None, tpm: int | None, tokens: int) -> float | None:
        return None

    def publish(self, change: HealthChange) -> None:
        return None

    def settle(self, endpoint: str, tpm: int, tokens: int) -> None:
        return None  # no shared bucket: the local ones are settled by the health book

    def add_spend(self, name: str, usd: float) -> None:
        now = self._wall()
        with self._lock:
            for period in PERIODS:
                key = (period, period_key(period, now), name)
                self._spend[key] = self._spend.get(key, 0.0) + usd
            if len(self._spend) > 4096:  # keep only the current buckets: nothing grows forever
                current = {(p, period_key(p, now)) for p in PERIODS}
                self._spend = {k: v for k, v in self._spend.items() if (k[0], k[1]) in current}

    def spent(self, name: str, period: Period) -> float:
        return self._spend.get((period, period_key(period, self._wall()), name), 0.0)

    def rollout_store(self) -> StateStore:
        return self._store


def open_backend(
    state: State,
    *,
    emit: EventSink,
    clock: Callable[[], float],
    wall_clock: Callable[[], float],
    read_only: bool = False,
) -> StateBackend:
    """The backend ``state`` configures. Redis is imported only when it is configured.

    ``read_only`` (``holyroute explain``): the backend reads what is shared and writes nothing, anywhere; rollout
    steps the router would take stay in memory.
    """
    if state.backend == "redis":
        from ._redis import RedisBackend

        return RedisBackend(state, emit=emit, clock=clock, wall_clock=wall_clock, read_only=read_only)
    from ._rollout import FileStore, MemoryStore, ReadOnlyStore

    store: StateStore = FileStore(state.path, emit=emit) if state.backend == "file" else MemoryStore()
    if read_only:
        store = ReadOnlyStore(store)
    return MemoryBackend(store, wall_clock=wall_clock)
