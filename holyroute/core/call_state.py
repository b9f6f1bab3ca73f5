"""What one call holds while it runs: the state every part of :class:`~holyroute.core.call.Call` reads and writes.

A call is split by concern into a chain of small classes, each using only those before it:
:class:`CallState` (the fields, and a locally made answer); :class:`~holyroute.core.eligibility.Eligibility` (can
this endpoint take this request now: size, cost ceilings, budgets, health); :class:`~holyroute.core.waiting.Waiting`
(the walk over endpoints, and how long to wait before another pass); :class:`~holyroute.core.accounting.Accounting`
(cooldowns, settled token debits, the failover and request events, giving up);
:class:`~holyroute.core.planning.Planning` (where the call goes first: rules, pins, the split, spend caps);
:class:`~holyroute.core.attempts.Attempts` (what each attempt's outcome does: an answer kept or failed over, an error,
the end of a stream; the one end of every attempt and of the call); :class:`~holyroute.core.sending.Sending` (the
request one attempt sends: body, URL, timeouts, headers); :class:`~holyroute.core.call.Call` (the step machine the
drivers talk to).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from holyroute.core.context import (
    TokenEncoder,
)
from holyroute.core.health import Debit, HeaderLookup, HealthBook, Transition
from holyroute.core.plan import (
    Arm,
    Leg,
    RoutePlan,
    Upstream,
)
from holyroute.core.ports import StateBackend
from holyroute.core.spend import SpendBudgets, Verdict
from holyroute.core.steps import Respond, Step

if TYPE_CHECKING:
    from holyroute.core.alerts import Alerts
    from holyroute.core.cache import CachePolicy, CacheTicket
    from holyroute.core.rollouts import Rollouts
from holyroute.config.schema import Retry

__all__ = ["CallState", "QualityCheck", "RouterView"]


#: ``quality(route, arm, body) -> bool``: whether a non-stream answer on a rollout route is good enough (not empty,
#: not a refusal, valid JSON for structured output: the application decides). Counted as its own rollout metric.
QualityCheck = Callable[[str, str, bytes], bool]


class RouterView(Protocol):
    """What a call reads and asks of its router (:class:`holyroute.core.call.Router`)."""

    _call_ids: itertools.count[int]
    alerts: Alerts | None
    backoff: Callable[[Any], float]
    caches: dict[str, CachePolicy]
    clock: Callable[[], float]
    wall_clock: Callable[[], float]
    dropped_headers: frozenset[str]
    health: HealthBook
    probing: bool
    quality: QualityCheck | None
    retry: Retry
    attempt_floor: int
    rollouts: Rollouts | None
    routes: dict[str, RoutePlan]
    spend: SpendBudgets | None
    state: StateBackend
    token_encoder: TokenEncoder | None
    tracks_latency: bool

    def emit(self, event: str, fields: dict[str, Any]) -> None: ...

    def transition(self, change: Transition | None) -> None: ...

    def pick(self, plan: RoutePlan, data: Mapping[str, Any], headers: HeaderLookup) -> Leg: ...

    def order(self, arm: Arm) -> list[Upstream]: ...

    def panicking(self, leg: Leg, now: float) -> bool: ...

    def spend_retry(self, route: str, now: float, *, floor: bool = False) -> bool: ...


class CallState:
    """The fields of a call (set in :meth:`holyroute.core.call.Call.__init__`)."""

    __slots__ = (
        "_alias",
        "_alias_token",
        "_api",
        "_asking",
        "_attempts",
        "_bodies",
        "_budget",
        "_cache",
        "_ceiling",
        "_check_size",
        "_current",
        "_current_leg",
        "_cursor",
        "_data",
        "_deadline",
        "_debits",
        "_excluded",
        "_failure",
        "_fallback_budgets",
        "_fallbacks_added",
        "_final",
        "_finish",
        "_first_byte",
        "_floor",
        "_forced",
        "_granted",
        "_headers",
        "_hide_usage",
        "_input",
        "_last_error",
        "_last_leg",
        "_last_response",
        "_legs",
        "_limit_wait",
        "_limit_waited",
        "_limited",
        "_observe",
        "_open",
        "_operation",
        "_out",
        "_paid",
        "_passes",
        "_pending_response",
        "_plan",
        "_quality",
        "_query",
        "_raw_body",
        "_rejected",
        "_request_id",
        "_router",
        "_rule",
        "_sent_at",
        "_sequence",
        "_size_cost_seen",
        "_skipped",
        "_status",
        "_stop_reason",
        "_tags",
        "_timeout",
        "_tokens",
        "_trial",
        "_wants_usage_injected",
        "done",
        "id",
        "shadow",
        "shadow_of",
        "started",
        "stream",
    )

    _alias: str
    _alias_token: bytes
    _api: str
    _asking: Upstream | None
    _attempts: int
    _bodies: dict[tuple[str, bool], bytes]
    _budget: Verdict | None
    _cache: CacheTicket | None  # the response cache's ticket, on a route that caches (opened by the driver)
    _ceiling: float | None
    _check_size: bool
    _current: Upstream | None
    _current_leg: Leg | None
    _cursor: int
    _data: Mapping[str, Any]
    _deadline: float | None
    _timeout: float | None
    _rejected: bool
    _debits: list[Debit]
    _excluded: frozenset[str]
    _failure: dict[str, Any] | None
    _fallback_budgets: dict[str, Verdict | None]
    _fallbacks_added: bool
    _final: Step | None
    _finish: str | None
    _first_byte: float | None
    _floor: int  # the attempts it makes on transient errors whatever health and the retry budget say
    _forced: bool
    _granted: Upstream | None
    _headers: HeaderLookup
    _hide_usage: bool
    _input: int | None
    _last_error: tuple[BaseException, bool] | None
    _last_leg: Leg | None
    _last_response: tuple[int, tuple[tuple[str, str], ...], bytes, Upstream, Leg | None] | None
    _legs: list[Leg]
    _limit_wait: float | None
    _limit_waited: float
    _limited: bool
    _observe: bool
    _open: bool
    _operation: str
    _out: int | None
    _paid: bool
    _passes: int
    _pending_response: tuple[int, Mapping[str, str], Upstream, Leg | None]
    _plan: RoutePlan
    _quality: bool | None
    _query: str
    _raw_body: bytes
    _request_id: str | None
    _router: RouterView
    _rule: str | None
    _sent_at: float
    _sequence: list[tuple[Leg, Upstream]]
    _size_cost_seen: dict[tuple[str, str], str | None]
    _skipped: dict[tuple[str, str], tuple[str, float | None]]
    _status: int
    _stop_reason: str | None
    _tags: tuple[str, ...]
    _tokens: int
    _trial: bool
    _wants_usage_injected: bool
    done: bool
    id: int
    shadow: CallState | None
    shadow_of: CallState | None
    started: float
    stream: bool

    def _local_answer(
        self, status: int, message: str, kind: str, code: str, *, retry_after: float | None = None
    ) -> Respond:
        self._status = status
        body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
        headers = [("content-type", "application/json"), ("x-should-retry", "false")]
        if retry_after is not None:
            headers.append(("retry-after-ms", str(max(1, round(retry_after * 1000)))))
            headers.append(("retry-after", str(max(1, round(retry_after)))))
        return Respond(status, tuple(headers), body)
