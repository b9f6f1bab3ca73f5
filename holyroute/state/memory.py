"""The in-process backend (``backend: memory`` and ``file``): nothing shared between processes but the rollout store."""

from __future__ import annotations

import time
from collections.abc import Callable

from holyroute.core.ports import PERIODS, AttachedRouter, HealthChange, Period, period_key
from holyroute.forking import new_lock
from holyroute.rollout.engine import MemoryStore, StateStore

__all__ = ["MemoryBackend"]


class MemoryBackend:
    """Nothing shared between processes: health, limits, measurements and spend live in this process.

    Rollout state goes to ``store`` (a :class:`~holyroute.state.file.FileStore` for ``backend: file``, so processes on
    one host still follow one rollout).
    """

    name = "memory"
    shares_limits = False

    def __init__(self, store: StateStore | None = None, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._store: StateStore = store if store is not None else MemoryStore()
        self._wall = wall_clock
        self._spend: dict[tuple[str, str, str], float] = {}
        self._lock = new_lock()

    def attach(self, router: AttachedRouter) -> None:
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
