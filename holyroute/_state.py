"""State backends: what the processes of one deployment share, and the in-process default.

The core keeps its working state locally (the :class:`~holyroute._health.HealthBook`, each rollout engine's
measurements) and reads only that on the request path. A backend decides what else the process learns and tells:

- changes to endpoint health made here (:meth:`StateBackend.publish`: cooldowns, ejections, restorations, quota,
  headroom), which a shared backend spreads to every other process and applies there;
- client-side ``rpm`` / ``tpm`` limits: when :attr:`StateBackend.shares_limits` is true, the core asks the backend
  for a grant (:meth:`StateBackend.acquire`, the only call that may cost a round trip on the request path) instead
  of taking from its local buckets;
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

__all__ = ["HealthChange", "MemoryBackend", "Period", "StateBackend", "open_backend", "period_key"]

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
    state: State, *, emit: EventSink, clock: Callable[[], float], wall_clock: Callable[[], float]
) -> StateBackend:
    """The backend ``state`` configures. Redis is imported only when it is configured."""
    if state.backend == "redis":
        from ._redis import RedisBackend

        return RedisBackend(state, emit=emit, clock=clock, wall_clock=wall_clock)
    from ._rollout import FileStore, MemoryStore

    store: StateStore = FileStore(state.path) if state.backend == "file" else MemoryStore()
    return MemoryBackend(store, wall_clock=wall_clock)
