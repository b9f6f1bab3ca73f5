"""Client-side rate limits: how many requests and tokens an endpoint may still take (``rpm`` / ``tpm``).

:class:`TokenBucket` holds one limit: it refills continuously and says how long a request must wait for room. It
reads time only from the ``now`` it is given and never sleeps.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """A continuously refilling bucket of ``per_minute`` units. Not locked: the health book holds the lock."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, per_minute: float, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = self.capacity / 60.0
        self.level = self.capacity
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` units are available (0.0: now). More than the capacity waits for a full bucket."""
        self._refill(now)
        needed = min(amount, self.capacity)
        return 0.0 if self.level >= needed else (needed - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        """Spend ``amount`` (the level may go negative for a request larger than what is left: it is paid back)."""
        self._refill(now)
        self.level -= amount
