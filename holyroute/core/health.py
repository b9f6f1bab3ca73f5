"""Endpoint health: which endpoint may take traffic now, and for how long a rate-limited one cools down.

:class:`HealthBook` is the one place a call and the state backends ask; it answers from three parts, each usable and
tested on its own: :class:`~holyroute.core.ejection.Ejections` (passive health: consecutive failures eject an
endpoint, a half-open trial restores it, ``insufficient_quota`` takes it out; ``core/ejection.py``),
:class:`~holyroute.core.cooldowns.Cooldowns` (what the upstream said: 429 cooldowns and ``x-ratelimit-*`` headroom
per endpoint and model; ``core/cooldowns.py``) and :class:`~holyroute.core.rate_limits.RateLimits` (the configured
``rpm`` / ``tpm``, local or granted by a shared store, with the ``tpm`` debits a call settles when it ends;
``core/rate_limits.py``). The book itself keeps the active health checks' verdicts and converts changes to and from
other processes (wall-clock times, bounded by what this process would have decided itself). Time is read only from
the clock passed in; this module performs no I/O and never sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from holyroute.boundary.parse import HeaderLookup
from holyroute.config.schema import Health
from holyroute.core.cooldowns import DEFAULT_MAX_COOLDOWN_S, Cooldown, Cooldowns, server_delay
from holyroute.core.ejection import Ejections, Transition
from holyroute.core.ports import HealthChange
from holyroute.core.rate_limits import Debit, RateLimits
from holyroute.forking import new_lock

__all__ = [
    "Cooldown",
    "Debit",
    "HeaderLookup",
    "HealthBook",
    "ProbeStatus",
    "Transition",
    "server_delay",
]

#: What an active health check concluded about an endpoint.
ProbeStatus = Literal["healthy", "degraded", "unhealthy", "unknown"]


class HealthBook:
    """Everything known about endpoint health, against an injected monotonic clock. Thread-safe.

    Its parts are public for readers that need one concern only: :attr:`ejections` (5xx, connection errors,
    timeouts, quota), :attr:`cooldowns` (429s and rate-limit headroom, per endpoint and model) and
    :attr:`rate_limits` (configured ``rpm`` / ``tpm``). 429s are not failures: they cool the endpoint/model pair
    down (:meth:`cool`), and ``insufficient_quota`` ejects for ``quota_ejection_s``.
    """

    __slots__ = ("_lock", "_probes", "cooldowns", "ejections", "rate_limits")

    def __init__(
        self,
        clock: Callable[[], float],
        policy: Health | None = None,
        limits: Mapping[str, tuple[int | None, int | None]] | None = None,
        *,
        max_cooldown_s: float = DEFAULT_MAX_COOLDOWN_S,
    ) -> None:
        self.ejections = Ejections(policy)
        self.cooldowns = Cooldowns(max_cooldown_s)
        self.rate_limits = RateLimits(limits or {}, clock())
        self._probes: dict[str, tuple[ProbeStatus, float, float | None, str | None]] = {}
        self._lock = new_lock()

    @property
    def max_cooldown_s(self) -> float:
        """The longest any server-given duration (a reset, a retry-after) keeps a pair out: ``retry.max_cooldown_s``."""
        return self.cooldowns.max_cooldown_s

    @property
    def shared_limits(self) -> bool:
        """True while a shared backend grants rpm/tpm (the local buckets are then idle)."""
        return self.rate_limits.shared

    @shared_limits.setter
    def shared_limits(self, shared: bool) -> None:
        self.rate_limits.shared = shared

    # ---- active health checks -----------------------------------------------------------------------------------

    def record_probe(
        self,
        endpoint: str,
        status: ProbeStatus,
        now: float,
        *,
        latency_ms: float | None = None,
        error: str | None = None,
    ) -> ProbeStatus | None:
        """Store an active health check's verdict; returns the previous status when it changed, else None."""
        with self._lock:
            previous = self._probes.get(endpoint)
            self._probes[endpoint] = (status, now, latency_ms, error)
        old: ProbeStatus = previous[0] if previous is not None else "unknown"
        return old if old != status else None

    def probe_status(self, endpoint: str) -> ProbeStatus:
        """The last active health check verdict for ``endpoint`` ("unknown" when never probed)."""
        found = self._probes.get(endpoint)
        return found[0] if found is not None else "unknown"

    # ---- may this endpoint take a request? ----------------------------------------------------------------------

    def ejected(self, endpoint: str, now: float) -> str | None:
        """Why the endpoint is out of rotation (ejected, half-open trial in flight, out of quota), or None."""
        return self.ejections.ejected(endpoint, now)

    def out_of_quota(self, endpoint: str, now: float) -> bool:
        """Whether the provider said ``insufficient_quota`` recently (no panic mode brings it back)."""
        return self.ejections.out_of_quota(endpoint, now)

    def blocked(
        self, endpoint: str, model: str, now: float, tokens: int, *, limits_only: bool = False
    ) -> tuple[str, float] | None:
        """Why the pair cannot take a request of ``tokens`` estimated tokens now, and until when; or None.

        ``limits_only``: only the configured rpm/tpm limits (local or shared) count, not what the upstream said
        (cooldowns, rate-limit headroom): the persistence floor ignores health but never exceeds a configured limit.
        """
        if not limits_only:
            said = self.cooldowns.blocked(endpoint, model, now, tokens)
            if said is not None:
                return said
        return self.rate_limits.blocked(endpoint, tokens, now) if self.rate_limits.any else None

    def in_flight(self, endpoint: str) -> int:
        return self.ejections.in_flight(endpoint)

    def latency(self, endpoint: str) -> float | None:
        return self.ejections.latency(endpoint)

    # ---- what attempts report -----------------------------------------------------------------------------------

    def begin_attempt(self, endpoint: str, now: float, tokens: int, debits: list[Debit] | None = None) -> bool:
        """An attempt is being sent: count it in flight and charge the client-side budgets (the ``tpm`` debit, at
        most the bucket's capacity, is noted in ``debits`` for :meth:`settle`). Returns True when this attempt is
        the half-open trial of an endpoint whose ejection just ended (only its answer restores it)."""
        if self.rate_limits.any:
            self.rate_limits.charge(endpoint, tokens, now, debits)
        return self.ejections.begin(endpoint, now)

    def end_attempt(self, endpoint: str, *, trial: bool) -> None:
        """The attempt's answer (or error) is in; a trial that neither restored nor re-ejected is released."""
        self.ejections.end(endpoint, trial=trial)

    def success(
        self, endpoint: str, now: float, latency_s: float | None = None, *, trial: bool = False
    ) -> Transition | None:
        """The endpoint answered (any status that is not a failure). The trial's success restores it."""
        return self.ejections.success(endpoint, now, latency_s, trial=trial)

    def failure(
        self, endpoint: str, label: str, now: float, peers: Sequence[str], *, trial: bool = False
    ) -> Transition | None:
        """A 5xx, connection error or timeout (``label`` says which). May eject the endpoint; returns that change.

        ``peers`` are the endpoints of the target being served, for ``max_ejected_percent``.
        """
        return self.ejections.failure(endpoint, label, now, peers, trial=trial)

    def quota_exhausted(self, endpoint: str, now: float) -> Transition:
        """The provider said ``insufficient_quota``: out of rotation for ``quota_ejection_s``."""
        return self.ejections.quota_exhausted(endpoint, now)

    def record_headroom(self, endpoint: str, model: str, headers: HeaderLookup, now: float) -> bool:
        """Remember OpenAI's ``x-ratelimit-remaining-*`` / ``-reset-*`` for this endpoint and model. True when a
        limit is (nearly) used up: the moment other processes should hear of it (:meth:`headroom_change`)."""
        return self.cooldowns.record_headroom(endpoint, model, headers, now)

    def headroom_change(self, endpoint: str, model: str, now: float, wall: float) -> HealthChange | None:
        """The pair's headroom as a change for other processes (wall-clock times), if any is known."""
        return self.cooldowns.headroom_change(endpoint, model, now, wall)

    # ---- cooldowns (429s) ---------------------------------------------------------------------------------------

    def cooldown(self, endpoint: str, model: str, now: float) -> Cooldown | None:
        """The cooldown in force for this pair at ``now``, if any."""
        return self.cooldowns.cooldown(endpoint, model, now)

    def cool(self, endpoint: str, model: str, seconds: float, reason: str, now: float) -> Cooldown | None:
        """Keep the pair out of rotation for ``seconds`` (at most ``max_cooldown_s``, whoever asks); returns the new
        cooldown, or None if one as long exists (or ``seconds`` is no duration: nan, negative)."""
        return self.cooldowns.cool(endpoint, model, seconds, reason, now)

    # ---- rpm / tpm ----------------------------------------------------------------------------------------------

    def limits(self, endpoint: str) -> tuple[int | None, int | None]:
        """The endpoint's configured (rpm, tpm)."""
        return self.rate_limits.limits(endpoint)

    def limited(self, endpoint: str, until: float, reason: str) -> None:
        """A shared limit said no: keep the endpoint out of this process's picks until ``until``."""
        self.rate_limits.limited(endpoint, until, reason)

    def local_limit(
        self, endpoint: str, tokens: int, now: float, debits: list[Debit] | None = None
    ) -> tuple[str, float] | None:
        """The local buckets' verdict for one request, when the shared store could not give one (a grant's ``tpm``
        debit is noted in ``debits``, as :meth:`begin_attempt` notes it)."""
        return self.rate_limits.local_limit(endpoint, tokens, now, debits)

    def settle(
        self, debits: list[Debit], now: float, *, endpoint: str | None = None, used: int | None = None
    ) -> list[tuple[str, int, int]]:
        """Reconcile a finished call's ``tpm`` debits with what it used, and empty ``debits``; the shared store's
        debits come back as ``(endpoint, tpm, tokens to give back)`` (:meth:`RateLimits.settle` says how)."""
        return self.rate_limits.settle(debits, now, endpoint=endpoint, used=used)

    def share_limits(
        self,
        shared: bool,
        processes: int,
        now: float,
        levels: Mapping[str, tuple[float | None, float | None]] | None = None,
    ) -> dict[str, tuple[int, int]]:
        """Switch the rpm/tpm limits between the shared store and this process's buckets (each of ``processes``
        live processes takes its share of a limit when back on local buckets, from its share of ``levels``; back on
        the store, what the local buckets gave out meanwhile comes back: :meth:`RateLimits.share`)."""
        return self.rate_limits.share(shared, processes, now, levels)

    def taken_local(self) -> dict[str, tuple[int, int]]:
        """What the local buckets gave out since the last switch, without switching (:meth:`RateLimits.taken`)."""
        return self.rate_limits.taken()

    @property
    def limits_shared(self) -> bool:
        """Whether the rpm/tpm limits are granted by a shared store now (else the local buckets decide)."""
        return self.rate_limits.shared

    def forget_taken_local(self) -> None:
        """A forked child's: what the local buckets gave out before the fork is the parent's to charge."""
        self.rate_limits.forget_taken()

    # ---- sharing with other processes ---------------------------------------------------------------------------

    def apply(self, change: HealthChange, now: float, wall: float) -> None:
        """Apply a change another process made (wall-clock ``until`` converted to this process's clock). However far
        ahead ``until`` is, the change lasts at most what this process would have decided itself: ``max_cooldown_s``
        for cooldowns and headroom, ``max_ejection_s`` / ``quota_ejection_s`` for ejections."""
        policy = self.ejections.policy
        bound = {"ejected": policy.max_ejection_s, "quota": policy.quota_ejection_s}.get(
            change.kind, self.cooldowns.max_cooldown_s
        )
        left = min(change.until - wall, bound)  # nan stays nan: every use checks left > 0 or takes a max
        if change.kind == "cooldown":
            if left > 0:
                self.cooldowns.cool(change.endpoint, change.model, left, change.reason, now)
        elif change.kind == "headroom":
            self.cooldowns.apply_headroom(change, left, now)
        else:
            self.ejections.apply(change, left, now)

    def live_changes(self, now: float, wall: float) -> list[HealthChange]:
        """Everything in force here that other processes should know: what to push after a store outage."""
        return [
            *self.cooldowns.live_cooldowns(now, wall),
            *self.ejections.live(now, wall),
            *self.cooldowns.live_headroom(now, wall),
        ]
