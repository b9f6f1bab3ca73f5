"""Client-side rate limits: how many requests and tokens an endpoint may still take (``rpm`` / ``tpm``).

:class:`TokenBucket` holds one limit: it refills continuously and says how long a request must wait for room.
:class:`RateLimits` holds every endpoint's configured buckets, whether a shared store grants them instead (then the
buckets are idle), and the ``tpm`` debits a call settles with what it really used when it ends. A bucket never gives
one request more than it holds when full. Time is read only from the ``now`` each method is given; no I/O, no sleep.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from holyroute.forking import new_lock

__all__ = ["Debit", "RateLimits", "TokenBucket"]


class TokenBucket:
    """A continuously refilling bucket of ``per_minute`` units. Not locked: :class:`RateLimits` holds the lock."""

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


@dataclass(slots=True)
class Debit:
    """Tokens one attempt of a call took from an endpoint's ``tpm`` bucket, to settle when the call ends: this
    process's local ``bucket``, or with ``bucket`` None the shared store's, whose capacity is ``tpm``."""

    endpoint: str
    bucket: TokenBucket | None
    tokens: float
    tpm: int = 0


@dataclass(slots=True)
class _Limits:
    """One endpoint's buckets; changed only under the lock of :class:`RateLimits`."""

    configured: tuple[int | None, int | None] = (None, None)  # the configured (rpm, tpm)
    rpm: TokenBucket | None = None
    tpm: TokenBucket | None = None
    limited_until: float = 0.0  # a shared limit said no until then
    limited_reason: str = ""
    taken: tuple[int, int] = (0, 0)  # requests and tokens the local buckets gave out since the last switch


class RateLimits:
    """Every endpoint's configured ``rpm`` / ``tpm``, as local buckets or granted by a shared store. Thread-safe.

    ``limits`` maps an endpoint to its configured ``(rpm, tpm)``; endpoints without either are never limited here.
    """

    __slots__ = ("_endpoints", "_lock", "any", "shared")

    def __init__(self, limits: Mapping[str, tuple[int | None, int | None]], now: float) -> None:
        self._endpoints: dict[str, _Limits] = {
            name: _Limits((rpm, tpm), TokenBucket(rpm, now) if rpm else None, TokenBucket(tpm, now) if tpm else None)
            for name, (rpm, tpm) in limits.items()
        }
        self._lock = new_lock()
        #: Whether any endpoint has a limit: when none has, the health book never asks (a call less per step).
        self.any = bool(self._endpoints)
        #: True while a shared backend grants rpm/tpm (the local buckets are then idle).
        self.shared = False

    def limits(self, endpoint: str) -> tuple[int | None, int | None]:
        """The endpoint's configured (rpm, tpm)."""
        state = self._endpoints.get(endpoint)
        return state.configured if state is not None else (None, None)

    def blocked(self, endpoint: str, tokens: int, now: float) -> tuple[str, float] | None:
        """Why the endpoint cannot take a request of ``tokens`` estimated tokens now, and until when; or None: a
        shared limit said no recently (:meth:`limited`), or, while no shared store grants, a local bucket is short."""
        state = self._endpoints.get(endpoint)
        if state is None:
            return None
        if state.limited_until > now:
            return state.limited_reason, state.limited_until
        if not self.shared and (state.rpm is not None or state.tpm is not None):
            with self._lock:
                return _no_room(state, tokens, now, "")
        return None

    def charge(self, endpoint: str, tokens: int, now: float, debits: list[Debit] | None = None) -> None:
        """An attempt is being sent: take one request and its tokens from the local buckets (idle while shared), the
        ``tpm`` debit (at most the bucket's capacity) noted in ``debits`` for :meth:`settle`."""
        state = self._endpoints.get(endpoint)
        if state is None or self.shared:
            return
        with self._lock:
            _take(endpoint, state, tokens, now, debits)

    def local_limit(
        self, endpoint: str, tokens: int, now: float, debits: list[Debit] | None = None
    ) -> tuple[str, float] | None:
        """The local buckets' verdict for one request, when the shared store could not give one: why not and until
        when, or None and the request is charged (its ``tpm`` debit noted in ``debits``, as :meth:`charge` notes it)."""
        state = self._endpoints.get(endpoint)
        if state is None:
            return None
        with self._lock:
            blocked = _no_room(state, tokens, now, " (local share)")
            if blocked is None:
                _take(endpoint, state, tokens, now, debits)
        return blocked

    def limited(self, endpoint: str, until: float, reason: str) -> None:
        """A shared limit said no: keep the endpoint out of this process's picks until ``until``."""
        with self._lock:
            state = self._endpoints.get(endpoint)
            if state is None:
                state = self._endpoints.setdefault(endpoint, _Limits())
                self.any = True
            if until > state.limited_until:
                state.limited_until = until
                state.limited_reason = reason

    def settle(
        self, debits: list[Debit], now: float, *, endpoint: str | None = None, used: int | None = None
    ) -> list[tuple[str, int, int]]:
        """Reconcile a finished call's ``tpm`` debits with what it used, and empty ``debits``.

        The debit of the attempt that answered (the last one on ``endpoint``) becomes ``used`` tokens, at most the
        bucket's capacity: the difference is credited back, or taken. With ``used`` unknown (``None``) it stays as
        estimated. Every other debit is credited back in full: those attempts got no answer that used tokens (a
        400, a 429, an error). A local bucket never rises above its capacity nor falls below minus its capacity.
        Debits from the shared store are returned as ``(endpoint, tpm, tokens to give back)`` (negative: to take),
        one per endpoint, for the state backend to settle there.
        """
        if not debits:
            return []
        shared: dict[str, tuple[int, int]] = {}  # endpoint -> (tpm, tokens to give back)
        kept = None
        if endpoint is not None:
            kept = next((debit for debit in reversed(debits) if debit.endpoint == endpoint), None)
        with self._lock:
            for debit in debits:
                bucket = debit.bucket
                capacity = bucket.capacity if bucket is not None else float(debit.tpm)
                if debit is kept:
                    if used is None:
                        continue
                    credit = debit.tokens - min(max(used, 0), capacity)
                else:
                    credit = debit.tokens
                if bucket is None:
                    total = shared.get(debit.endpoint, (debit.tpm, 0))[1]
                    shared[debit.endpoint] = (debit.tpm, total + round(credit))
                    continue
                bucket.take(-credit, now)
                bucket.level = min(bucket.capacity, max(-bucket.capacity, bucket.level))
        debits.clear()
        return [(name, tpm, tokens) for name, (tpm, tokens) in shared.items() if tokens]

    def share(
        self,
        shared: bool,
        processes: int,
        now: float,
        levels: Mapping[str, tuple[float | None, float | None]] | None = None,
    ) -> dict[str, tuple[int, int]]:
        """Switch the limits between the shared store and this process's buckets.

        Back on local buckets (the store is away), each of ``processes`` live processes takes its share of each
        limit. A bucket starts with its share of what the shared one was last seen to hold (``levels``: requests,
        tokens, refilled to ``now``), so the processes together take no more than the shared bucket would have
        given; with nothing known it starts full, so a degraded process serves at once (the processes together may
        then exceed a limit by at most one limit's worth, what the shared bucket had already granted). Back on the
        shared store, returns what each endpoint's local buckets gave out meanwhile (requests, tokens), for the
        store to be charged with it.
        """
        with self._lock:
            self.shared = shared
            if shared:
                taken = {name: state.taken for name, state in self._endpoints.items() if any(state.taken)}
                for state in self._endpoints.values():
                    state.taken = (0, 0)
                return taken
            share = max(1, processes)
            for name, state in self._endpoints.items():
                rpm, tpm = state.configured
                known = (levels or {}).get(name, (None, None))
                if rpm:
                    state.rpm = _share_of(rpm / share, known[0], share, now)
                if tpm:
                    state.tpm = _share_of(tpm / share, known[1], share, now)
                state.taken = (0, 0)
            return {}

    def forget_taken(self) -> None:
        """Forget what the local buckets gave out so far: in a forked child, that was its parent's, to charge."""
        with self._lock:
            for state in self._endpoints.values():
                state.taken = (0, 0)

    def taken(self) -> dict[str, tuple[int, int]]:
        """What each endpoint's local buckets gave out since the last switch (requests, tokens), without switching:
        the shared store can be charged with it before it decides again."""
        with self._lock:
            return {name: state.taken for name, state in self._endpoints.items() if any(state.taken)}


