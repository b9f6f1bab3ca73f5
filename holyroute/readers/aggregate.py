"""The one aggregation of holyroute's event log: every number ``holyroute report`` and ``holyroute dashboard`` show.

:class:`Aggregate` folds lines (or parsed events) in, one at a time, so the report reads a log in one pass and the
dashboard's tail updates the same object as the log grows. Both render from it and from nothing else (an
import-linter contract keeps them from reading the log themselves), so they cannot disagree. What it decides:

- **Which lines count.** A line is a well-formed ``holyroute.*`` event (:func:`holyroute.readers.log.parse_line`) or
  is skipped and counted: not JSON, not a holyroute event, malformed (a field out of range), too long (the tail's
  limit). A request event without a route name, or with a non-text arm, is a malformed request: counted, left out.
- **Where a call counts.** Per route, every served call as the application saw it (``served``: a call a fallback
  rescued is that fallback's answer); per arm, each served call charged by :func:`holyroute.readers.log.charged_arm`,
  as the rollout analysis charges it (a rescued call is an error of the arm the split chose, ``split_arm``); a
  rescued call of a log from before ``split_arm`` counts for no arm (``unattributed``, by fallback and serving arm).
  Shadow copies count apart, per shadow arm, and are not the application's calls. Per endpoint and per (route,
  serving arm, endpoint) row, every call that ended there (shadow copies too); ``holyroute.failover`` events count
  as failed attempts of their endpoint. A call answered from the response cache (``cache: hit``) counts for its route
  and the totals only: it ended on no endpoint and measures no arm. Cancelled calls: see
  :mod:`holyroute.readers.tally`.
- **Bounds.** At most :data:`MAX_NAMES` routes, endpoints and arms per route, and :data:`MAX_ROWS` rows; calls of
  further names are counted in ``dropped_names`` only. The time series keeps at most :data:`MAX_BUCKETS` buckets,
  widening them (merging exactly) as the log grows.

:func:`time_series` cuts a log into equal windows for ``report --plot`` with the same charging rule. No I/O here
except :func:`read_log`, and no clock: the time an event was read is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from holyroute.readers.activity import ACTIVITY_EVENTS, Activity, EndpointHealth, RolloutStep, bounded_text
from holyroute.readers.log import EventLog, charged_arm, epoch, parse_line
from holyroute.readers.tally import Call, Tally

__all__ = [
    "MAX_BUCKETS",
    "MAX_NAMES",
    "MAX_ROWS",
    "NO_ARM",
    "Aggregate",
    "EndpointRecord",
    "RouteRecord",
    "RowRecord",
    "Series",
    "TimeSeries",
    "aggregate_events",
    "aggregate_log",
    "read_log",
    "time_series",
]

MAX_NAMES: Final = 256  # routes, endpoints, and arms per route, beyond which new names are counted, not kept
MAX_ROWS: Final = 4096  # (route, arm, endpoint) rows
MAX_OUTCOMES: Final = 16  # distinct outcomes counted; further ones count as "(other)"
MAX_BUCKETS: Final = 120  # points of the time series; the bucket width grows to keep the whole log within this many
NO_ARM: Final = "(none)"
# Each width divides the next, so buckets merge exactly when the log outgrows MAX_BUCKETS.
_WIDTHS: Final = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 10800.0, 21600.0, 43200.0)

_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(slots=True)
class RouteRecord:
    """What the log said about one route alias."""

    served: Tally = field(default_factory=Tally)  # every served call, as the application saw it
    arms: dict[str, Tally] = field(default_factory=dict)  # by the arm each call is charged to
    unattributed: dict[tuple[str, str], Tally] = field(default_factory=dict)  # (fallback, arm): no split_arm
    shadows: dict[str, Tally] = field(default_factory=dict)  # by shadow arm
    served_events: int = 0
    shadow_events: int = 0
    sticky: int = 0  # served calls assigned per key
    rescued: int = 0  # served calls (not cancelled) a fallback answered
    rollout: RolloutStep | None = None
    panic: set[str] = field(default_factory=set)  # arms in panic mode

    def shadow(self) -> Tally:
        """Every shadow copy of the route, whatever its arm."""
        total = Tally()
        for tally in self.shadows.values():
            total.merge(tally)
        return total


@dataclass(slots=True)
class EndpointRecord:
    """What the log said about one endpoint: the calls that ended on it, and its health."""

    served: Tally = field(default_factory=Tally)
    health: EndpointHealth = field(default_factory=EndpointHealth)


@dataclass(slots=True)
class RowRecord:
    """One (route, serving arm, endpoint): the calls that ended there and the failovers away from it."""

    tally: Tally = field(default_factory=Tally)
    failovers: int = 0


class TimeSeries:
    """Served calls per time bucket; buckets widen (merging exactly) to stay within :data:`MAX_BUCKETS`."""

    __slots__ = ("buckets", "level")

    def __init__(self) -> None:
        self.level = 0
        self.buckets: dict[int, Tally] = {}

    @property
    def width(self) -> float:
        level = self.level
        if level < len(_WIDTHS):
            return _WIDTHS[level]
        return _WIDTHS[-1] * float(2 ** (level - len(_WIDTHS) + 1))

    def add(self, at: float, call: Call, *, shadow: bool = False) -> None:
        """One call at ``at``; a shadow copy adds only the money spent (it is not a call the application made)."""
        key = math.floor(at / self.width)
        if key not in self.buckets:
            self.buckets[key] = Tally()
            while max(self.buckets) - min(self.buckets) >= MAX_BUCKETS:
                key //= self._widen()
        tally = self.buckets[key]
        if not shadow:
            tally.add(call)
        elif call.cost_usd is not None:
            tally.cost_usd += call.cost_usd

    def _widen(self) -> int:
        """The next width up the ladder; returns by how many times it grew."""
        before = self.width
        self.level += 1
        ratio = round(self.width / before)
        merged: dict[int, Tally] = {}
        for key, tally in self.buckets.items():
            into = merged.get(key // ratio)
            if into is None:
                merged[key // ratio] = tally
            else:
                into.merge(tally)
        self.buckets = merged
        return ratio


def request_key(event: Mapping[str, Any]) -> tuple[str, str] | None:
    """(route, serving arm) of a well-formed request event, else None."""
    route, arm = event.get("route"), event.get("arm")
    if not isinstance(route, str) or not route or not (arm is None or isinstance(arm, str)):
        return None
    return route, arm or NO_ARM


def charge(event: Mapping[str, Any], call: Call) -> tuple[str | None, Call]:
    """The arm a served call counts for and the call as that arm counts it (a rescued call is its error); no arm for
    a rescued call whose event does not name the split's arm."""
    charged = charged_arm(event)
    if charged is None:
        return None, call
    return charged.arm, call.failed() if charged.failed else call


