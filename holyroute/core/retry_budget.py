"""The retry budget: how many retries the router may still spend (spend caps in USD are :mod:`holyroute.core.spend`).

:class:`RetryBudget` is Finagle's retry budget: over a sliding window, retries (failovers
included) may be at most ``ratio`` of the calls seen plus a small floor per second, so a total outage costs about
``1 + ratio`` upstream attempts per call beyond the persistence floor (``retry.min_attempts``, which the budget never
refuses). The router keeps one per route, as Envoy keeps one per cluster, so one route's outage cannot spend the
retries another needs. It reads time only from the ``now`` they are given and never sleep.
"""

from __future__ import annotations

import math

from holyroute.forking import new_lock

__all__ = ["RetryBudget"]


class RetryBudget:
    """Retries allowed over the last ``window_s``: ``ratio * calls + min_per_s * window_s``. Thread-safe.

    >>> budget = RetryBudget(ratio=0.2, min_per_s=0.0, window_s=10.0)
    >>> for _ in range(10):
    ...     budget.record_call(0.0)
    >>> [budget.try_spend(0.0) for _ in range(3)]
    [True, True, False]
    """

    __slots__ = ("_calls", "_lock", "_retries", "_slots", "_stamp", "min_per_s", "ratio", "window_s")

    def __init__(self, *, ratio: float, min_per_s: float, window_s: float) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._slots = max(1, math.ceil(window_s))
        self._calls = [0] * self._slots
        self._retries = [0] * self._slots
        self._stamp = [-1] * self._slots  # which whole second each slot holds
        self._lock = new_lock()

    def _slot(self, now: float) -> int:
        second = math.floor(now)
        index = second % self._slots
        if self._stamp[index] != second:
            self._stamp[index] = second
            self._calls[index] = 0
            self._retries[index] = 0
        return index

    def _totals(self, now: float) -> tuple[int, int]:
        oldest = math.floor(now) - self._slots + 1
        calls = retries = 0
        for index in range(self._slots):
            if self._stamp[index] >= oldest:
                calls += self._calls[index]
                retries += self._retries[index]
        return calls, retries

    def record_call(self, now: float) -> None:
        with self._lock:
            self._calls[self._slot(now)] += 1

    def try_spend(self, now: float) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is spent."""
        with self._lock:
            calls, retries = self._totals(now)
            if retries + 1 > self.ratio * calls + self.min_per_s * self.window_s:
                return False
            self._retries[self._slot(now)] += 1
            return True

    def state(self, now: float) -> tuple[int, int]:
        """(calls, retries) in the current window."""
        with self._lock:
            return self._totals(now)
