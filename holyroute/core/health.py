"""Endpoint health: which endpoint may take traffic now, and for how long a rate-limited one cools down.

Cooldowns are keyed by (endpoint, upstream model), because providers rate-limit per model: a 429 for ``gpt-4.1``
says nothing about ``gpt-4.1-mini`` on the same key. Durations come from the answer's own headers, in the order a
server means them: ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date), then OpenAI's
``x-ratelimit-reset-requests`` / ``-tokens`` for the limit that ran out; the boundary's total parsers read them
(``boundary/parse.py``), so every duration is within ``[0, max_cooldown_s]``. The local ``rpm`` / ``tpm`` buckets never
take more than they hold from one request, and a call's ``tpm`` debits are settled with what it really used when it
ends (:meth:`HealthBook.settle`). Time is read only from the clock passed in; this module performs no I/O and never
sleeps.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from holyroute.boundary.parse import MAX_TOKENS, HeaderLookup, header_count, header_seconds, header_text
from holyroute.config.schema import Health, Retry
from holyroute.core.ports import HealthChange
from holyroute.core.rate_limits import TokenBucket

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

#: The cap on a server-given duration when none is configured: ``retry.max_cooldown_s``'s default.
_DEFAULT_MAX_S: float = Retry().max_cooldown_s


def server_delay(headers: HeaderLookup, now_wall: float, max_s: float = _DEFAULT_MAX_S) -> tuple[float, str] | None:
    """How long the server asked us to stay away (seconds within ``[0, max_s]``) and which header said so; ``None``
    when no header says so in a form the boundary reads. Never raises."""
    value = headers.get("retry-after-ms")
    seconds = header_seconds(value, max_s=max_s, scale=0.001)
    if value is not None and seconds is not None:
        return seconds, f"retry-after-ms {header_text(value)}"
    value = headers.get("retry-after")
    seconds = header_seconds(value, max_s=max_s, now_wall=now_wall)
    if value is not None and seconds is not None:
        numeric = header_seconds(value, max_s=max_s) is not None
        return seconds, f"retry-after {header_text(value)}" + ("s" if numeric and value.strip()[-1:].isdigit() else "")
    resets = []
    for kind in ("requests", "tokens"):
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        if reset is None:
            continue
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        seconds = header_seconds(reset, max_s=max_s, now_wall=now_wall)
        # Only the limit that ran out explains the 429; when remaining is absent we cannot tell, so count it.
        if seconds is not None and (remaining is None or header_count(remaining) == 0):
            resets.append((seconds, f"x-ratelimit-reset-{kind} {header_text(reset)}"))
    if resets:
        return max(resets)
    return None


def _seconds(value: float) -> str:
    """``30s``, ``1.5s``, ``3600s``: durations as people write them in reasons."""
    return f"{value:.0f}s" if value >= 100 or value == int(value) else f"{value:.3g}s"


@dataclass(frozen=True, slots=True)
class Cooldown:
    """An endpoint/model pair that takes no traffic until ``until`` (monotonic seconds)."""

    endpoint: str
    model: str
    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class Transition:
    """An endpoint changed state; the core turns this into an event."""

    event: str  # "holyroute.endpoint_ejected" | "holyroute.endpoint_restored"
    endpoint: str
    reason: str
    ejection_s: float | None = None
    quota: bool = False  # ejected for insufficient_quota


@dataclass(slots=True)
class Debit:
    """Tokens one attempt of a call took from an endpoint's ``tpm`` bucket, to settle when the call ends: this
    process's local ``bucket``, or with ``bucket`` None the shared store's, whose capacity is ``tpm``."""

    endpoint: str
    bucket: TokenBucket | None
    tokens: float
    tpm: int = 0


@dataclass(slots=True)
class _Endpoint:
    """Mutable per-endpoint state; changed only under the book's lock."""

    failures: int = 0
    labels: list[str] = field(default_factory=list)
    ejected_until: float = 0.0
    ejected_for: float = 0.0
    level: int = 0  # ejections in a row: the multiplier of the next ejection
    healthy_since: float | None = None
    half_open: bool = False
    trial: bool = False  # the half-open trial request is in flight
    quota_until: float = 0.0
    in_flight: int = 0
    latency_s: float | None = None  # moving average time to headers of successful attempts
    rpm: TokenBucket | None = None
    tpm: TokenBucket | None = None
    limits: tuple[int | None, int | None] = (None, None)  # the configured (rpm, tpm)
    limited_until: float = 0.0  # a shared limit said no until then
    limited_reason: str = ""
    taken_local: tuple[int, int] = (0, 0)  # requests and tokens taken from the local buckets since they took over