def _named(found: dict[_K, _V], key: _K, make: Callable[[], _V], limit: int) -> _V | None:
    value = found.get(key)
    if value is None and len(found) < limit:
        value = found[key] = make()
    return value


class Aggregate:
    """Every number the readers show, folded from the log one line (or event) at a time.

    >>> aggregate = Aggregate()
    >>> aggregate.add_line('{"event": "holyroute.request", "route": "chat", "arm": "new", "split_arm": "new", '
    ...                    '"outcome": "ok", "latency_ms": 120.0}')
    >>> aggregate.add_line("not json")
    >>> aggregate.routes["chat"].arms["new"].calls, aggregate.not_json
    (1, 1)
    """

    def __init__(self, source: str = "") -> None:
        self.source = source
        self.reset()

    def reset(self) -> None:
        """Forget everything (the log was truncated or replaced)."""
        self.version = 0  # grows with every line: whoever shows the numbers can tell they changed
        self.lines = self.events = 0
        self.not_json = self.not_holyroute = self.malformed = self.too_long = 0
        self.request_events = self.malformed_requests = self.unknown_events = self.dropped_names = 0
        self.outcomes: dict[str, int] = {}
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.totals = Tally()  # every served call of every route
        self.shadow = Tally()  # every shadow copy
        self.series = TimeSeries()
        self.routes: dict[str, RouteRecord] = {}
        self.endpoints: dict[str, EndpointRecord] = {}
        self.rows: dict[tuple[str, str, str], RowRecord] = {}
        self.activity = Activity()

    @property
    def skipped(self) -> int:
        """Lines skipped: not JSON, not holyroute events, malformed or too long."""
        return self.not_json + self.not_holyroute + self.malformed + self.too_long

    # ---- input ----------------------------------------------------------------------------------------------------

    def add_line(self, line: str, received: float | None = None) -> None:
        """One line of the log: a holyroute event is added; anything else is counted as skipped (a blank line only
        as a line)."""
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
            except Exception:  # a field no check foresaw: this line is lost, never the lines after it
                self.malformed += 1

    def skip_long_line(self) -> None:
        """A line longer than the tail keeps was dropped."""
        self.lines += 1
        self.too_long += 1
        self.version += 1

    def add(self, event: Mapping[str, Any], received: float | None = None) -> None:
        """Fold one ``holyroute.*`` event in; ``received`` places an event without a timestamp in time."""
        self.events += 1
        self.version += 1
        at = epoch(event.get("timestamp"))
        if at is None:
            at = received
        if at is not None:
            self.first_at = at if self.first_at is None else min(self.first_at, at)
            self.last_at = at if self.last_at is None else max(self.last_at, at)
        name = str(event.get("event"))
        if name == "holyroute.request":
            self._request(event, at)
        elif name == "holyroute.failover":
            self._failover(event, at)
        elif name == "holyroute.alert":
            self.activity.alert(event, at or 0.0)
        elif name in ACTIVITY_EVENTS:
            self._change(name, event, at or 0.0)
        else:
            self.unknown_events += 1
        if "remaining_requests" in event or "remaining_tokens" in event:
            endpoint = self._endpoint(event.get("endpoint"))
            if endpoint is not None:
                endpoint.health.headroom(event, at or 0.0)

    def _request(self, event: Mapping[str, Any], at: float | None) -> None:
        self.request_events += 1
        key = request_key(event)
        if key is None:
            self.malformed_requests += 1
            return
        call = Call.of(event)
        outcome = call.outcome if call.outcome is not None else "(none)"
        if outcome not in self.outcomes and len(self.outcomes) >= MAX_OUTCOMES:
            outcome = "(other)"
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        hit = call.cache == "hit"
        if not hit:  # a cached answer ended on no endpoint
            self._ended_on(event, key, call, at)
        route = self.routes.get(key[0]) or self._route(key[0])
        if route is None:
            return
        if event.get("shadow") is True:
            route.shadow_events += 1
            self.shadow.add(call)
            self._tally(route.shadows, key[1]).add(call)
            if at is not None:
                self.series.add(at, call, shadow=True)
            return
        route.served_events += 1
        route.served.add(call)
        self.totals.add(call)
        if at is not None:
            self.series.add(at, call)
        route.sticky += event.get("sticky") is True
        fallback = event.get("fallback")
        route.rescued += isinstance(fallback, str) and bool(fallback) and call.outcome != "cancelled"
        if hit:
            return  # answered from the cache: no measurement of any arm (as the rollout analysis does not count it)
        arm, charged = charge(event, call)
        if arm is None:  # a fallback served it and the event does not name the split's arm (an older log)
            self._tally(route.unattributed, (str(event.get("fallback")), key[1])).add(call)
        else:
            (route.arms.get(arm) or self._tally(route.arms, arm)).add(charged)

    def _ended_on(self, event: Mapping[str, Any], key: tuple[str, str], call: Call, at: float | None) -> None:
        """The endpoint and row where the call ended (shadow copies too)."""
        name = event.get("endpoint")
        row = self.rows.get((key[0], str(event.get("arm")), str(name))) or self._row(
            key[0], str(event.get("arm")), name
        )
        if row is not None:
            row.tally.add(call)
        endpoint = self.endpoints.get(name) if isinstance(name, str) else None
        endpoint = endpoint or self._endpoint(name)
        if endpoint is not None:
            endpoint.served.add(call)
            if call.outcome != "cancelled":
                endpoint.health.attempt(call.outcome == "error", at or 0.0)

    def _failover(self, event: Mapping[str, Any], at: float | None) -> None:
        self.activity.failover(event, at or 0.0)
        endpoint = self._endpoint(event.get("endpoint"))
        if endpoint is not None:
            endpoint.health.attempt(True, at or 0.0)
        self._route(event.get("route"))
        row = self._row(str(event.get("route")), str(event.get("arm")), event.get("endpoint"))
        if row is not None:
            row.failovers += 1

    def _change(self, name: str, event: Mapping[str, Any], at: float) -> None:
        endpoint = self._endpoint(event.get("endpoint"))
        route = self._route(event.get("route")) if "route" in event else None
        kind = ACTIVITY_EVENTS[name]
        reason = bounded_text(event.get("reason"))
        if endpoint is not None:
            kind = endpoint.health.change(name, event, at, reason) or kind
        if name in ("holyroute.panic", "holyroute.panic_over") and route is not None:
            arm = bounded_text(event.get("arm"), 120) or NO_ARM
            (route.panic.add if name == "holyroute.panic" else route.panic.discard)(arm)
        elif name == "holyroute.rollout" and route is not None:
            route.rollout = RolloutStep.of(event, at, reason)
            kind = {"aborted": "bad", "completed": "good"}.get(str(event.get("status")), "info")
        self.activity.change(name, event, at, kind)

    # ---- bounded names --------------------------------------------------------------------------------------------

    def _tally(self, found: dict[_K, Tally], key: _K) -> Tally:
        tally = _named(found, key, Tally, MAX_NAMES)
        if tally is None:
            self.dropped_names += 1
            return Tally()  # counted nowhere
        return tally

    def _endpoint(self, value: object) -> EndpointRecord | None:
        if not isinstance(value, str) or not value:
            return None
        found = _named(self.endpoints, value, EndpointRecord, MAX_NAMES)
        self.dropped_names += found is None
        return found

    def _route(self, value: object) -> RouteRecord | None:
        if not isinstance(value, str) or not value:
            return None
        found = _named(self.routes, value, RouteRecord, MAX_NAMES)
        self.dropped_names += found is None
        return found

    def _row(self, route: str, arm: str, endpoint: object) -> RowRecord | None:
        found = _named(self.rows, (route, arm, str(endpoint)), RowRecord, MAX_ROWS)
        self.dropped_names += found is None
        return found


