"""``holyroute dashboard``: a local web page that follows an event log as it grows.

Three parts, one concern each. :class:`Board` decides what the page shows: it folds ``holyroute.*`` events into
per-endpoint health, per-route arms and rollout steps, time series of calls, errors, p95 latency and cost, and the
latest failovers, alerts and state changes; it performs no I/O and reads no clock (callers pass the time).
:class:`LogTail` reads only what was appended since the last read: it remembers its offset, keeps a partial last
line until its newline arrives, starts again on truncation and follows a rotated file. :class:`DashboardServer`
(stdlib ``ThreadingHTTPServer``) serves one static page and ``/api/state``, which the page polls.

What must never happen: a secret reaching the page. The configuration is reduced by :func:`config_view` to names,
models, weights, limits and each ``base_url``'s host before the board sees it, so keys, headers, query parameters
and URL credentials are never in memory here. The page writes every text with ``textContent``, never as markup, and
is served with a Content-Security-Policy that allows no inline script. A bad line in the log is counted, never fatal.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, TextIO
from urllib.parse import urlsplit

from holyroute.readers.log import charged_arm, epoch, parse_line
from holyroute.readers.log import number as _num
from holyroute.rollout.stats import LatencySketch

if TYPE_CHECKING:
    from holyroute.config.schema import Config, Target

__all__ = [
    "ArmView",
    "Board",
    "ConfigView",
    "Dashboard",
    "DashboardServer",
    "EndpointView",
    "LogTail",
    "RouteView",
    "TailRead",
    "config_view",
    "run",
    "serve",
]

MAX_NAMES: Final = 256  # endpoints, routes, and arms per route, beyond which new names are counted, not shown
FEED_LENGTH: Final = 50  # failovers, alerts and state changes kept for the page
MAX_BUCKETS: Final = 120  # points per chart; the bucket width grows to keep the whole log within this many
RECENT_ATTEMPTS: Final = 50  # an endpoint's recent error rate is over its last this many attempts
DEGRADED_ERROR_RATE: Final = 0.2  # that many of them failed, of at least DEGRADED_MIN_ATTEMPTS: degraded
DEGRADED_MIN_ATTEMPTS: Final = 10
_TEXT_LIMIT: Final = 400
# Each width divides the next, so buckets merge exactly when the log outgrows MAX_BUCKETS.
_WIDTHS: Final = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 10800.0, 21600.0, 43200.0)
_ACTIVITY: Final = {
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


# ---- what the page may know of the configuration -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointView:
    """An endpoint as the page shows it: no key, header, query or path, only the host of its ``base_url``."""

    name: str
    host: str
    models: tuple[str, ...]
    rpm: int | None = None
    tpm: int | None = None
    health_check: bool = False


@dataclass(frozen=True, slots=True)
class ArmView:
    """One arm of a route: its model, its endpoints in failover order and its share of the split in percent."""

    arm: str
    model: str
    endpoints: tuple[str, ...]
    weight: float


@dataclass(frozen=True, slots=True)
class RolloutView:
    """A route's rollout: which arm is stable, which is the candidate, how many steps."""

    strategy: str
    stable: str
    candidate: str
    steps: int


@dataclass(frozen=True, slots=True)
class RouteView:
    """A route alias: its arms (the rollout's stable and candidate for a rollout route), fallbacks and shadow."""

    alias: str
    arms: tuple[ArmView, ...]
    sticky: str | None = None
    fallbacks: tuple[str, ...] = ()
    rollout: RolloutView | None = None
    shadow: ArmView | None = None  # weight: the sampled share in percent


@dataclass(frozen=True, slots=True)
class ConfigView:
    """Everything the dashboard takes from a configuration."""

    endpoints: tuple[EndpointView, ...] = ()
    routes: tuple[RouteView, ...] = ()


def _host(base_url: str) -> str:
    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    if host == "unset.invalid":  # the report's stand-in for an unset ${VAR}
        return "(not set)"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port is not None else host


def _endpoint_names(target: Target) -> tuple[str, ...]:
    return tuple(ref if isinstance(ref, str) else ref.endpoint for ref in target.endpoints)


