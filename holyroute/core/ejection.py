"""Passive health: which endpoint is ejected after consecutive failures, or out of quota, and when it comes back.

Envoy's outlier detection: ``consecutive_failures`` 5xx / connection errors / timeouts eject an endpoint for
``base_ejection_s`` x (ejections in a row), capped at ``max_ejection_s``; when the ejection ends, one trial request is
let through (half-open) and its answer restores or re-ejects the endpoint; the multiplier decays by one for every
``base_ejection_s`` of health. ``insufficient_quota`` ejects for ``quota_ejection_s``. 429s are no failures here
(``core/cooldowns.py`` cools the endpoint/model pair instead). Each change comes back as a :class:`Transition` for
the router to emit and share. Time is read only from the ``now`` each method is given; no I/O, no sleep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from holyroute.config.schema import Health
from holyroute.core.ports import HealthChange
from holyroute.forking import new_lock

__all__ = ["Ejections", "Transition"]


def _seconds(value: float) -> str:
    """``30s``, ``1.5s``, ``3600s``: durations as people write them in reasons."""
    return f"{value:.0f}s" if value >= 100 or value == int(value) else f"{value:.3g}s"


@dataclass(frozen=True, slots=True)
class Transition:
    """An endpoint changed state; the core turns this into an event."""

    event: str  # "holyroute.endpoint_ejected" | "holyroute.endpoint_restored"
    endpoint: str
    reason: str
    ejection_s: float | None = None
    quota: bool = False  # ejected for insufficient_quota


@dataclass(slots=True)
class _Endpoint:
    """Mutable per-endpoint state; changed only under the lock of :class:`Ejections`."""

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


class Ejections:
    """Every endpoint's passive health, attempts in flight and latency, under ``policy`` (``health:``). Thread-safe."""

    __slots__ = ("_endpoints", "_lock", "policy")

    def __init__(self, policy: Health | None = None) -> None:
        self.policy = policy or Health()
        self._endpoints: dict[str, _Endpoint] = {}
        self._lock = new_lock()

    def _state(self, endpoint: str) -> _Endpoint:
        """The endpoint's state, added on its first report. Called with ``self._lock`` held."""
        found = self._endpoints.get(endpoint)
        if found is None:
            found = self._endpoints.setdefault(endpoint, _Endpoint())
        return found

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

    def in_flight(self, endpoint: str) -> int:
        state = self._endpoints.get(endpoint)
        return state.in_flight if state is not None else 0

    def latency(self, endpoint: str) -> float | None:
        state = self._endpoints.get(endpoint)
        return state.latency_s if state is not None else None

    # ---- what attempts report -----------------------------------------------------------------------------------

    def begin(self, endpoint: str, now: float) -> bool:
        """An attempt is being sent: count it in flight. True when it is the half-open trial of an endpoint whose
        ejection just ended (only its answer restores it)."""
        with self._lock:
            state = self._endpoints.get(endpoint) or self._state(endpoint)  # every attempt: no call when known
            state.in_flight += 1
            if state.half_open and not state.trial and state.ejected_until <= now:
                state.trial = True
                return True
            return False

    def end(self, endpoint: str, *, trial: bool) -> None:
        """The attempt's answer (or error) is in; a trial that neither restored nor re-ejected is released."""
        with self._lock:
            state = self._endpoints.get(endpoint) or self._state(endpoint)  # every attempt: no call when known
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
        policy = self.policy
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
        policy = self.policy
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
        seconds = self.policy.quota_ejection_s
        with self._lock:
            self._state(endpoint).quota_until = now + seconds
        return Transition(
            "holyroute.endpoint_ejected",
            endpoint,
            f"429 insufficient_quota; ejected for {_seconds(seconds)}",
            seconds,
            quota=True,
        )

    def forget_attempts(self) -> None:
        """In a forked child: every attempt in flight, half-open trials included, was sent by a thread of the parent,
        which the child does not have; none of them will end here. Forgotten, so that no count stays raised and an
        endpoint whose trial was in flight gets a trial of the child's own."""
        with self._lock:
            for state in self._endpoints.values():
                state.in_flight = 0
                state.trial = False

    # ---- sharing with other processes ---------------------------------------------------------------------------

    def apply(self, change: HealthChange, left: float, now: float) -> None:
        """Another process ejected (``ejected``, ``quota``) or restored the endpoint; an ejection lasts ``left`` more
        seconds (already bounded by the caller; nan: nothing to apply)."""
        with self._lock:
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

    def live(self, now: float, wall: float) -> list[HealthChange]:
        """Every ejection in force, as changes for other processes (wall-clock times)."""
        changes = []
        for name, state in list(self._endpoints.items()):
            if state.quota_until > now:
                changes.append(HealthChange("quota", name, until=wall + state.quota_until - now, reason="quota"))
            if state.ejected_until > now:
                changes.append(HealthChange("ejected", name, until=wall + state.ejected_until - now, reason="ejected"))
        return changes
