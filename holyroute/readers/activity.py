"""What the event log said besides calls: endpoint health (ejections, cooldowns, active checks, headroom, recent
attempts), each route's latest rollout step and panicking arms, and the latest failovers, alerts and state changes.

:class:`~holyroute.readers.aggregate.Aggregate` folds these events in; the dashboard shows them. Text from the log is
bounded (:func:`bounded_text`) and kept raw: whoever shows it must escape it. No I/O and no clock: times are passed in.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from holyroute.readers.log import number

__all__ = [
    "ACTIVITY_EVENTS",
    "DEGRADED_ERROR_RATE",
    "DEGRADED_MIN_ATTEMPTS",
    "FEED_LENGTH",
    "RECENT_ATTEMPTS",
    "Activity",
    "EndpointHealth",
    "RolloutStep",
    "bounded_text",
]

FEED_LENGTH: Final = 50  # failovers, alerts and state changes kept
RECENT_ATTEMPTS: Final = 50  # an endpoint's recent error rate is over its last this many attempts
DEGRADED_ERROR_RATE: Final = 0.2  # that many of them failed, of at least DEGRADED_MIN_ATTEMPTS: degraded
DEGRADED_MIN_ATTEMPTS: Final = 10
_TEXT_LIMIT: Final = 400
#: State changes and how they read: good, bad, warn or info.
ACTIVITY_EVENTS: Final = {
    "holyroute.cooldown": "warn",
    "holyroute.endpoint_ejected": "bad",
    "holyroute.endpoint_restored": "good",
    "holyroute.endpoint_health": "info",
    "holyroute.panic": "bad",
    "holyroute.panic_over": "good",
    "holyroute.retry_budget_exhausted": "warn",
    "holyroute.rollout": "info",
    "holyroute.state_degraded": "bad",
    "holyroute.state_restored": "good",
}


def bounded_text(value: object, limit: int = _TEXT_LIMIT) -> str | None:
    """A field as bounded text (the bound keeps one line from bloating what is shown)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass(slots=True)
class EndpointHealth:
    """What the log has said about one endpoint's health."""

    attempts: int = 0
    failed: int = 0
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=RECENT_ATTEMPTS))  # True: that attempt failed
    ejected_until: float | None = None
    ejected_reason: str | None = None
    cooldowns: dict[str, tuple[float, str | None]] = field(default_factory=dict)  # model -> (until, reason)
    probe: dict[str, Any] | None = None
    remaining_requests: float | None = None
    remaining_tokens: float | None = None
    headroom_at: float | None = None
    last_seen: float | None = None

    def attempt(self, failed: bool, at: float) -> None:
        self.attempts += 1
        self.failed += failed
        self.recent.append(failed)
        self.last_seen = at

    def status(self, now: float) -> tuple[str, str]:
        """The endpoint's state and why: ejected, trial, unhealthy, cooldown, degraded, healthy or idle."""
        if self.ejected_until is not None:
            if self.ejected_until > now:
                return "ejected", self.ejected_reason or "ejected"
            return "trial", "ejection over; the next call is its trial (no restore in the log yet)"
        probe = self.probe or {}
        if probe.get("status") == "unhealthy":
            return "unhealthy", probe.get("reason") or "active health check failed"
        cooling = [(until, model, reason) for model, (until, reason) in self.cooldowns.items() if until > now]
        if cooling:
            _, model, reason = max(cooling)
            return "cooldown", f"{model}: {reason or 'cooling down'}"
        failed = sum(self.recent)
        if len(self.recent) >= DEGRADED_MIN_ATTEMPTS and failed / len(self.recent) >= DEGRADED_ERROR_RATE:
            return "degraded", f"{failed} of the last {len(self.recent)} attempts failed"
        if probe.get("status") == "degraded":
            return "degraded", probe.get("reason") or "active health check: degraded"
        if not self.attempts and not probe:
            return "idle", "no traffic in the log yet"
        return "healthy", ""

    def cooling_until(self) -> float | None:
        return max((until for until, _ in self.cooldowns.values()), default=None)

    def headroom(self, event: Mapping[str, Any], at: float) -> None:
        requests, tokens = number(event.get("remaining_requests")), number(event.get("remaining_tokens"))
        if requests is not None or tokens is not None:
            self.remaining_requests, self.remaining_tokens, self.headroom_at = requests, tokens, at

    def change(self, name: str, event: Mapping[str, Any], at: float, reason: str | None) -> str | None:
        """Fold a state change of this endpoint in; returns how it reads when that depends on the event."""
        if name == "holyroute.cooldown":
            model = bounded_text(event.get("upstream_model"), 120) or "*"
            self.cooldowns[model] = (at + (number(event.get("cooldown_s")) or 0.0), reason)
        elif name == "holyroute.endpoint_ejected":
            self.ejected_until = at + (number(event.get("ejection_s")) or 0.0)
            self.ejected_reason = reason
        elif name == "holyroute.endpoint_restored":
            self.ejected_until = self.ejected_reason = None
        elif name == "holyroute.endpoint_health":
            status = bounded_text(event.get("status"), 40)
            self.probe = {"status": status, "latency_ms": number(event.get("latency_ms")), "reason": reason, "t": at}
            return {"healthy": "good", "degraded": "warn", "unhealthy": "bad"}.get(status or "", "info")
        return None