def config_view(config: Config) -> ConfigView:
    """Names, models, weights, limits and hosts of ``config``; never a key, header, query parameter or URL path."""
    models: dict[str, list[str]] = {name: [] for name in config.endpoints}
    routes: list[RouteView] = []
    for alias, route in config.routes.items():
        targets = route.arms
        for target in [*targets, *([route.shadow] if route.shadow is not None else [])]:
            for ref in target.endpoints:
                name, model = (ref, target.model) if isinstance(ref, str) else (ref.endpoint, ref.model or target.model)
                if name in models and model not in models[name]:
                    models[name].append(model)
        rollout = None
        if route.rollout is not None:
            rollout = RolloutView(
                route.rollout.strategy, route.rollout.stable.arm, route.rollout.candidate.arm, len(route.rollout.plan())
            )
            weights = [100.0, 0.0]  # where every rollout starts, until the log says otherwise
        else:
            total = sum(t.weight for t in targets) or 1.0
            weights = [t.weight * 100.0 / total for t in targets]
        arms = tuple(ArmView(t.arm, t.model, _endpoint_names(t), w) for t, w in zip(targets, weights, strict=True))
        shadow = route.shadow
        routes.append(
            RouteView(
                alias,
                arms,
                route.sticky,
                tuple(route.fallbacks),
                rollout,
                None
                if shadow is None
                else ArmView(shadow.arm, shadow.model, _endpoint_names(shadow), shadow.sample * 100),
            )
        )
    endpoints = tuple(
        EndpointView(name, _host(e.base_url), tuple(models[name]), e.rpm, e.tpm, e.health_check is not None)
        for name, e in config.endpoints.items()
    )
    return ConfigView(endpoints, tuple(routes))


# ---- the board: events in, page state out ------------------------------------------------------------------------