@dataclass(slots=True)
class _Headroom:
    """What an endpoint's rate-limit headers last said for one model."""

    requests_until: float = 0.0
    tokens_left: int | None = None
    tokens_until: float = 0.0  # when the token count resets


class HealthBook:
    """Everything known about endpoint health, against an injected monotonic clock. Thread-safe.

    Passive health follows Envoy's outlier detection: ``consecutive_failures`` 5xx / connection errors / timeouts
    eject an endpoint for ``base_ejection_s`` x (ejections in a row), capped at ``max_ejection_s``; when the ejection
    ends, one trial request is let through (half-open) and its answer restores or re-ejects the endpoint; the
    multiplier decays by one for every ``base_ejection_s`` of health. 429s are not failures here: they cool the
    endpoint/model pair down instead (:meth:`cool`), and ``insufficient_quota`` ejects for ``quota_ejection_s``.
    """

    __slots__ = (
        "_clock",
        "_cooldowns",
        "_endpoints",
        "_headroom",
        "_lock",
        "_policy",
        "_probes",
        "max_cooldown_s",
        "shared_limits",
    )

    def __init__(
        self,
        clock: Callable[[], float],
        policy: Health | None = None,
        limits: Mapping[str, tuple[int | None, int | None]] | None = None,
        *,
        max_cooldown_s: float = _DEFAULT_MAX_S,
    ) -> None:
        self._clock = clock
        self._policy = policy or Health()
        #: The longest any server-given duration (a reset, a retry-after) keeps a pair out: ``retry.max_cooldown_s``.
        self.max_cooldown_s = max_cooldown_s
        self._cooldowns: dict[tuple[str, str], Cooldown] = {}
        self._headroom: dict[tuple[str, str], _Headroom] = {}
        self._probes: dict[str, tuple[ProbeStatus, float, float | None, str | None]] = {}
        self._endpoints: dict[str, _Endpoint] = {}
        self._lock = threading.Lock()
        #: True while a shared backend grants rpm/tpm (the local buckets are then idle).
        self.shared_limits = False
        now = clock()
        for name, (rpm, tpm) in (limits or {}).items():
            state = self._state(name)
            state.limits = (rpm, tpm)
            state.rpm = TokenBucket(rpm, now) if rpm else None
            state.tpm = TokenBucket(tpm, now) if tpm else None

    def _state(self, endpoint: str) -> _Endpoint:
        found = self._endpoints.get(endpoint)
        if found is None:
            found = self._endpoints.setdefault(endpoint, _Endpoint())
        return found

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
        state = self._endpoints.get(endpoint)
        if state is None:
            return None
        if state.quota_until > now:
            return f"out of quota for {state.quota_until - now:.0f}s more"
        if state.ejected_until > now:
            return f"ejected for {state.ejected_until - now:.1f}s more"
        if state.trial:
            return "half-open: its trial request is in flight"
        return None

    def out_of_quota(self, endpoint: str, now: float) -> bool:
        """Whether the provider said ``insufficient_quota`` recently (no panic mode brings it back)."""
        state = self._endpoints.get(endpoint)
        return state is not None and state.quota_until > now

    def blocked(
        self, endpoint: str, model: str, now: float, tokens: int, *, limits_only: bool = False
    ) -> tuple[str, float] | None:
        """Why the pair cannot take a request of ``tokens`` estimated tokens now, and until when; or None.

        ``limits_only``: only the configured rpm/tpm limits (local or shared) count, not what the upstream said
        (cooldowns, rate-limit headroom): the persistence floor ignores health but never exceeds a configured limit.
        """
        cooldown = None if limits_only else self.cooldown(endpoint, model, now)
        if cooldown is not None:
            return f"cooling down ({cooldown.reason})", cooldown.until
        room = None if limits_only else self._headroom.get((endpoint, model))
        if room is not None:
            if room.requests_until > now:
                return "x-ratelimit-remaining-requests 0", room.requests_until
            if room.tokens_left is not None and tokens > room.tokens_left and room.tokens_until > now:
                return f"x-ratelimit-remaining-tokens {room.tokens_left} < estimate {tokens}", room.tokens_until
        state = self._endpoints.get(endpoint)
        if state is None:
            return None
        if state.limited_until > now:
            return state.limited_reason, state.limited_until
        if not self.shared_limits and (state.rpm is not None or state.tpm is not None):
            with self._lock:
                if state.rpm is not None:
                    wait = state.rpm.wait_for(1, now)
                    if wait > 0:
                        return f"rpm {state.rpm.capacity:.0f} reached", now + wait
                if state.tpm is not None:
                    wait = state.tpm.wait_for(tokens, now)
                    if wait > 0:
                        return f"tpm {state.tpm.capacity:.0f} reached", now + wait
        return None

    # ---- what attempts report -----------------------------------------------------------------------------------

    def begin_attempt(self, endpoint: str, now: float, tokens: int, debits: list[Debit] | None = None) -> bool:
        """An attempt is being sent: count it in flight and charge the client-side budgets (the ``tpm`` debit, at
        most the bucket's capacity, is noted in ``debits`` for :meth:`settle`). Returns True when this attempt is
        the half-open trial of an endpoint whose ejection just ended (only its answer restores it)."""
        with self._lock:
            state = self._state(endpoint)
            state.in_flight += 1
            if not self.shared_limits:
                if state.rpm is not None:
                    state.rpm.take(1, now)
                if state.tpm is not None:
                    _debit(endpoint, state.tpm, tokens, now, debits)
                if state.rpm is not None or state.tpm is not None:
                    requests, taken = state.taken_local
                    state.taken_local = (requests + 1, taken + (tokens if state.tpm is not None else 0))
            if state.half_open and not state.trial and state.ejected_until <= now:
                state.trial = True
                return True
            return False

    def end_attempt(self, endpoint: str, *, trial: bool) -> None:
        """The attempt's answer (or error) is in; a trial that neither restored nor re-ejected is released."""
        with self._lock:
            state = self._state(endpoint)
            state.in_flight = max(0, state.in_flight - 1)
            if trial:
                state.trial = False

    def success(
        self, endpoint: str, now: float, latency_s: float | None = None, *, trial: bool = False
    ) -> Transition | None:
        """The endpoint answered (any status that is not a failure). The trial's success restores it."""
        state = self._endpoints.get(endpoint)
        if state is None or (not state.failures and not trial and latency_s is None):
            return None
        with self._lock:
            if latency_s is not None:
                state.latency_s = latency_s if state.latency_s is None else 0.8 * state.latency_s + 0.2 * latency_s
            if state.ejected_until > now:
                return None  # an answer to a request sent before the ejection
            state.failures = 0
            state.labels.clear()
            if not (trial and state.half_open):
                return None
            state.half_open = False
            state.trial = False
            state.healthy_since = now
            return Transition(
                "holyroute.endpoint_restored",
                endpoint,
                f"trial request succeeded after a {_seconds(state.ejected_for)} ejection",
            )

    def failure(
        self, endpoint: str, label: str, now: float, peers: Sequence[str], *, trial: bool = False
    ) -> Transition | None:
        """A 5xx, connection error or timeout (``label`` says which). May eject the endpoint; returns that change.

        ``peers`` are the endpoints of the target being served, for ``max_ejected_percent``.
        """
        policy = self._policy
        with self._lock:
            state = self._state(endpoint)
            if trial and state.half_open:
                return self._eject(state, endpoint, now, f"trial request failed ({label})")
            if state.ejected_until > now or state.half_open:
                return None  # an answer to a request sent before the ejection
            state.failures += 1
            state.labels.append(label)
            if state.failures < policy.consecutive_failures:
                return None
            ejected = sum(1 for peer in peers if peer != endpoint and self.ejected(peer, now) is not None)
            allowed = max(1, math.floor(policy.max_ejected_percent / 100 * len(peers)))
            if ejected + 1 > allowed:
                return None
            kinds = sorted(set(state.labels))
            what = kinds[0] if len(kinds) == 1 else f"failures ({', '.join(kinds)})"
            reason = f"{state.failures} consecutive {what} >= consecutive_failures ({policy.consecutive_failures})"
            return self._eject(state, endpoint, now, reason)

    def _eject(self, state: _Endpoint, endpoint: str, now: float, reason: str) -> Transition:
        policy = self._policy
        if state.healthy_since is not None and not state.half_open:
            decay = math.floor((now - state.healthy_since) / policy.base_ejection_s)
            state.level = max(0, state.level - decay)
        state.level += 1
        seconds = min(policy.base_ejection_s * state.level, policy.max_ejection_s)
        state.ejected_until = now + seconds
        state.ejected_for = seconds
        state.half_open = True  # when the ejection ends, one trial decides
        state.trial = False
        state.failures = 0
        state.labels.clear()
        state.healthy_since = None
        return Transition("holyroute.endpoint_ejected", endpoint, f"{reason}; ejected for {_seconds(seconds)}", seconds)

    def quota_exhausted(self, endpoint: str, now: float) -> Transition:
        """The provider said ``insufficient_quota``: out of rotation for ``quota_ejection_s``."""
        seconds = self._policy.quota_ejection_s
        with self._lock:
            self._state(endpoint).quota_until = now + seconds
        return Transition(
            "holyroute.endpoint_ejected",
            endpoint,
            f"429 insufficient_quota; ejected for {_seconds(seconds)}",
            seconds,
            quota=True,
        )

    def record_headroom(self, endpoint: str, model: str, headers: HeaderLookup, now: float) -> bool:
        """Remember OpenAI's ``x-ratelimit-remaining-*`` / ``-reset-*`` for this endpoint and model. True when a
        limit is (nearly) used up: the moment other processes should hear of it (:meth:`headroom_change`). Counts
        and durations come from the boundary's parsers: a reset never reaches past ``max_cooldown_s``."""
        requests = header_count(headers.get("x-ratelimit-remaining-requests"))
        tokens = headers.get("x-ratelimit-remaining-tokens")
        if requests is None and tokens is None:
            return False
        max_s = self.max_cooldown_s
        room = self._headroom.get((endpoint, model))
        if room is None:
            room = self._headroom.setdefault((endpoint, model), _Headroom())
        low = False
        if requests == 0:
            reset = header_seconds(headers.get("x-ratelimit-reset-requests"), max_s=max_s)
            room.requests_until = now + (reset if reset is not None else min(1.0, max_s))
            low = True
        if tokens is not None:
            room.tokens_left = header_count(tokens)
            room.tokens_until = now + (header_seconds(headers.get("x-ratelimit-reset-tokens"), max_s=max_s) or 0.0)
            limit = header_count(headers.get("x-ratelimit-limit-tokens"))
            if room.tokens_left is not None and limit is not None:
                low = low or room.tokens_left * 10 <= limit  # 10% or less left
        return low

    def headroom_change(self, endpoint: str, model: str, now: float, wall: float) -> HealthChange | None:
        """The pair's headroom as a change for other processes (wall-clock times), if any is known."""
        room = self._headroom.get((endpoint, model))
        if room is None:
            return None
        until = max(room.requests_until, room.tokens_until)
        if until <= now:
            return None
        reason = "requests" if room.requests_until > now else "tokens"
        return HealthChange(
            "headroom", endpoint, model, wall + until - now, reason, room.tokens_left if reason == "tokens" else None
        )

    def in_flight(self, endpoint: str) -> int:
        state = self._endpoints.get(endpoint)
        return state.in_flight if state is not None else 0

    def latency(self, endpoint: str) -> float | None:
        state = self._endpoints.get(endpoint)
        return state.latency_s if state is not None else None

    # ---- sharing with other processes ---------------------------------------------------------------------------

    def apply(self, change: HealthChange, now: float, wall: float) -> None:
        """Apply a change another process made (wall-clock ``until`` converted to this process's clock). However far
        ahead ``until`` is, the change lasts at most what this process would have decided itself: ``max_cooldown_s``
        for cooldowns and headroom, ``max_ejection_s`` / ``quota_ejection_s`` for ejections."""
        policy = self._policy
        bound = {"ejected": policy.max_ejection_s, "quota": policy.quota_ejection_s}.get(
            change.kind, self.max_cooldown_s
        )
        left = min(change.until - wall, bound)  # nan stays nan: every use below checks left > 0 or takes a max
        if change.kind == "cooldown":
            if left > 0:
                self.cool(change.endpoint, change.model, left, change.reason, now)
            return
        with self._lock:
            if change.kind == "headroom":
                if not left > 0:
                    return
                room = self._headroom.get((change.endpoint, change.model))
                if room is None:
                    room = self._headroom.setdefault((change.endpoint, change.model), _Headroom())
                if change.reason == "requests":
                    room.requests_until = max(room.requests_until, now + left)
                else:
                    tokens = change.tokens_left
                    room.tokens_left = min(max(tokens, 0), MAX_TOKENS) if isinstance(tokens, int) else None
                    room.tokens_until = now + left
                return
            state = self._state(change.endpoint)
            if change.kind == "quota":
                state.quota_until = max(state.quota_until, now + left)
            elif change.kind == "ejected":
                if left > 0 and state.ejected_until < now + left:
                    state.ejected_until = now + left
                    state.ejected_for = left
                    state.half_open = True
                    state.trial = False
                    state.failures = 0
                    state.labels.clear()
                    state.healthy_since = None
            elif state.half_open or state.ejected_until > now:  # restored elsewhere: its trial succeeded
                state.ejected_until = 0.0
                state.half_open = False
                state.trial = False
                state.healthy_since = now

    def live_changes(self, now: float, wall: float) -> list[HealthChange]:
        """Everything in force here that other processes should know: what to push after a store outage."""
        changes = [
            HealthChange("cooldown", c.endpoint, c.model, wall + c.until - now, c.reason)
            for c in list(self._cooldowns.values())
            if c.until > now
        ]
        for name, state in list(self._endpoints.items()):
            if state.quota_until > now:
                changes.append(HealthChange("quota", name, until=wall + state.quota_until - now, reason="quota"))
            if state.ejected_until > now:
                changes.append(HealthChange("ejected", name, until=wall + state.ejected_until - now, reason="ejected"))
        for endpoint, model in list(self._headroom):
            found = self.headroom_change(endpoint, model, now, wall)
            if found is not None:
                changes.append(found)
        return changes

    def limited(self, endpoint: str, until: float, reason: str) -> None:
        """A shared limit said no: keep the endpoint out of this process's picks until ``until``."""
        with self._lock:
            state = self._state(endpoint)
            if until > state.limited_until:
                state.limited_until = until
                state.limited_reason = reason

    def local_limit(
        self, endpoint: str, tokens: int, now: float, debits: list[Debit] | None = None
    ) -> tuple[str, float] | None:
        """The local buckets' verdict for one request, when the shared store could not give one (a grant's ``tpm``
        debit is noted in ``debits``, as :meth:`begin_attempt` notes it)."""
        state = self._endpoints.get(endpoint)
        if state is None:
            return None
        with self._lock:
            if state.rpm is not None:
                wait = state.rpm.wait_for(1, now)
                if wait > 0:
                    return f"rpm {state.rpm.capacity:.0f} reached (local share)", now + wait
            if state.tpm is not None:
                wait = state.tpm.wait_for(tokens, now)
                if wait > 0:
                    return f"tpm {state.tpm.capacity:.0f} reached (local share)", now + wait
            if state.rpm is not None:
                state.rpm.take(1, now)
            if state.tpm is not None:
                _debit(endpoint, state.tpm, tokens, now, debits)
        return None

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

    def share_limits(
        self,
        shared: bool,
        processes: int,
        now: float,
        levels: Mapping[str, tuple[float | None, float | None]] | None = None,
    ) -> dict[str, tuple[int, int]]:
        """Switch the rpm/tpm limits between the shared store and this process's buckets.

        Back on local buckets (the store is away), each of ``processes`` live processes takes its share of each
        limit. A bucket starts with its share of what the shared one was last seen to hold (``levels``: requests,
        tokens, refilled to ``now``), so the processes together take no more than the shared bucket would have
        given; with nothing known it starts full, so a degraded process serves at once. Back on the shared store,
        returns what each endpoint's local buckets gave out meanwhile (requests, tokens), for the store to be
        charged with it.
        """
        with self._lock:
            self.shared_limits = shared
            if shared:
                taken = {name: state.taken_local for name, state in self._endpoints.items() if any(state.taken_local)}
                for state in self._endpoints.values():
                    state.taken_local = (0, 0)
                return taken
            share = max(1, processes)
            for name, state in self._endpoints.items():
                rpm, tpm = state.limits
                known = (levels or {}).get(name, (None, None))
                for kind, limit, level in (("rpm", rpm, known[0]), ("tpm", tpm, known[1])):
                    if limit:
                        bucket = TokenBucket(limit / share, now)
                        if level is not None:
                            bucket.level = min(bucket.capacity, max(0.0, level) / share)
                        setattr(state, kind, bucket)
                state.taken_local = (0, 0)
            return {}

    def taken_local(self) -> dict[str, tuple[int, int]]:
        """What each endpoint's local buckets gave out since they took over from the shared store (requests,
        tokens), without switching back: the store can be charged with it before it decides again."""
        with self._lock:
            return {name: state.taken_local for name, state in self._endpoints.items() if any(state.taken_local)}

    def limits(self, endpoint: str) -> tuple[int | None, int | None]:
        """The endpoint's configured (rpm, tpm)."""
        state = self._endpoints.get(endpoint)
        return state.limits if state is not None else (None, None)

    # ---- cooldowns (429s) ---------------------------------------------------------------------------------------

    def cooldown(self, endpoint: str, model: str, now: float) -> Cooldown | None:
        """The cooldown in force for this pair at ``now``, if any."""
        found = self._cooldowns.get((endpoint, model))
        if found is None:
            return None
        if found.until <= now:
            with self._lock:
                if self._cooldowns.get((endpoint, model)) is found:
                    del self._cooldowns[(endpoint, model)]
            return None
        return found

    def cool(self, endpoint: str, model: str, seconds: float, reason: str, now: float) -> Cooldown | None:
        """Keep the pair out of rotation for ``seconds`` (at most ``max_cooldown_s``, whoever asks); returns the new
        cooldown, or None if one as long exists (or ``seconds`` is no duration: nan, negative)."""
        if not seconds >= 0:
            return None
        until = now + min(seconds, self.max_cooldown_s)
        with self._lock:
            current = self._cooldowns.get((endpoint, model))
            if current is not None and current.until >= until:
                return None
            cooldown = Cooldown(endpoint, model, until, reason)
            self._cooldowns[(endpoint, model)] = cooldown
            return cooldown


def _debit(endpoint: str, bucket: TokenBucket, tokens: float, now: float, debits: list[Debit] | None) -> None:
    """Take one request's tokens from a local bucket: never more than it holds when full, never leaving it below
    minus its capacity (so it is full again within two minutes whatever was asked); noted in ``debits``."""
    bucket.take(0.0, now)  # refilled up to now
    before = bucket.level
    bucket.level = max(before - min(max(tokens, 0.0), bucket.capacity), -bucket.capacity)
    if debits is not None:
        debits.append(Debit(endpoint, bucket, before - bucket.level))