@dataclass(frozen=True, slots=True)
class RolloutStep:
    """A route's latest ``holyroute.rollout`` event."""

    t: float
    action: str | None
    status: str | None
    step: float | None
    steps: float | None
    weight: float | None
    stable: str | None
    candidate: str | None
    reason: str | None

    @classmethod
    def of(cls, event: Mapping[str, Any], at: float, reason: str | None) -> RolloutStep:
        return cls(
            t=at,
            action=bounded_text(event.get("action"), 40),
            status=bounded_text(event.get("status"), 40),
            step=number(event.get("step")),
            steps=number(event.get("steps")),
            weight=number(event.get("weight")),
            stable=bounded_text(event.get("stable"), 120),
            candidate=bounded_text(event.get("candidate"), 120),
            reason=reason,
        )

    def weights(self) -> dict[str, float]:
        """The split this step set: the candidate's weight, and the rest for the stable arm."""
        if self.weight is None:
            return {}
        weight = min(100.0, max(0.0, self.weight))
        split: dict[str, float] = {}
        if self.stable is not None:
            split[self.stable] = 100.0 - weight
        if self.candidate is not None:
            split[self.candidate] = weight
        return split


class Activity:
    """The latest failovers, alerts and state changes, newest first, and how many of each there were."""

    __slots__ = ("activity", "alert_count", "alerts", "failover_count", "failovers")

    def __init__(self) -> None:
        self.failover_count = self.alert_count = 0
        self.failovers: deque[dict[str, Any]] = deque(maxlen=FEED_LENGTH)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=FEED_LENGTH)
        self.activity: deque[dict[str, Any]] = deque(maxlen=FEED_LENGTH)

    def failover(self, event: Mapping[str, Any], at: float) -> None:
        self.failover_count += 1
        self.failovers.appendleft(
            {
                "t": at,
                "route": bounded_text(event.get("route")),
                "arm": bounded_text(event.get("arm")),
                "endpoint": bounded_text(event.get("endpoint")),
                "next_endpoint": bounded_text(event.get("next_endpoint")),
                "status": number(event.get("status")),
                "error": bounded_text(event.get("error")),
                "reason": bounded_text(event.get("reason")),
                "attempt": number(event.get("attempt")),
                "attempt_ms": number(event.get("attempt_ms")),
                "wait_s": number(event.get("wait_s")),
            }
        )

    def alert(self, event: Mapping[str, Any], at: float) -> None:
        self.alert_count += 1
        shown = ("event", "timestamp", "level", "severity", "alert", "name", "rule", "message", "reason", "summary")
        title = next((event[k] for k in ("alert", "name", "rule") if event.get(k)), "alert")
        message = next((event[k] for k in ("message", "reason", "summary") if event.get(k)), None)
        details = [f"{k}={bounded_text(v, 80)}" for k, v in event.items() if k not in shown and v is not None]
        self.alerts.appendleft(
            {
                "t": at,
                "severity": bounded_text(event.get("severity") or event.get("level")),
                "title": bounded_text(title),
                "message": bounded_text(message),
                "details": bounded_text(", ".join(details)),
            }
        )

    def change(self, name: str, event: Mapping[str, Any], at: float, kind: str) -> None:
        subject = event.get("endpoint") or event.get("route") or event.get("redis")
        if name == "holyroute.cooldown" and event.get("upstream_model"):
            subject = f"{subject} / {event.get('upstream_model')}"
        self.activity.appendleft(
            {
                "t": at,
                "event": name.removeprefix("holyroute."),
                "kind": kind,
                "subject": bounded_text(subject),
                "reason": bounded_text(event.get("reason")),
            }
        )