def _text(value: object, limit: int = _TEXT_LIMIT) -> str | None:
    """A field as bounded text for the page (the page escapes it; the bound keeps one line from bloating it)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(slots=True)
class _Tally:
    """Calls, errors, latency and cost of one group of request events."""

    calls: int = 0
    errors: int = 0
    cost_usd: float = 0.0
    latency: LatencySketch = field(default_factory=LatencySketch)

    def add(self, error: bool, latency_ms: float | None, cost_usd: float | None) -> None:
        self.calls += 1
        self.errors += error
        if latency_ms is not None:
            self.latency.add(max(latency_ms, 0.0))
        if cost_usd is not None:
            self.cost_usd += cost_usd

    def merge(self, other: _Tally) -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.cost_usd += other.cost_usd
        self.latency.merge(other.latency)

    def quantile(self, q: float) -> float | None:
        return _round(self.latency.quantile(q))


class _Series:
    """Calls, errors, latency and cost per time bucket; buckets widen (merging exactly) to stay within the limit."""

    __slots__ = ("buckets", "level")

    def __init__(self) -> None:
        self.level = 0
        self.buckets: dict[int, _Tally] = {}

    @property
    def width(self) -> float:
        level = self.level
        if level < len(_WIDTHS):
            return _WIDTHS[level]
        return _WIDTHS[-1] * float(2 ** (level - len(_WIDTHS) + 1))

    def add(
        self, at: float, error: bool, latency_ms: float | None, cost_usd: float | None, *, call: bool = True
    ) -> None:
        """One call at ``at`` (or, with ``call=False``, only money spent, such as a shadow copy's)."""
        key = math.floor(at / self.width)
        buckets = self.buckets
        if key not in buckets:
            buckets[key] = _Tally()
            while max(self.buckets) - min(self.buckets) >= MAX_BUCKETS:
                key //= self._widen()
        tally = self.buckets[key]
        if call:
            tally.add(error, latency_ms, cost_usd)
        elif cost_usd is not None:
            tally.cost_usd += cost_usd

    def _widen(self) -> int:
        """The next width up the ladder; returns by how many times it grew."""
        before = self.width
        self.level += 1
        ratio = round(self.width / before)
        merged: dict[int, _Tally] = {}
        for key, tally in self.buckets.items():
            into = merged.get(key // ratio)
            if into is None:
                merged[key // ratio] = tally
            else:
                into.merge(tally)
        self.buckets = merged
        return ratio

    def snapshot(self) -> dict[str, Any]:
        width = self.width
        if not self.buckets:
            return {"width_s": width, "buckets": []}
        first, last = min(self.buckets), max(self.buckets)
        rows = []
        for key in range(first, last + 1):
            tally = self.buckets.get(key) or _Tally()
            rows.append(
                {
                    "t": round(key * width, 3),
                    "calls": tally.calls,
                    "errors": tally.errors,
                    "p50_ms": tally.quantile(0.5),
                    "p95_ms": tally.quantile(0.95),
                    "cost_usd": tally.cost_usd,
                }
            )
        return {"width_s": width, "buckets": rows}


@dataclass(slots=True)
class _EndpointState:
    """What the log has said about one endpoint."""

    view: EndpointView | None
    served: _Tally = field(default_factory=_Tally)
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


@dataclass(slots=True)
class _RouteState:
    """What the log has said about one route alias."""

    view: RouteView | None
    served: _Tally = field(default_factory=_Tally)
    arms: dict[str, _Tally] = field(default_factory=dict)  # by the arm the split chose
    fallback_calls: int = 0
    cancelled: int = 0
    shadow: _Tally = field(default_factory=_Tally)
    rollout: dict[str, Any] | None = None
    panic: set[str] = field(default_factory=set)


class Board:
    """The dashboard's state, folded from events; :meth:`snapshot` is what ``/api/state`` returns.

    No I/O and no clock: :meth:`add` takes the time the event was read (used when an event has no ``timestamp``)
    and :meth:`snapshot` the time to judge cooldowns and ejections against.

    >>> board = Board()
    >>> board.add({"event": "holyroute.request", "route": "chat", "arm": "gpt-4.1", "endpoint": "main",
    ...            "outcome": "ok", "latency_ms": 120.0, "cost_usd": 0.001}, received=1000.0)
    >>> board.snapshot(now=1001.0)["totals"]["calls"]
    1
    """

    def __init__(self, config: ConfigView | None = None) -> None:
        self.config = config or ConfigView()
        self.reset()

    def reset(self) -> None:
        """Forget every event (the log was truncated or replaced); the configuration stays."""
        self.version = 0
        self.lines = 0
        self.events = 0
        self.not_json = 0
        self.not_holyroute = 0
        self.too_long = 0
        self.malformed = 0  # holyroute events with an unusable field: skipped whole
        self.other = 0
        self.dropped_names = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.totals = _Tally()
        self.cancelled = 0
        self.shadow_calls = 0
        self.failover_count = 0
        self.alert_count = 0
        self.series = _Series()
        self.endpoints: dict[str, _EndpointState] = {e.name: _EndpointState(e) for e in self.config.endpoints}
        self.routes: dict[str, _RouteState] = {r.alias: _RouteState(r) for r in self.config.routes}
        self.failovers: deque[dict[str, Any]] = deque(maxlen=FEED_LENGTH)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=FEED_LENGTH)
        self.activity: deque[dict[str, Any]] = deque(maxlen=FEED_LENGTH)

    # ---- input ----------------------------------------------------------------------------------------------------

    def add_line(self, line: str, received: float) -> None:
        """One line of the log: a holyroute event is added; anything else is counted."""
        self.lines += 1
        self.version += 1
        parsed = parse_line(line)
        if parsed == "blank":
            return
        if parsed == "not_json":
            self.not_json += 1
        elif parsed == "not_holyroute":
            self.not_holyroute += 1
        elif parsed == "malformed":
            self.malformed += 1
        else:
            try:
                self.add(parsed, received)
            except Exception:  # a field no check foresaw: this line is lost, never the poll or the lines after it
                self.malformed += 1

    def skip_long_line(self) -> None:
        """A line longer than the tail keeps was dropped."""
        self.lines += 1
        self.too_long += 1
        self.version += 1

    def add(self, event: Mapping[str, Any], received: float) -> None:
        """Fold one ``holyroute.*`` event in."""
        self.events += 1
        self.version += 1
        at = epoch(event.get("timestamp"))
        if at is None:
            at = received
        self.first_at = at if self.first_at is None else min(self.first_at, at)
        self.last_at = at if self.last_at is None else max(self.last_at, at)
        name = str(event.get("event"))
        if name == "holyroute.request":
            self._request(event, at)
        elif name == "holyroute.failover":
            self._failover(event, at)
        elif name == "holyroute.alert":
            self._alert(event, at)
        elif name in _ACTIVITY:
            self._change(name, event, at)
        else:
            self.other += 1
        self._headroom(event, at)

    def _endpoint(self, value: object) -> _EndpointState | None:
        if not isinstance(value, str) or not value:
            return None
        found = self.endpoints.get(value)
        if found is None:
            if len(self.endpoints) >= MAX_NAMES:
                self.dropped_names += 1
                return None
            found = self.endpoints[value] = _EndpointState(None)
        return found

    def _route(self, value: object) -> _RouteState | None:
        if not isinstance(value, str) or not value:
            return None
        found = self.routes.get(value)
        if found is None:
            if len(self.routes) >= MAX_NAMES:
                self.dropped_names += 1
                return None
            found = self.routes[value] = _RouteState(None)
        return found

    def _request(self, event: Mapping[str, Any], at: float) -> None:
        outcome = event.get("outcome")
        error = outcome == "error"
        latency, cost = _num(event.get("latency_ms")), _num(event.get("cost_usd"))
        endpoint = self._endpoint(event.get("endpoint"))
        if endpoint is not None and outcome != "cancelled":
            endpoint.attempt(error, at)
            endpoint.served.add(error, latency, cost)
        route = self._route(event.get("route"))
        if event.get("shadow") is True:
            self.shadow_calls += 1
            self.totals.cost_usd += cost or 0.0
            if route is not None:
                route.shadow.add(error, latency, cost)
            self.series.add(at, False, None, cost, call=False)  # money spent, not a call the application made
            return
        if outcome == "cancelled":
            self.cancelled += 1
            self.totals.cost_usd += cost or 0.0
            if route is not None:
                route.cancelled += 1
            return
        self.totals.add(error, latency, cost)
        self.series.add(at, error, latency, cost)
        if route is None:
            return
        route.served.add(error, latency, cost)
        if isinstance(event.get("fallback"), str) and event.get("fallback"):
            route.fallback_calls += 1
        charged = charged_arm(event)
        if charged is None:  # a fallback served it and the event does not name the split's arm (an older log)
            return
        arm = charged.arm
        tally = route.arms.get(arm)
        if tally is None:
            if len(route.arms) >= MAX_NAMES:
                self.dropped_names += 1
                return
            tally = route.arms[arm] = _Tally()
        tally.add(error or charged.failed, latency, cost)

    def _failover(self, event: Mapping[str, Any], at: float) -> None:
        self.failover_count += 1
        endpoint = self._endpoint(event.get("endpoint"))
        if endpoint is not None:
            endpoint.attempt(True, at)
        self._route(event.get("route"))
        self.failovers.appendleft(
            {
                "t": at,
                "route": _text(event.get("route")),
                "arm": _text(event.get("arm")),
                "endpoint": _text(event.get("endpoint")),
                "next_endpoint": _text(event.get("next_endpoint")),
                "status": _num(event.get("status")),
                "error": _text(event.get("error")),
                "reason": _text(event.get("reason")),
                "attempt": _num(event.get("attempt")),
                "attempt_ms": _num(event.get("attempt_ms")),
                "wait_s": _num(event.get("wait_s")),
            }
        )

    def _alert(self, event: Mapping[str, Any], at: float) -> None:
        self.alert_count += 1
        shown = ("event", "timestamp", "level", "severity", "alert", "name", "rule", "message", "reason", "summary")
        title = next((event[k] for k in ("alert", "name", "rule") if event.get(k)), "alert")
        message = next((event[k] for k in ("message", "reason", "summary") if event.get(k)), None)
        details = [f"{k}={_text(v, 80)}" for k, v in event.items() if k not in shown and v is not None]
        self.alerts.appendleft(
            {
                "t": at,
                "severity": _text(event.get("severity") or event.get("level")),
                "title": _text(title),
                "message": _text(message),
                "details": _text(", ".join(details)),
            }
        )

    def _change(self, name: str, event: Mapping[str, Any], at: float) -> None:
        endpoint = self._endpoint(event.get("endpoint"))
        route = self._route(event.get("route")) if "route" in event else None
        kind = _ACTIVITY[name]
        reason = _text(event.get("reason"))
        if name == "holyroute.cooldown" and endpoint is not None:
            model = _text(event.get("upstream_model"), 120) or "*"
            endpoint.cooldowns[model] = (at + (_num(event.get("cooldown_s")) or 0.0), reason)
        elif name == "holyroute.endpoint_ejected" and endpoint is not None:
            endpoint.ejected_until = at + (_num(event.get("ejection_s")) or 0.0)
            endpoint.ejected_reason = reason
        elif name == "holyroute.endpoint_restored" and endpoint is not None:
            endpoint.ejected_until = endpoint.ejected_reason = None
        elif name == "holyroute.endpoint_health" and endpoint is not None:
            status = _text(event.get("status"), 40)
            endpoint.probe = {"status": status, "latency_ms": _num(event.get("latency_ms")), "reason": reason, "t": at}
            kind = {"healthy": "good", "degraded": "warn", "unhealthy": "bad"}.get(status or "", "info")
        elif name in ("holyroute.panic", "holyroute.panic_over") and route is not None:
            arm = _text(event.get("arm"), 120) or "(none)"
            (route.panic.add if name == "holyroute.panic" else route.panic.discard)(arm)
        elif name == "holyroute.rollout" and route is not None:
            route.rollout = {
                "t": at,
                "action": _text(event.get("action"), 40),
                "status": _text(event.get("status"), 40),
                "step": _num(event.get("step")),
                "steps": _num(event.get("steps")),
                "weight": _num(event.get("weight")),
                "stable": _text(event.get("stable"), 120),
                "candidate": _text(event.get("candidate"), 120),
                "reason": reason,
            }
            kind = {"aborted": "bad", "completed": "good"}.get(str(event.get("status")), "info")
        subject = event.get("endpoint") or event.get("route") or event.get("redis")
        if name == "holyroute.cooldown" and event.get("upstream_model"):
            subject = f"{subject} / {event.get('upstream_model')}"
        self.activity.appendleft(
            {
                "t": at,
                "event": name.removeprefix("holyroute."),
                "kind": kind,
                "subject": _text(subject),
                "reason": reason,
            }
        )

    def _headroom(self, event: Mapping[str, Any], at: float) -> None:
        requests, tokens = _num(event.get("remaining_requests")), _num(event.get("remaining_tokens"))
        if requests is None and tokens is None:
            return
        endpoint = self._endpoint(event.get("endpoint"))
        if endpoint is not None:
            endpoint.remaining_requests, endpoint.remaining_tokens, endpoint.headroom_at = requests, tokens, at

    # ---- output ---------------------------------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """The page's whole state as JSON-safe data: text is raw (the page escapes it), times are Unix seconds."""
        totals = self.totals
        return {
            "version": self.version,
            "now": now,
            "log": {
                "lines": self.lines,
                "events": self.events,
                "not_json": self.not_json,
                "not_holyroute": self.not_holyroute,
                "too_long": self.too_long,
                "malformed": self.malformed,
                "other_events": self.other,
                "dropped_names": self.dropped_names,
                "first_at": self.first_at,
                "last_at": self.last_at,
            },
            "totals": {
                "calls": totals.calls,
                "errors": totals.errors,
                "cancelled": self.cancelled,
                "shadow_calls": self.shadow_calls,
                "cost_usd": totals.cost_usd,
                "p50_ms": totals.quantile(0.5),
                "p95_ms": totals.quantile(0.95),
                "failovers": self.failover_count,
                "alerts": self.alert_count,
            },
            "series": self.series.snapshot(),
            "endpoints": [self._endpoint_row(name, state, now) for name, state in self.endpoints.items()],
            "routes": [self._route_row(alias, state) for alias, state in self.routes.items()],
            "failovers": list(self.failovers),
            "alerts": list(self.alerts),
            "activity": list(self.activity),
        }

    @staticmethod
    def _endpoint_row(name: str, state: _EndpointState, now: float) -> dict[str, Any]:
        status, reason = state.status(now)
        view = state.view
        until = state.ejected_until if status == "ejected" else None
        if status == "cooldown":
            until = max(u for u, _ in state.cooldowns.values())
        recent = len(state.recent)
        return {
            "name": name,
            "configured": view is not None,
            "host": view.host if view is not None else None,
            "models": list(view.models) if view is not None else [],
            "status": status,
            "reason": reason,
            "until": until,
            "calls": state.served.calls,
            "attempts": state.attempts,
            "failed": state.failed,
            "recent_attempts": recent,
            "recent_error_rate": sum(state.recent) / recent if recent else None,
            "p95_ms": state.served.quantile(0.95),
            "cost_usd": state.served.cost_usd,
            "rpm": view.rpm if view is not None else None,
            "tpm": view.tpm if view is not None else None,
            "health_check": view.health_check if view is not None else False,
            "probe": state.probe,
            "remaining_requests": state.remaining_requests,
            "remaining_tokens": state.remaining_tokens,
            "headroom_at": state.headroom_at,
            "last_seen": state.last_seen,
        }

    @staticmethod
    def _route_row(alias: str, state: _RouteState) -> dict[str, Any]:  # long but flat: one key per field
        view, last = state.view, state.rollout
        # A rollout's split is the candidate's weight from its latest event; the stable arm has the rest.
        rolled: dict[str, float] = {}
        if last is not None and last["weight"] is not None:
            weight = min(100.0, max(0.0, last["weight"]))
            if last["stable"] is not None:
                rolled[last["stable"]] = 100.0 - weight
            if last["candidate"] is not None:
                rolled[last["candidate"]] = weight
        served = sum(t.calls for t in state.arms.values())

        def arm_row(arm: str, model: str | None, endpoints: tuple[str, ...], weight: float | None) -> dict[str, Any]:
            tally = state.arms.get(arm) or _Tally()
            return {
                "arm": arm,
                "model": model,
                "endpoints": list(endpoints),
                "weight": rolled.get(arm, weight),
                "share": tally.calls / served if served else None,
                "calls": tally.calls,
                "errors": tally.errors,
                "p95_ms": tally.quantile(0.95),
                "cost_usd": tally.cost_usd,
                "panic": arm in state.panic,
            }

        configured = view.arms if view is not None else ()
        arms = [arm_row(a.arm, a.model, a.endpoints, a.weight) for a in configured]
        known = {a.arm for a in configured}
        arms += [arm_row(arm, None, (), None) for arm in state.arms if arm not in known]
        plan = view.rollout if view is not None else None
        rollout = None
        if plan is not None or last is not None:
            rollout = {
                "strategy": plan.strategy if plan is not None else None,
                "steps": plan.steps if plan is not None else None,
                "last": last,
            }
        target = view.shadow if view is not None else None
        shadow = None
        if target is not None or state.shadow.calls:
            shadow = {
                "arm": target.arm if target is not None else None,
                "sample_percent": target.weight if target is not None else None,
                "calls": state.shadow.calls,
                "errors": state.shadow.errors,
                "p95_ms": state.shadow.quantile(0.95),
                "cost_usd": state.shadow.cost_usd,
            }
        return {
            "route": alias,
            "configured": view is not None,
            "sticky": view.sticky if view is not None else None,
            "fallbacks": list(view.fallbacks) if view is not None else [],
            "calls": state.served.calls,
            "errors": state.served.errors,
            "cancelled": state.cancelled,
            "fallback_calls": state.fallback_calls,
            "p95_ms": state.served.quantile(0.95),
            "cost_usd": state.served.cost_usd,
            "rollout": rollout,
            "arms": arms,
            "shadow": shadow,
        }


# ---- the tail: what was appended since the last read -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TailRead:
    """One read of the log: complete lines in order, and what happened to the file since the last read."""

    lines: tuple[str, ...] = ()
    too_long: int = 0  # lines dropped for exceeding max_line_bytes
    truncated: bool = False  # the file shrank: what came before is gone, start over
    rotated: bool = False  # a new file took the path; the old one was read to its end first
    missing: bool = False  # no file at the path (yet)
    behind: int = 0  # bytes written but not read yet (max_bytes was reached)
    error: str | None = None  # the file exists but cannot be read (permissions, ...): said on the page


class LogTail:
    """Reads a growing JSON-lines file incrementally.

    The offset is remembered between reads, so each read costs what was appended. A last line without its newline
    is held until the newline arrives. A file that shrank, or whose first bytes changed (rewritten in place, as a
    second ``holyroute demo`` does), is read again from the start and the read says ``truncated``. When another
    file takes the path (rotation), the old one is read to its end, then the new one from its start. A line longer
    than ``max_line_bytes`` is dropped and counted.
    """

    _HEAD = 256  # bytes of the file's start remembered to notice a rewrite that is not shorter

    def __init__(self, path: str | os.PathLike[str], *, max_line_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        self.max_line_bytes = max_line_bytes
        self.offset = 0
        self._file: BinaryIO | None = None
        self._identity: tuple[int, int] | None = None
        self._head = b""
        self._partial = bytearray()
        self._dropping = False  # inside an over-long line: skip to its newline

    def close(self) -> None:
        """Close the file; a later read opens it again from the start."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, max_bytes: int = 8 << 20) -> TailRead:
        """Complete lines appended since the last read: about ``max_bytes`` at most, the rest says ``behind``."""
        if self._file is None and not self._open():
            return TailRead(missing=True)
        handle = self._file
        assert handle is not None
        lines: list[str] = []
        truncated = rotated = False
        if self._size(handle) < self.offset or not self._same_head(handle):
            truncated = True
            self._restart(handle)
        too_long = self._drain(handle, lines, max_bytes)
        if self._replaced() and self._size(handle) <= self.offset:
            self._flush_partial(lines)  # the old file grows no more: its unterminated last line is complete
            self.close()
            rotated = True
            if self._open():
                assert self._file is not None
                handle = self._file
                too_long += self._drain(handle, lines, max_bytes)
        behind = max(0, self._size(handle) - self.offset) if self._file is not None else 0
        return TailRead(tuple(lines), too_long, truncated, rotated, False, behind)

    @staticmethod
    def _size(handle: BinaryIO) -> int:
        return os.fstat(handle.fileno()).st_size

    def _open(self) -> bool:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return False
        stat = os.fstat(handle.fileno())
        self._file, self._identity = handle, (stat.st_dev, stat.st_ino)
        self._restart(handle)
        return True

    def _replaced(self) -> bool:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return False  # moved away with nothing in its place yet: keep reading the old file
        return (stat.st_dev, stat.st_ino) != self._identity

    def _same_head(self, handle: BinaryIO) -> bool:
        if not self._head:
            return True
        handle.seek(0)
        found = handle.read(len(self._head))
        handle.seek(self.offset)
        return found == self._head

    def _restart(self, handle: BinaryIO) -> None:
        self.offset = 0
        self._head = b""
        self._partial.clear()
        self._dropping = False
        handle.seek(0)

    def _drain(self, handle: BinaryIO, lines: list[str], max_bytes: int) -> int:
        too_long = 0
        start = self.offset
        while self.offset - start < max_bytes:
            chunk = handle.read(min(1 << 20, max_bytes - (self.offset - start)))
            if not chunk:
                break
            if len(self._head) < self._HEAD and self.offset < self._HEAD:
                self._head += chunk[: self._HEAD - self.offset]
            self.offset += len(chunk)
            too_long += self._split(chunk, lines)
        return too_long

    def _split(self, chunk: bytes, lines: list[str]) -> int:
        too_long = 0
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            if self._dropping:
                self._dropping = False
                continue
            self._partial += piece
            if len(self._partial) > self.max_line_bytes:
                too_long += 1
            else:
                lines.append(self._partial.decode("utf-8", errors="replace"))
            self._partial.clear()
        if not self._dropping:
            self._partial += rest
            if len(self._partial) > self.max_line_bytes:
                too_long += 1
                self._partial.clear()
                self._dropping = True
        return too_long

    def _flush_partial(self, lines: list[str]) -> None:
        if self._partial and not self._dropping:
            lines.append(self._partial.decode("utf-8", errors="replace"))
        self._partial.clear()
        self._dropping = False


# ---- the driver: tail + board, and the HTTP server ---------------------------------------------------------------


class Dashboard:
    """A board fed by a tail of ``events``: every :meth:`state` reads what was appended, then snapshots."""

    def __init__(
        self,
        events: str | os.PathLike[str],
        config: ConfigView | None = None,
        *,
        config_path: str | None = None,
        clock: Callable[[], float] = time.time,
        poll_s: float = 1.0,
        max_bytes_per_read: int = 8 << 20,
    ) -> None:
        self.events_path = str(events)
        self.config_path = config_path
        self.board = Board(config)
        self.tail = LogTail(events)
        self.clock = clock
        self.poll_s = poll_s
        self.max_bytes_per_read = max_bytes_per_read
        self.resets = 0
        self.rotations = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self.tail.close()

    def state(self) -> dict[str, Any]:
        """Read what was appended, then the page's state plus where it came from."""
        with self._lock:
            try:
                read = self.tail.read(self.max_bytes_per_read)
            except OSError as exc:
                self.tail.close()  # start afresh once the file can be read again
                read = TailRead(error=f"cannot read {self.events_path}: {exc.strerror or exc}")
            now = self.clock()
            if read.truncated:
                self.resets += 1
                self.board.reset()
            self.rotations += read.rotated
            board = self.board
            for line in read.lines:
                board.add_line(line, now)
            for _ in range(read.too_long):
                board.skip_long_line()
            state = board.snapshot(now)
        state["source"] = {
            "events": self.events_path,
            "config": self.config_path,
            "missing": read.missing,
            "error": read.error,
            "behind_bytes": read.behind,
            "resets": self.resets,
            "rotations": self.rotations,
            "poll_ms": round(self.poll_s * 1000),
        }
        return state


_ASSETS: Final = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/index.html": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _load_assets() -> dict[str, bytes]:
    folder = resources.files(__package__ or "holyroute").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name, _ in _ASSETS.values()}


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DashboardServer(ThreadingHTTPServer):
    """Serves the page and ``/api/state`` for one :class:`Dashboard`. ``port=0`` takes a free port."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, dashboard: Dashboard, host: str = "127.0.0.1", port: int = 0) -> None:
        self.dashboard = dashboard
        self.assets = _load_assets()
        self.loopback = _loopback(host)
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[0], self.server_address[1]
        shown = str(host)
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{port}/"

    def allowed_host(self, header: str | None) -> bool:
        """On a loopback address, only loopback names: a web page elsewhere cannot rebind DNS to read the state."""
        if not self.loopback:
            return True
        if not header:
            return False
        name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
        return _loopback(name)


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "holyroute-dashboard"

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        if not self.server.allowed_host(self.headers.get("Host")):
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"unknown host\n", "text/plain; charset=utf-8")
            return
        path = self.path.split("?", 1)[0]
        if path == "/api/state":
            body = json.dumps(self.server.dashboard.state(), allow_nan=False, separators=(",", ":")).encode()
            self._send(HTTPStatus.OK, body, "application/json")
            return
        asset = _ASSETS.get(path)
        if asset is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
            return
        name, content_type = asset
        self._send(HTTPStatus.OK, self.server.assets[name], content_type)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per poll would drown the terminal


@contextmanager
def serve(
    events: str | os.PathLike[str],
    config: Config | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config_path: str | None = None,
    poll_s: float = 1.0,
) -> Iterator[DashboardServer]:
    """Serve the dashboard from a background thread for the ``with`` block; yields the server (``server.url``).

    >>> with serve("events.jsonl", port=0) as server:  # doctest: +SKIP
    ...     print(server.url)
    """
    dashboard = Dashboard(
        events, config_view(config) if config is not None else None, config_path=config_path, poll_s=poll_s
    )
    try:
        server = DashboardServer(dashboard, host, port)
    except OSError:
        dashboard.close()
        raise
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        dashboard.close()


def run(
    events: Path,
    config: Config | None,
    out: TextIO,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config_path: str | None = None,
) -> int:
    """Serve until Ctrl-C (the ``holyroute dashboard`` command). Raises ``OSError`` when the address is taken."""
    dashboard = Dashboard(events, config_view(config) if config is not None else None, config_path=config_path)
    try:
        server = DashboardServer(dashboard, host, port)
    except OSError:
        dashboard.close()
        raise
    note = "" if events.exists() else f" ({events} does not exist yet; waiting for it)"
    out.write(f"holyroute dashboard: {server.url} following {events}{note}; Ctrl-C to stop\n")
    if not server.loopback:
        out.write(
            f"  listening on {host}: anyone who can reach this port sees routes, endpoints and traffic (never keys)\n"
        )
    out.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        out.write("\n")
    finally:
        server.server_close()
        dashboard.close()
    return 0
