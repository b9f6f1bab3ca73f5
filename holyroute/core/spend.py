"""Spend budgets: USD caps per route, endpoint or request tag, per hour, day or month.

Spend is counted from the cost of finished calls (streams when they end), through the router's state backend, so
with ``state: {backend: redis}`` every process counts against the same cap. A budget is checked when a call starts
and when an endpoint is picked: a call already in flight always finishes, so a cap can be overshot by the calls in
flight when it is reached (and, across processes, by up to one ``sync_interval_s`` of their spend).

- ``scope: route`` / ``scope: tag``: over the cap, ``block`` answers the call at once with a 429 naming the budget;
  ``fallback`` skips the route's own arms and serves the call from its ``fallbacks`` (refused like ``block`` when
  those are over budget too, or when there are none).
- ``scope: endpoint``: over the cap, the endpoint is skipped like an ejected one; the call goes to the next endpoint
  and the fallbacks, and is refused with the budget named when none is left.

Tags come from the request header ``x-holyroute-tags`` (comma-separated; never forwarded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from holyroute.core.ports import period_key
from holyroute.forking import new_lock

if TYPE_CHECKING:
    from holyroute.config.schema import Budget
    from holyroute.core.ports import StateBackend

__all__ = ["TAGS_HEADER", "SpendBudgets", "Verdict"]

TAGS_HEADER: Final = "x-holyroute-tags"
EventSink = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A budget that is spent: which, how much, and what to do."""

    label: str  # "route chat-default", "endpoint openai-main", "tag team-a"
    usd: float
    spent: float
    period: str
    action: str

    @property
    def reason(self) -> str:
        return f"budget {self.label} spent: ${self.spent:.4f} of ${self.usd:g} this {self.period}"


class SpendBudgets:
    """The configured budgets, checked against and charged to a state backend's spend counters."""

    __slots__ = ("_announced", "_by_scope", "_emit", "_lock", "_state", "_wall")

    def __init__(
        self, budgets: Iterable[Budget], state: StateBackend, *, emit: EventSink, wall_clock: Callable[[], float]
    ) -> None:
        self._by_scope: dict[str, dict[str, list[Budget]]] = {"route": {}, "endpoint": {}, "tag": {}}
        for budget in budgets:
            self._by_scope[budget.scope].setdefault(budget.name, []).append(budget)
        self._state = state
        self._emit = emit
        self._wall = wall_clock
        self._announced: set[tuple[str, str, str, str]] = set()
        self._lock = new_lock()

    @property
    def has_endpoint_budgets(self) -> bool:
        return bool(self._by_scope["endpoint"])

    @staticmethod
    def tags(headers: Mapping[str, str] | Any) -> tuple[str, ...]:
        """The request's tags (``x-holyroute-tags: team-a, batch``)."""
        raw = headers.get(TAGS_HEADER)
        if not raw:
            return ()
        return tuple(tag for tag in (part.strip() for part in raw.split(",")) if tag)

    def over(self, scope: str, names: Iterable[str]) -> Verdict | None:
        """The first budget of ``scope`` among ``names`` that is spent, if any."""
        budgets = self._by_scope[scope]
        if not budgets:
            return None
        for name in names:
            for budget in budgets.get(name, ()):
                key = f"budget:{scope}:{name}"
                spent = self._state.spent(key, budget.period)
                if spent >= budget.usd:
                    verdict = Verdict(f"{scope} {name}", budget.usd, spent, budget.period, budget.action)
                    self._announce(budget, verdict)
                    return verdict
        return None

    def charge(self, route: str, endpoint: str | None, tags: Iterable[str], usd: float) -> None:
        """Count a finished call's cost against every budget it falls under."""
        for scope, names in (("route", (route,)), ("endpoint", (endpoint,) if endpoint else ()), ("tag", tags)):
            budgets = self._by_scope[scope]
            for name in names:
                if name in budgets:
                    self._state.add_spend(f"budget:{scope}:{name}", usd)

    def _announce(self, budget: Budget, verdict: Verdict) -> None:
        """One ``holyroute.budget_exceeded`` per budget and period bucket (per process), not one per call."""
        key = (budget.scope, budget.name, budget.period, period_key(budget.period, self._wall()))
        with self._lock:
            if key in self._announced:
                return
            self._announced.add(key)
            if len(self._announced) > 1024:
                self._announced = {key}
        self._emit(
            "holyroute.budget_exceeded",
            {
                "scope": budget.scope,
                "name": budget.name,
                "period": budget.period,
                "usd": budget.usd,
                "spent_usd": round(verdict.spent, 6),
                "action": budget.action,
                "reason": verdict.reason,
            },
        )
