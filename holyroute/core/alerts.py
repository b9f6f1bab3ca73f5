"""Alerts: thresholds per route or endpoint over rolling windows, one event and one hook call per incident.

Each rule watches one metric of the calls a route or an endpoint served, over the last ``window``:

- ``error_rate``: failed calls / calls;
- ``p95_latency_ms``: the 95th percentile of call latency (from a mergeable sketch, within 1%);
- ``cost_per_call_usd``: spend / priced calls;
- ``projected_daily_usd``: the window's spend scaled to a day (``spend * 86400 / window``; while the process has
  seen less than a window, the time it has seen, at least a tenth of the window).

A rule fires when its metric is above ``above`` with at least ``min_calls`` calls in the window, and resolves when
the metric is back at or under ``resolve_below`` (default: ``above``) or the window holds no call. Firing and
resolving each emit ``holyroute.alert`` (``state: firing | resolved``) and call the hooks once; between the two,
nothing more is said, however many calls cross the threshold. A ``p95_latency_ms`` rule is re-evaluated at most
once a second (merging its sketches is the costly part); the others on every call. The window is kept in ten
slices, so it slides in steps of a tenth. Alerts are evaluated per process, from the calls that process made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from holyroute.forking import new_lock
from holyroute.rollout.stats import LatencySketch

if TYPE_CHECKING:
    from holyroute.config.schema import AlertRule

__all__ = ["Alert", "AlertHook", "Alerts"]

EventSink = Callable[[str, dict[str, Any]], None]
_SLICES = 10
_P95_EVERY_S = 1.0  # how often a p95 rule is re-evaluated as calls come in
_DEFAULT_MIN_CALLS = {"error_rate": 20, "p95_latency_ms": 20, "cost_per_call_usd": 5, "projected_daily_usd": 1}


@dataclass(frozen=True, slots=True)
class Alert:
    """One firing or resolution, as hooks receive it (the same fields as the ``holyroute.alert`` event)."""

    alert: str  # the rule's name
    state: Literal["firing", "resolved"]
    scope: str
    name: str  # the route or endpoint
    metric: str
    value: float | None
    threshold: float
    calls: int
    window_s: float
    reason: str

    def fields(self) -> dict[str, Any]:
        return {
            "alert": self.alert,
            "state": self.state,
            "scope": self.scope,
            "name": self.name,
            "metric": self.metric,
            "value": None if self.value is None else round(self.value, 6),
            "threshold": self.threshold,
            "calls": self.calls,
            "window_s": self.window_s,
            "reason": self.reason,
        }


AlertHook = Callable[[Alert], None]


class _Slice:
    __slots__ = ("calls", "cost", "errors", "latency", "priced", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.calls = 0
        self.errors = 0
        self.priced = 0
        self.cost = 0.0
        self.latency: LatencySketch | None = None


class _Window:
    """Ten slices of a rule's window for one route or endpoint, and whether its incident is open."""

    __slots__ = ("evaluated_at", "firing", "first_seen", "slices")

    def __init__(self, now: float) -> None:
        self.slices: list[_Slice] = []
        self.firing = False
        self.first_seen = now
        self.evaluated_at = float("-inf")

    def add(
        self, now: float, width: float, *, ok: bool, latency_ms: float | None, cost: float | None, p95: bool
    ) -> None:
        if not self.slices or now - self.slices[-1].start >= width:
            self.slices.append(_Slice(now))
        current = self.slices[-1]
        current.calls += 1
        current.errors += not ok
        if cost is not None:
            current.priced += 1
            current.cost += cost
        if p95 and latency_ms is not None:
            if current.latency is None:
                current.latency = LatencySketch()
            current.latency.add(latency_ms)

    def trim(self, now: float, window: float) -> None:
        width = window / _SLICES
        while self.slices and self.slices[0].start + width <= now - window:
            self.slices.pop(0)