def aggregate_events(events: Iterable[Mapping[str, Any]], source: str = "") -> Aggregate:
    """The aggregation of parsed events (for example a test's, or ``structlog.testing.capture_logs()``)."""
    aggregate = Aggregate(source)
    for event in events:
        try:
            aggregate.add(event)
        except Exception:  # a field no check foresaw: this event is lost, never the events after it
            aggregate.malformed += 1
    return aggregate


def aggregate_log(log: EventLog) -> Aggregate:
    """The aggregation of a log :func:`holyroute.readers.log.load_log` read, with its skipped lines."""
    aggregate = aggregate_events(log.events, log.path)
    aggregate.not_json, aggregate.not_holyroute, aggregate.malformed = log.not_json, log.not_holyroute, log.malformed
    aggregate.lines = len(log.events) + log.not_json + log.not_holyroute + log.malformed
    return aggregate


def read_log(path: str | Path) -> Aggregate:
    """The aggregation of the log at ``path``, read line by line. Raises ``OSError`` when it cannot be read."""
    aggregate = Aggregate(str(path))
    # Undecodable bytes become U+FFFD: such a line fails to parse and is counted, rather than ending the read.
    with Path(path).open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            aggregate.add_line(line)
    return aggregate


# ---- over time (report --plot) -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Series:
    """One arm of one route over time: per window, its start (Unix seconds, or event index without timestamps),
    calls, p50/p95 latency and error rate (None for an empty window)."""

    route: str
    arm: str
    by_time: bool
    starts: tuple[float, ...]
    calls: tuple[int, ...]
    p50_ms: tuple[float | None, ...]
    p95_ms: tuple[float | None, ...]
    error_rate: tuple[float | None, ...]