def _share_of(capacity: float, level: float | None, share: int, now: float) -> TokenBucket:
    """A bucket of ``capacity``, holding its share of ``level`` (full when the level is unknown)."""
    bucket = TokenBucket(capacity, now)
    if level is not None:
        bucket.level = min(capacity, max(0.0, level) / share)
    return bucket


def _no_room(state: _Limits, tokens: int, now: float, where: str) -> tuple[str, float] | None:
    """Which of the endpoint's buckets cannot take one request of ``tokens`` now, and until when; None: both can.
    Called under the lock; ``where`` ends the reason (" (local share)")."""
    if state.rpm is not None:
        wait = state.rpm.wait_for(1, now)
        if wait > 0:
            return f"rpm {state.rpm.capacity:.0f} reached{where}", now + wait
    if state.tpm is not None:
        wait = state.tpm.wait_for(tokens, now)
        if wait > 0:
            return f"tpm {state.tpm.capacity:.0f} reached{where}", now + wait
    return None


def _take(endpoint: str, state: _Limits, tokens: int, now: float, debits: list[Debit] | None) -> None:
    """Charge one request to the endpoint's buckets, counted in what they gave out. Called under the lock."""
    if state.rpm is not None:
        state.rpm.take(1, now)
    if state.tpm is not None:
        _debit(endpoint, state.tpm, tokens, now, debits)
    if state.rpm is not None or state.tpm is not None:
        state.taken = (state.taken[0] + 1, state.taken[1] + (tokens if state.tpm is not None else 0))


def _debit(endpoint: str, bucket: TokenBucket, tokens: float, now: float, debits: list[Debit] | None) -> None:
    """Take one request's tokens from a local bucket: never more than it holds when full, never leaving it below
    minus its capacity (so it is full again within two minutes whatever was asked); noted in ``debits``."""
    bucket.take(0.0, now)  # refilled up to now
    before = bucket.level
    bucket.level = max(before - min(max(tokens, 0.0), bucket.capacity), -bucket.capacity)
    if debits is not None:
        debits.append(Debit(endpoint, bucket, before - bucket.level))