class Alerts:
    """The configured rules, fed each finished call (``observe``), emitting and calling hooks on changes."""

    __slots__ = ("_clock", "_emit", "_hooks", "_lock", "_rules", "_windows")

    def __init__(self, rules: Iterable[AlertRule], *, emit: EventSink, clock: Callable[[], float]) -> None:
        self._rules = list(rules)
        self._emit = emit
        self._clock = clock
        self._hooks: list[AlertHook] = []
        self._windows: dict[tuple[int, str], _Window] = {}
        self._lock = new_lock()

    def add_hook(self, hook: AlertHook) -> None:
        """Call ``hook(alert)`` on every firing and resolution (from the thread that finished the call)."""
        self._hooks.append(hook)

    def observe(self, fields: Mapping[str, Any]) -> None:
        """One finished call (the fields of its ``holyroute.request`` event)."""
        if fields.get("shadow"):
            return
        now = self._clock()
        ok = fields.get("outcome") != "error"
        latency = fields.get("latency_ms")
        cost = fields.get("cost_usd")
        changes: list[Alert] = []
        with self._lock:
            for index, rule in enumerate(self._rules):
                name = fields.get(rule.scope)
                if not isinstance(name, str) or rule.name not in ("*", name):
                    continue
                window = self._windows.get((index, name))
                if window is None:
                    window = self._windows[(index, name)] = _Window(now)
                window.add(
                    now,
                    rule.window / _SLICES,
                    ok=ok,
                    latency_ms=latency,
                    cost=cost,
                    p95=rule.metric == "p95_latency_ms",
                )
                if rule.metric == "p95_latency_ms":
                    # Merging the slices' sketches costs hundreds of microseconds: at most once a second, not per call.
                    if now - window.evaluated_at < _P95_EVERY_S:
                        continue
                    window.evaluated_at = now
                change = self._evaluate(rule, name, window, now)
                if change is not None:
                    changes.append(change)
        for change in changes:
            self._announce(change)

    def tick(self) -> None:
        """Re-evaluate every open incident without a new call (windows that emptied resolve)."""
        now = self._clock()
        changes: list[Alert] = []
        with self._lock:
            for (index, name), window in self._windows.items():
                if window.firing:
                    change = self._evaluate(self._rules[index], name, window, now)
                    if change is not None:
                        changes.append(change)
        for change in changes:
            self._announce(change)

    def firing(self) -> list[tuple[str, str]]:
        """The open incidents: (rule name, route or endpoint)."""
        with self._lock:
            return [(self._rules[i].label, name) for (i, name), window in self._windows.items() if window.firing]

    def _evaluate(self, rule: AlertRule, name: str, window: _Window, now: float) -> Alert | None:
        window.trim(now, rule.window)
        calls = sum(s.calls for s in window.slices)
        value = _metric(rule.metric, window, rule.window, now) if calls else None
        min_calls = rule.min_calls if rule.min_calls is not None else _DEFAULT_MIN_CALLS[rule.metric]
        resolve_below = rule.resolve_below if rule.resolve_below is not None else rule.above
        span = f"over the last {rule.window:g}s ({calls} calls)"
        if not window.firing:
            if value is None or calls < min_calls or value <= rule.above:
                return None
            window.firing = True
            return Alert(
                rule.label, "firing", rule.scope, name, rule.metric, value, rule.above, calls, rule.window,
                f"{rule.metric} {_show(rule.metric, value)} > {_show(rule.metric, rule.above)} {span}",
            )  # fmt: skip
        if value is not None and value > resolve_below:
            return None
        window.firing = False
        why = (
            f"no calls over the last {rule.window:g}s"
            if value is None
            else f"{rule.metric} {_show(rule.metric, value)} <= {_show(rule.metric, resolve_below)} {span}"
        )
        return Alert(rule.label, "resolved", rule.scope, name, rule.metric, value, rule.above, calls, rule.window, why)

    def _announce(self, alert: Alert) -> None:
        self._emit("holyroute.alert", alert.fields())
        for hook in list(self._hooks):
            try:
                hook(alert)
            except Exception as exc:  # a hook's bug must not break the call that happened to trigger it
                self._emit(
                    "holyroute.alert_hook_failed",
                    {"alert": alert.alert, "reason": f"{type(exc).__name__}: {str(exc)[:200]}"},
                )


def _metric(metric: str, window: _Window, length: float, now: float) -> float | None:
    slices = window.slices
    calls = sum(s.calls for s in slices)
    if metric == "error_rate":
        return sum(s.errors for s in slices) / calls
    if metric == "p95_latency_ms":
        merged = LatencySketch()
        for s in slices:
            if s.latency is not None:
                merged.merge(s.latency)
        return merged.quantile(0.95)
    priced = sum(s.priced for s in slices)
    cost = sum(s.cost for s in slices)
    if metric == "cost_per_call_usd":
        return cost / priced if priced else None
    seen = min(length, max(now - window.first_seen, length / _SLICES))
    return cost * 86400.0 / seen


def _show(metric: str, value: float) -> str:
    if metric == "error_rate":
        return f"{value:.1%}"
    if metric == "p95_latency_ms":
        return f"{value:.0f} ms"
    return f"${value:.4g}"