def time_series(events: Iterable[Mapping[str, Any]], *, route: str | None = None, windows: int = 20) -> list[Series]:
    """Per route and arm (shadow targets as ``"<arm> (shadow)"``), served and shadow calls in ``windows`` equal
    windows: of time when every request event has a timestamp, else of the events' order in the log. Calls are
    charged to arms as :class:`Aggregate` charges them (a rescued call without ``split_arm`` is left out); cancelled
    calls are left out."""
    by_route: dict[str, list[tuple[Call, str, float | None]]] = {}
    for event in events:
        if event.get("event") != "holyroute.request":
            continue
        key = request_key(event)
        if key is None or (route is not None and key[0] != route):
            continue
        call = Call.of(event)
        if event.get("shadow") is True:
            arm: str | None = f"{key[1]} (shadow)"
        else:
            arm, call = charge(event, call)
        if arm is not None:
            by_route.setdefault(key[0], []).append((call, arm, epoch(event.get("timestamp"))))
    return [series for name in sorted(by_route) for series in _windows(name, by_route[name], windows)]


def _windows(route: str, rows: list[tuple[Call, str, float | None]], windows: int) -> list[Series]:
    by_time = all(moment is not None for _, _, moment in rows)
    positions = [moment if by_time and moment is not None else float(i) for i, (_, _, moment) in enumerate(rows)]
    first, last = min(positions), max(positions)
    width = (last - first) / windows if last > first else 1.0
    buckets: dict[str, list[Tally]] = {}
    for (call, arm, _), position in zip(rows, positions, strict=True):
        index = min(windows - 1, int((position - first) / width))
        buckets.setdefault(arm, [Tally() for _ in range(windows)])[index].add(call)
    starts = tuple(first + i * width for i in range(windows))
    return [
        Series(
            route=route,
            arm=arm,
            by_time=by_time,
            starts=starts,
            calls=tuple(t.calls for t in buckets[arm]),
            p50_ms=tuple(t.latency.quantile(0.50) for t in buckets[arm]),
            p95_ms=tuple(t.latency.quantile(0.95) for t in buckets[arm]),
            error_rate=tuple(t.error_rate for t in buckets[arm]),
        )
        for arm in sorted(buckets)
    ]
