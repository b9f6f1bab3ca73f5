"""The decision core: plan a call, judge each attempt, decide the next step, account for the result.

Sans-I/O in the manner of h11 and tenacity's ``iter()``: a :class:`Router` turns a request description into a
:class:`Call`, and a call answers ``next_step()`` with what to do next: :class:`Send` an attempt, :class:`Wait`,
:class:`Respond` with a finished answer, or :class:`GiveUp` with the last transport error. The transports
(``_transport.py``) perform exactly those steps and report back with ``on_response`` / ``on_error``. Every rule about
where traffic goes lives here: the split and stickiness (``_routing``), cooldowns (``_health``), the retry schedule
(tenacity's wait objects), fallbacks, the attempt bound, and the events that explain each decision.

Failover never crosses to another arm of the same split (that would corrupt the split): it walks the chosen arm's
endpoints in order, then the fallback aliases in order. This module never performs I/O, never sleeps, and reads time
only from the clocks it is given; it never logs a key or prompt text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote_plus

from ._alerts import Alerts
from ._boundary import clamp_tokens, parse_request, requested_choices
from ._budget import RetryBudget
from ._catalogue import catalogue_bound, catalogue_cost, catalogue_model, catalogue_source
from ._context import (
    DEFAULT_OUTPUT_RESERVE,
    ModelLimits,
    TokenEncoder,
    estimate_input_tokens,
    fits,
    limits_for,
    tiktoken_encoding,
)
from ._context import requested_output_tokens as _requested_output
from ._health import Debit, HeaderLookup, HealthBook, Transition, server_delay
from ._prices import PriceRow
from ._routing import SplitPicker
from ._rules import DEFAULT_RULE, CompiledRules, compile_rules
from ._spend import TAGS_HEADER, SpendBudgets, Verdict
from ._state import HealthChange, StateBackend, open_backend
from ._usage import Usage, cost_usd, find_price, finish_reason, usage_from_body

if TYPE_CHECKING:
    from ._rollout import Rollouts
from .config import Config, Endpoint, EndpointRef, Target

__all__ = [
    "OPERATIONS",
    "Acquire",
    "Call",
    "EventSink",
    "GiveUp",
    "QualityCheck",
    "Respond",
    "Router",
    "Send",
    "Wait",
]

EventSink = Callable[[str, dict[str, Any]], None]
#: ``quality(route, arm, body) -> bool``: whether a non-stream answer on a rollout route is good enough (not empty,
#: not a refusal, valid JSON for structured output: the application decides). Counted as its own rollout metric.
QualityCheck = Callable[[str, str, bytes], bool]

#: Path suffix -> API family, for the model-bearing operations holyroute routes.
OPERATIONS: Final = {
    "chat/completions": "chat",
    "responses": "responses",
    "embeddings": "embeddings",
    "completions": "completions",
}
_INJECT_USAGE_APIS: Final = frozenset({"chat", "completions"})
PIN_HEADER: Final = "x-holyroute-arm"
#: A per-request cost ceiling in USD (``x-holyroute-max-cost: 0.05``); never forwarded.
MAX_COST_HEADER: Final = "x-holyroute-max-cost"
#: The shortest wait for an rpm/tpm reset (a reset that is due now still needs the bucket to be asked again).
_MIN_LIMIT_WAIT_S: Final = 0.001
#: Headers that belong to the caller's own account or to the hop, never forwarded to a routed endpoint (an endpoint's
#: ``forward_headers`` may name a credential to forward to that endpoint only; see config.Endpoint).
DROPPED_HEADERS: Final = frozenset(
    {
        "host",
        "authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "cookie",
        "proxy-authorization",
        "openai-organization",
        "openai-project",
        "content-length",
        "transfer-encoding",
        "connection",
        "accept-encoding",
        PIN_HEADER,
        TAGS_HEADER,
        MAX_COST_HEADER,
    }
)
#: Query parameters that carry the caller's credentials, never forwarded (names compared case-insensitively).
DROPPED_QUERY: Final = frozenset({"key", "api-key", "api_key", "access_token"})
RETRYABLE_STATUS: Final = frozenset({408, 409, 429})
_IDENTITY: Final = ("accept-encoding", "identity")
_GZIP_DEFLATE: Final = ("accept-encoding", "gzip, deflate")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One endpoint serving one arm's model: everything needed to address it, precomputed at load."""

    endpoint: str
    model: str
    base_url: str
    headers: tuple[tuple[str, str], ...]  # auth and configured headers; holds the secret, never logged
    query: str
    timeout: float | None
    price: PriceRow | None
    stream_usage: bool
    token: bytes  # the model as a JSON string token, for swapping it into a body
    limits: ModelLimits | None = None  # context window and output cap, when known
    forward: frozenset[str] = frozenset()  # the caller's headers forwarded here although dropped elsewhere
    price_source: str = "catalogue"  # where its cost comes from: "endpoint" or "config" (``price``), or the catalogue
    provider: str | None = None  # the catalogue provider configured for the endpoint (None: inferred)

    def __repr__(self) -> str:  # the headers hold the key
        return f"Upstream(endpoint={self.endpoint!r}, model={self.model!r})"


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    model: str
    upstreams: tuple[Upstream, ...]
    balance: str = "ordered"
    turns: itertools.count[int] = field(default_factory=itertools.count, compare=False)  # round robin

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(u.endpoint for u in self.upstreams)


@dataclass(frozen=True, slots=True)
class RoutePlan:
    alias: str
    arms: tuple[Arm, ...]
    picker: SplitPicker
    sticky: str | None
    fallbacks: tuple[str, ...]
    token: bytes  # the alias as a JSON string token
    shadow: Arm | None = None  # mirrors a sampled share of calls
    shadow_sample: float = 0.0
    shadow_cap_usd: float | None = None
    rules: CompiledRules[str | Arm] | None = None  # before the split: an alias, or an inline arm
    max_cost_usd: float | None = None
    #: No upstream this plan may reach (its arms, fallbacks and rule targets) holds fewer tokens than this, or
    #: caps its output below ``out_floor``: a request under both needs no size check.
    fit_floor: int = 1 << 62
    out_floor: int = 1 << 62


@dataclass(frozen=True, slots=True)
class Leg:
    """The arm chosen for the route or for one of its fallbacks."""

    route: str
    arm: Arm
    fallback: str | None
    sticky: bool


# ---- steps the core asks the transports to take ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send one attempt: ``url``, replace the headers named in ``drop`` with ``headers``, send ``body``.

    ``timeout`` caps every phase of the attempt (the endpoint's timeout and the caller's remaining deadline);
    ``headers_timeout`` caps the wait for the response headers only.
    """

    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    timeout: float | None
    endpoint: str
    headers_timeout: float | None = None
    drop: frozenset[str] = DROPPED_HEADERS  # the caller's headers not to forward (also those rules read)

    def __repr__(self) -> str:
        return f"Send(url={self.url!r}, endpoint={self.endpoint!r})"


@dataclass(frozen=True, slots=True)
class Wait:
    """Sleep this long, then ask again."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Respond:
    """Hand this answer to the caller as the final response."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Every attempt failed without an HTTP answer: re-raise ``error`` (a timeout when ``timeout``)."""

    error: BaseException
    timeout: bool
    summary: str


@dataclass(frozen=True, slots=True)
class Acquire:
    """Ask the router's state backend for room under ``endpoint``'s shared rpm/tpm limits (one request and
    ``tokens`` estimated tokens), then report its answer with :meth:`Call.on_acquired`."""

    endpoint: str
    rpm: int | None
    tpm: int | None
    tokens: int


Step = Send | Wait | Respond | GiveUp | Acquire


@dataclass(frozen=True, slots=True)
class Accepted:
    """How the transport should watch the body of an accepted answer."""

    event_stream: bool
    hide_usage_chunk: bool
    content_encoding: str | None


class _WaitState:
    """The slice of tenacity's ``RetryCallState`` its wait strategies read."""

    __slots__ = ("attempt_number", "outcome", "seconds_since_start")

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number
        self.outcome = None
        self.seconds_since_start = 0.0


def _structlog_sink() -> EventSink:
    import structlog  # imported when the first client is built, keeping `import holyroute` light

    logger = structlog.get_logger("holyroute")

    def emit(event: str, fields: dict[str, Any]) -> None:
        if event == "holyroute.request":
            logger.info(event, **fields)
        else:
            logger.warning(event, **fields)

    return emit


class Router:
    """Compiled configuration plus shared state (health, budgets). One per client; safe to share across threads.

    ``clock`` is monotonic seconds (durations, cooldowns), ``wall_clock`` is Unix time (HTTP-date headers), ``rng``
    draws non-sticky splits, ``sinks`` receive every event (default: structlog's ``holyroute`` logger).
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        sinks: Sequence[EventSink] | None = None,
        quality: QualityCheck | None = None,
        state: StateBackend | None = None,
    ) -> None:
        self.config = config
        self.quality = quality
        self.clock = clock
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        limits = {name: (e.rpm, e.tpm) for name, e in config.endpoints.items() if e.rpm or e.tpm}
        self.health = HealthBook(clock, config.health, limits, max_cooldown_s=config.retry.max_cooldown_s)
        self.sinks: tuple[EventSink, ...] = tuple(sinks) if sinks is not None else (_structlog_sink(),)
        self._sinks_lock = threading.Lock()
        self._failed_sinks: set[int] = set()
        self._call_ids = itertools.count(1)
        self.routes = _compile(config)
        # The catalogue loads here (once per process, tens of ms), not on the first call's thread or event loop.
        for plan in self.routes.values():
            for arm in (*plan.arms, *((plan.shadow,) if plan.shadow is not None else ())):
                for upstream in arm.upstreams:
                    if upstream.price_source == "catalogue":
                        catalogue_model(upstream.model, provider=upstream.provider, base_url=upstream.base_url)
        #: Exact token counts for fit, rules and ceilings (``context.estimate: tiktoken``), when available offline.
        self.token_encoder: TokenEncoder | None = None
        if config.context.estimate == "tiktoken":
            self.token_encoder = tiktoken_encoding(config.context.encoding)
            if self.token_encoder is None:
                self.emit(
                    "holyroute.tiktoken_unavailable",
                    {
                        "encoding": config.context.encoding,
                        "reason": "tiktoken is not installed or the encoding is not in its local cache (holyroute "
                        "never downloads it); counting with the heuristic. pip install 'holyroute[tiktoken]' and "
                        f"run tiktoken.get_encoding({config.context.encoding!r}) once where the internet is reachable",
                    },
                )
        #: The caller's headers never forwarded: holyroute's own, the caller's credentials, and those rules read.
        self.dropped_headers = DROPPED_HEADERS.union(
            *(plan.rules.header_names for plan in self.routes.values() if plan.rules is not None)
        )
        retry = config.retry
        self.retry = retry
        #: One retry budget per route (as Envoy budgets per cluster): one route's outage cannot spend the retries
        #: another route needs to fail over.
        self.budgets = {
            alias: RetryBudget(
                ratio=retry.budget_ratio, min_per_s=retry.budget_min_per_s, window_s=retry.budget_window_s
            )
            for alias in self.routes
        }
        self.probing = any(e.health_check is not None for e in config.endpoints.values())
        self.tracks_latency = any(arm.balance == "latency" for plan in self.routes.values() for arm in plan.arms)
        #: What this router shares with other processes (cooldowns, limits, rollouts, spend); default: nothing.
        self.state: StateBackend = (
            state
            if state is not None
            else open_backend(config.state, emit=self.emit, clock=clock, wall_clock=wall_clock)
        )
        self.rollouts: Rollouts | None = None
        if any(route.rollout is not None for route in config.routes.values()):
            from ._rollout import Rollouts

            self.rollouts = Rollouts(config, emit=self.emit, clock=wall_clock, store=self.state.rollout_store())
        self._budget_spent: set[str] = set()  # routes whose budget refused a retry (one event per bad spell)
        #: Spend caps per route, endpoint or tag (``budgets:``), counted through the state backend.
        self.spend = (
            SpendBudgets(config.budgets, self.state, emit=self.emit, wall_clock=wall_clock) if config.budgets else None
        )
        #: Thresholds over rolling windows (``alerts:``); add hooks with ``router.alerts.add_hook(fn)``.
        self.alerts = Alerts(config.alerts, emit=self.emit, clock=clock) if config.alerts else None
        self._panicking: set[tuple[str, str]] = set()
        self.state.attach(self)
        import tenacity

        self.backoff: Callable[[Any], float] = tenacity.wait_exponential_jitter(
            multiplier=retry.backoff_initial_s, max=retry.backoff_max_s, jitter=retry.backoff_jitter_s
        )

    def emit(self, event: str, fields: dict[str, Any]) -> None:
        """Hand an event to every sink. A sink that raises never breaks the call that emitted the event: the other
        sinks still get it, and the failure is reported to them once per sink as ``holyroute.sink_failed``."""
        for sink in self.sinks:
            try:
                sink(event, fields)
            except Exception as exc:
                self._sink_failed(sink, event, exc)

    def _sink_failed(self, failed: EventSink, event: str, exc: Exception) -> None:
        with self._sinks_lock:
            if id(failed) in self._failed_sinks:
                return
            self._failed_sinks.add(id(failed))
        report = {
            "sink": getattr(failed, "__qualname__", type(failed).__qualname__),
            "event": event,
            "reason": f"{type(exc).__name__}: {str(exc)[:200]}; later failures of this sink are not reported",
        }
        for sink in self.sinks:
            if sink is not failed:
                with contextlib.suppress(Exception):
                    sink("holyroute.sink_failed", dict(report))

    def add_sink(self, sink: EventSink) -> None:
        """Send every later event to ``sink`` too (metrics, traces, alerts: ``sink(event, fields)``). Sinks get
        the same ``fields`` dict one after another: read it, do not change it."""
        with self._sinks_lock:
            self.sinks = (*self.sinks, sink)

    def transition(self, change: Transition | None) -> None:
        """Emit an endpoint's state change, if there was one, and share it with the other processes."""
        if change is not None:
            fields: dict[str, Any] = {"endpoint": change.endpoint, "reason": change.reason}
            if change.ejection_s is not None:
                fields["ejection_s"] = round(change.ejection_s, 3)
            self.emit(change.event, fields)
            if change.event == "holyroute.endpoint_restored":
                self.state.publish(HealthChange("restored", change.endpoint, reason=change.reason))
            else:
                until = self.wall_clock() + (change.ejection_s or 0.0)
                self.state.publish(
                    HealthChange(
                        "quota" if change.quota else "ejected", change.endpoint, until=until, reason=change.reason
                    )
                )

    def close(self) -> None:
        """Stop the state backend's background work (flushing what it holds)."""
        self.state.close()

    async def aclose(self) -> None:
        """:meth:`close` from an event loop."""
        await self.state.aclose()

    def begin(
        self,
        method: str,
        path: str,
        query: str,
        headers: HeaderLookup,
        body: bytes | None,
        *,
        timeout: float | None = None,
    ) -> Call | None:
        """A :class:`Call` for a request to a routed alias, or ``None``: send the request through untouched."""
        if method != "POST" or not body:
            return None
        api = _operation(path)
        if api is None:
            return None
        view = parse_request(body)  # total: a validated view, or None (not routable: pass it through)
        if view is None:
            return None
        plan = self.routes.get(view.model)
        if plan is None:
            return None
        describe = functools.partial(
            Call, self, plan, api=api[0], operation=api[1], query=query, data=view.data, body=body, timeout=timeout
        )
        call = describe(headers=headers)
        self.budgets[call.route].record_call(call.started)
        if plan.shadow is not None and self._shadow_wanted(plan):
            call.shadow = describe(headers=_NO_HEADERS, shadow_of=call)
        return call

    def _shadow_wanted(self, plan: RoutePlan) -> bool:
        """Sampled, and today's shadow spend for the route is under its cap."""
        if self.rng.random() >= plan.shadow_sample:
            return False
        if plan.shadow_cap_usd is None:
            return True
        return self.state.spent(f"shadow:{plan.alias}", "day") < plan.shadow_cap_usd

    def pick(self, plan: RoutePlan, data: Mapping[str, Any], headers: HeaderLookup) -> Leg:
        """The arm of ``plan`` this request goes to: sticky when the route has a key and the request carries it."""
        picker = plan.picker
        if self.rollouts is not None:
            engine = self.rollouts.get(plan.alias)
            if engine is not None:
                picker = engine.picker()
        key = _sticky_key(plan.sticky, data, headers) if plan.sticky else None
        if key is not None:
            return Leg(plan.alias, plan.arms[picker.sticky(key)], None, True)
        return Leg(plan.alias, plan.arms[picker.random(self.rng)], None, False)

    def spend_retry(self, route: str, now: float, *, floor: bool = False) -> bool:
        """Take one retry from ``route``'s budget; the first refusal after a good spell emits an event.

        A retry within the persistence floor (``retry.min_attempts``) is counted but never refused."""
        budget = self.budgets[route]
        if budget.try_spend(now):
            self._budget_spent.discard(route)
            return True
        if floor:
            return True
        if route not in self._budget_spent:
            self._budget_spent.add(route)
            calls, retries = budget.state(now)
            retry = self.retry
            self.emit(
                "holyroute.retry_budget_exhausted",
                {
                    "route": route,
                    "calls": calls,
                    "retries": retries,
                    "reason": f"retries ({retries}) + 1 > {retry.budget_ratio:g} x calls ({calls}) + "
                    f"{retry.budget_min_per_s:g}/s x {retry.budget_window_s:g}s",
                },
            )
        return False

    def panicking(self, leg: Leg, now: float) -> bool:
        """Panic mode: fewer than half of the arm's endpoints are healthy, so health is ignored for it."""
        health = self.health
        upstreams = leg.arm.upstreams
        healthy = sum(
            1
            for u in upstreams
            if health.ejected(u.endpoint, now) is None
            and not (self.probing and health.probe_status(u.endpoint) == "unhealthy")
        )
        panic = healthy * 2 < len(upstreams)
        key = (leg.route, leg.arm.name)
        if panic != (key in self._panicking):
            if panic:
                self._panicking.add(key)
                event, reason = "holyroute.panic", f"{healthy} of {len(upstreams)} endpoints healthy (< half)"
            else:
                self._panicking.discard(key)
                event, reason = "holyroute.panic_over", f"{healthy} of {len(upstreams)} endpoints healthy"
            self.emit(event, {"route": leg.route, "arm": leg.arm.name, "reason": reason})
        return panic

    def order(self, arm: Arm) -> list[Upstream]:
        """The arm's endpoints in the order to try them: by its ``balance``, degraded ones (active checks) last."""
        upstreams = list(arm.upstreams)
        if len(upstreams) > 1:
            health = self.health
            if arm.balance == "round_robin":
                turn = next(arm.turns) % len(upstreams)
                upstreams = upstreams[turn:] + upstreams[:turn]
            elif arm.balance == "least_busy":
                upstreams.sort(key=lambda u: health.in_flight(u.endpoint))
            elif arm.balance == "latency":
                upstreams.sort(key=lambda u: health.latency(u.endpoint) or 0.0)
            if self.probing:
                upstreams.sort(key=lambda u: health.probe_status(u.endpoint) == "degraded")
        return upstreams


class Call:
    """One logical call: its plan, the attempts made so far, and what comes next."""

    __slots__ = (
        "_alias",
        "_alias_token",
        "_api",
        "_asking",
        "_attempts",
        "_bodies",
        "_budget",
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

    def __init__(
        self,
        router: Router,
        plan: RoutePlan,
        *,
        api: str,
        operation: str,
        query: str,
        headers: HeaderLookup,
        data: dict[str, Any],
        body: bytes,
        timeout: float | None,
        shadow_of: Call | None = None,
    ) -> None:
        self._router = router
        self.shadow: Call | None = None  # the background copy of this call, when it is mirrored
        self.shadow_of = shadow_of  # for a shadow copy: the call it mirrors
        self._plan = plan
        self._api = api
        self._operation = operation
        self._query = query
        self._data = data
        self._raw_body = body
        self.started = router.clock()
        #: This call's number in this process: on its ``holyroute.failover`` and ``holyroute.request`` events.
        self.id = next(router._call_ids)
        self._deadline = self.started + timeout if timeout else None
        self._headers = headers
        self.stream = data.get("stream") is True
        own = data.get("stream_options")
        self._wants_usage_injected = (
            self.stream
            and api in _INJECT_USAGE_APIS
            and not (isinstance(own, Mapping) and own.get("include_usage") is True)
        )
        self._tokens = _estimate_tokens(body, data)
        self._debits: list[Debit] = []  # local tpm debits, settled with the real usage when the call ends
        self._bodies: dict[tuple[str, bool], bytes] = {}
        self._attempts = 0
        self._passes = 0
        self._cursor = 0
        self._current: Upstream | None = None
        self._current_leg: Leg | None = None
        self._legs: list[Leg] = []
        self._sequence: list[tuple[Leg, Upstream]] = []
        self._skipped: dict[tuple[str, str], tuple[str, float | None]] = {}
        self._excluded: set[str] = set()
        self._open = False  # an attempt is begun in the health book and not yet ended (see _end_attempt)
        self._forced = False  # the next walk ignores health: the persistence floor is not reached yet
        self._limited = False
        self._limit_wait: float | None = None  # set when the walk ends waiting for an rpm/tpm/headroom reset
        self._limit_waited = 0.0  # seconds this call has waited for limits (bounded by retry.max_wait_s)
        self._last_response: tuple[int, tuple[tuple[str, str], ...], bytes, Upstream, Leg | None] | None = None
        self._last_error: tuple[BaseException, bool] | None = None
        self._failure: dict[str, Any] | None = None
        self._final: Step | None = None
        self._first_byte: float | None = None
        self._hide_usage = False
        self._fallbacks_added = False
        self._last_leg: Leg | None = None
        self._status = 0
        self._request_id: str | None = None
        self._sent_at = 0.0
        self._trial = False
        self._stop_reason: str | None = None
        self._quality: bool | None = None
        self._finish: str | None = None
        self._asking: Upstream | None = None  # waiting for the state backend's grant
        self._granted: Upstream | None = None  # granted: send it next
        self._paid = False  # the retry budget already paid for the attempt being lined up
        self._budget: Verdict | None = None  # a spent route/tag budget: the route's own arms are skipped
        self._fallback_budgets: dict[str, Verdict | None] = {}
        self._tags: tuple[str, ...] = ()
        self._alias = plan.alias  # the alias the caller sent (a rule may hand the call to another route)
        self._alias_token = plan.token  # ... as it is in the body, for swapping the model in without re-encoding
        self._rule: str | None = None  # the rule that decided, DEFAULT_RULE when none did; None: no rules
        self._input: int | None = None  # estimated input tokens, counted when first needed
        self._out = _requested_output(data)
        self._ceiling: float | None = None
        self._check_size = False
        self._size_cost_seen: dict[tuple[str, str], str | None] = {}
        self._observe = True  # measured by the route's rollout (not when a rule, a budget or a size moved it)
        self.done = False

        if shadow_of is not None:
            assert plan.shadow is not None
            self._legs = [Leg(plan.alias, plan.shadow, None, False)]
            self._extend_sequence(self._legs[0])
            return
        pinned = headers.get(PIN_HEADER)
        ruled: Leg | None = None
        if pinned is None and plan.rules is not None:
            matched = plan.rules.match(headers, data, self._input_tokens() if plan.rules.uses_prompt_tokens else 0)
            self._rule = matched.label if matched is not None else DEFAULT_RULE
            if matched is not None:
                use = matched.use
                if isinstance(use, str):
                    plan = self._plan = router.routes[use]
                else:
                    ruled = Leg(plan.alias, use, None, False)
                    self._observe = False
        if not self._limit_size_and_cost(plan, headers, body):
            self._legs = [ruled or Leg(plan.alias, plan.arms[0], None, False)]
            return
        if ruled is not None:
            self._legs = [ruled]
        elif pinned is not None:
            arm = next((a for a in plan.arms if pinned in (a.name, a.model)), None)
            if arm is None:
                names = ", ".join(a.name for a in plan.arms)
                self._final = self._local_answer(
                    400,
                    f"holyroute: {PIN_HEADER} '{pinned}' matches no arm of route '{plan.alias}'; arms: {names}",
                    "invalid_request_error",
                    "holyroute_unknown_arm",
                )
                self._legs = [Leg(plan.alias, plan.arms[0], None, False)]
                return
            self._legs = [Leg(plan.alias, arm, None, False)]
        else:
            self._legs = [router.pick(plan, data, headers)]
        self._extend_sequence(self._legs[0])
        if self._check_size or self._ceiling is not None:
            self._add_alternatives()
        spend = router.spend
        if spend is not None:
            self._tags = spend.tags(headers)
            verdict = spend.over("route", (plan.alias,)) or spend.over("tag", self._tags)
            if verdict is not None:
                self._budget = verdict
                if verdict.action == "block" or not plan.fallbacks:
                    self._final = self._local_answer(
                        429,
                        f"holyroute: {verdict.reason} (action: block); the call was not sent. Raise the budget's "
                        "usd, wait for the next period, or use action: fallback with a cheaper fallback route",
                        "budget_exceeded",
                        "holyroute_budget_exceeded",
                    )
                    self._emit_request(429, "error", None, verdict.reason, None)

    # ---- size and cost ------------------------------------------------------------------------------------------

    def _input_tokens(self) -> int:
        found = self._input
        if found is None:
            encoder = self._router.token_encoder
            found = self._input = estimate_input_tokens(
                self._data, self._raw_body, exact=encoder is not None, encoding=encoder
            )
        return found

    def _limit_size_and_cost(self, plan: RoutePlan, headers: HeaderLookup, body: bytes) -> bool:
        """Decide whether endpoints must be checked for size (only a request that might not fit somewhere) and
        cost (the tightest ceiling of the request, the route it named and the route its rules chose). False when the
        request's own ceiling is malformed."""
        raw = headers.get(MAX_COST_HEADER)
        asked: float | None = None
        if raw is not None:
            try:
                asked = float(raw)
            except ValueError:
                asked = -1.0
            if not asked > 0 or asked == float("inf"):
                self._final = self._local_answer(
                    400,
                    f"holyroute: {MAX_COST_HEADER} must be a positive number of USD such as 0.05; got {raw[:40]!r}",
                    "invalid_request_error",
                    "holyroute_bad_max_cost",
                )
                return False
        ceilings = cost_ceilings(self._router.routes[self._alias], plan, asked)
        self._ceiling = min(ceiling for ceiling, _ in ceilings) if ceilings else None
        out = self._out
        self._check_size = len(body) // 4 + (out or DEFAULT_OUTPUT_RESERVE) > plan.fit_floor or (
            out is not None and out > plan.out_floor
        )
        return True

    def _size_cost(self, upstream: Upstream) -> str | None:
        """Why this upstream cannot take this request whatever its health: too big for it, or over the ceiling."""
        key = (upstream.endpoint, upstream.model)
        if key in self._size_cost_seen:
            return self._size_cost_seen[key]
        why: str | None = None
        limits = upstream.limits
        if self._check_size and limits is not None:
            too_big = fits(limits, self._input_tokens(), self._out)
            if too_big is not None:
                why = f"context: {too_big}"
        ceiling = self._ceiling
        if why is None and ceiling is not None:
            worst = self._worst_cost(upstream)
            if isinstance(worst, str):
                why = f"cost: {worst}"
            elif worst > ceiling:
                why = f"cost: up to ${worst:.6f} at {upstream.model} prices, over the ${_usd(ceiling)} ceiling"
        self._size_cost_seen[key] = why
        return why

    def _worst_cost(self, upstream: Upstream) -> float | str:
        """The most this call can cost on ``upstream`` (USD), or why that cannot be known."""
        price = upstream.price
        rates = None if price is None else (price.input, max(price.output, price.reasoning or 0.0))
        if upstream.price_source == "catalogue":
            tier = self._data.get("service_tier")
            rates = (
                catalogue_bound(
                    upstream.model,
                    provider=upstream.provider,
                    base_url=upstream.base_url,
                    when=self._router.wall_clock(),
                    service_tier=tier if isinstance(tier, str) and tier not in ("auto", "default") else None,
                )
                or rates
            )  # the built-in row where the catalogue cannot say
        if rates is None:
            return f"{upstream.model} has no price, so its cost cannot be bounded; add it under prices"
        out = self._out
        if out is None and upstream.limits is not None:
            out = upstream.limits.max_output_tokens
        if out is None:
            return f"no max_tokens and no known output cap for {upstream.model}; set max_tokens"
        # Every count is clamped at the boundary (tokens <= MAX_TOKENS, n <= MAX_CHOICES): the product is finite.
        input_rate, output_rate = rates
        outputs = float(out) * requested_choices(self._data)
        return (float(self._input_tokens()) * input_rate + outputs * output_rate) / 1_000_000

    def _add_alternatives(self) -> None:
        """The split's arm cannot take this request (too big, or over the ceiling) on any endpoint: the route's
        other arms that can follow it, cheapest first under a ceiling, before the fallbacks."""
        first = self._legs[0]
        if any(self._size_cost(u) is None for u in first.arm.upstreams):
            return
        plan = self._plan
        others = [arm for arm in plan.arms if arm is not first.arm]
        able = [arm for arm in others if any(self._size_cost(u) is None for u in arm.upstreams)]
        if self._ceiling is not None:

            def cheapest(arm: Arm) -> float:
                costs = [self._worst_cost(u) for u in arm.upstreams if self._size_cost(u) is None]
                return min(c for c in costs if isinstance(c, float))

            able.sort(key=cheapest)
        self._observe = False
        for arm in able:
            leg = Leg(plan.alias, arm, None, False)
            self._legs.append(leg)
            self._extend_sequence(leg)

    # ---- the step machine ---------------------------------------------------------------------------------------

    def next_step(self) -> Step:
        """What the transport should do next."""
        if self._final is not None:
            if not self.done:  # a local answer decided before any step (a bad pin or ceiling): still one event
                self._emit_request(self._status or None, "error", None, "answered locally", None)
            return self._final
        router = self._router
        now = router.clock()
        failure, self._failure = self._failure, None
        granted, self._granted = self._granted, None
        if granted is not None:
            if failure is not None:
                self._emit_failover(failure, 0.0, granted.endpoint)
            return self._send(granted, now)
        max_attempts = 1 if self.shadow_of is not None else router.retry.max_attempts
        if self._attempts < max_attempts and not self._past_deadline(now):
            floor = self._attempts < self._floor()
            if self._attempts and not self._paid and not router.spend_retry(self.route, now, floor=floor):
                self._stop_reason = "retry budget exhausted"
            else:
                self._paid = False
                upstream = self._next_available(now)
                if upstream is not None:
                    health = router.health
                    if health.shared_limits:
                        rpm, tpm = health.limits(upstream.endpoint)
                        if rpm or tpm:  # the shared store decides; the retry stays paid for
                            self._asking, self._failure, self._paid = upstream, failure, True
                            return Acquire(upstream.endpoint, rpm, tpm, min(self._tokens, tpm) if tpm else self._tokens)
                    if failure is not None:
                        self._emit_failover(failure, 0.0, upstream.endpoint)
                    return self._send(upstream, now)
                limit_wait, self._limit_wait = self._limit_wait, None
                if limit_wait is not None:
                    # Waiting for a limit to reset is not a failed pass: it spends no attempt, pass or retry budget,
                    # only time (retry.max_wait_s in all for such waits, never past the deadline).
                    if failure is not None:
                        self._emit_failover(failure, limit_wait, None)
                    self._limit_waited += limit_wait
                    self._paid = True
                    self._limited = False
                    self._cursor = 0
                    self._skipped.clear()
                    return Wait(limit_wait)
                wait = self._wait_before_next_pass(now)
                if wait is not None:
                    if failure is not None:
                        self._emit_failover(failure, wait, None)
                    self._passes += 1
                    self._cursor = 0
                    self._skipped.clear()
                    return Wait(wait)
        self._final = self._give_up(now)
        return self._final

    def on_acquired(self, wait: float | None) -> None:
        """The state backend's answer to :class:`Acquire`: 0.0 granted, > 0 no room for that many seconds, None
        no answer (this process's share of the limit decides). Then ask :meth:`next_step` again."""
        upstream, self._asking = self._asking, None
        assert upstream is not None, "on_acquired without an Acquire"
        health = self._router.health
        now = self._router.clock()
        blocked: tuple[str, float] | None = None
        if wait is None:
            blocked = health.local_limit(upstream.endpoint, self._tokens, now, self._debits)
        elif wait > 0:
            rpm, tpm = health.limits(upstream.endpoint)
            limits = " / ".join(f"{n} {v}" for n, v in (("rpm", rpm), ("tpm", tpm)) if v)
            blocked = (f"shared {limits} reached", now + wait)
            health.limited(upstream.endpoint, now + wait, blocked[0])
        if blocked is None:
            self._granted = upstream
            return
        self._skipped[(upstream.endpoint, upstream.model)] = blocked
        leg = self._current_leg
        if leg is not None and leg.fallback is None:
            self._limited = True

    def on_response(self, status: int, headers: Mapping[str, str]) -> Accepted | None:
        """Judge an answer's status line. An :class:`Accepted` means hand it to the caller, watched as it says;
        ``None`` means it failed over: read its (error) body, pass it to :meth:`on_rejected_body`, ask again."""
        upstream = self._current
        assert upstream is not None, "on_response without a Send"
        router = self._router
        health = router.health
        now = router.clock()
        if health.record_headroom(upstream.endpoint, upstream.model, headers, now):
            change = health.headroom_change(upstream.endpoint, upstream.model, now, router.wall_clock())
            if change is not None:
                router.state.publish(change)
        # A redirect is a failure of this endpoint (routed requests never follow one: the prompt would leave routing).
        if status < 300 or (400 <= status < 500 and status not in RETRYABLE_STATUS):
            self._status = status
            self._request_id = headers.get("x-request-id")
            content_type = headers.get("content-type") or ""
            event_stream = content_type.startswith("text/event-stream")
            if event_stream:
                router.transition(health.success(upstream.endpoint, now, self._latency(now), trial=self._trial))
            else:
                # Only copied (lazily, in on_rejected_body) if the body turns out to be no answer.
                self._pending_response = (status, headers, upstream, self._last_leg)
            return Accepted(event_stream, self._hide_usage and event_stream, headers.get("content-encoding"))
        reason = f"{status} from upstream" if status >= 400 else f"{status} redirect from upstream (not followed)"
        delay = server_delay(headers, router.wall_clock(), router.retry.max_cooldown_s)
        if status == 429 or delay is not None:
            seconds, said = delay if delay is not None else (router.retry.default_cooldown_s, "no retry header")
            seconds = min(seconds, router.retry.max_cooldown_s)
            reason = f"{status} from upstream; cooldown {seconds:.3g}s ({said})"
            self._cool(upstream, seconds, f"{status} {said}", now)
        if status >= 500 or status == 408 or status < 400:
            peers = self._last_leg.arm.endpoints if self._last_leg is not None else ()
            router.transition(health.failure(upstream.endpoint, str(status), now, peers, trial=self._trial))
        self._pending_response = (status, headers, upstream, self._last_leg)
        self._failure = self._failure_fields(status=status, error=None, reason=reason)
        return None

    def on_body(self, body: bytes) -> bool:
        """The whole (decoded) body of an accepted answer that is not an event stream. True: hand it to the caller
        (the call's event is emitted now); False: a 2xx whose body is not JSON failed over, ask again."""
        router = self._router
        upstream = self._current
        assert upstream is not None, "on_body without a Send"
        now = router.clock()
        status = self._status
        if 200 <= status < 300 and not _looks_like_json(body):
            label = "malformed body"
            peers = self._last_leg.arm.endpoints if self._last_leg is not None else ()
            router.transition(router.health.failure(upstream.endpoint, label, now, peers, trial=self._trial))
            self._failure = self._failure_fields(
                status=status, error=label, reason=f"{status} with a body that is not JSON"
            )
            self.on_rejected_body(body)
            return False
        router.transition(router.health.success(upstream.endpoint, now, self._latency(now), trial=self._trial))
        if status < 300:
            if self._api in _INJECT_USAGE_APIS:  # chat and completions answers say why they stopped
                self._finish = finish_reason(body)
            judged = self.shadow_of is not None or (router.rollouts is not None and self._plan.alias in router.rollouts)
            if router.quality is not None and judged:
                leg = self._last_leg if self._last_leg is not None else self._legs[0]
                self._quality = bool(router.quality(self._plan.alias, leg.arm.name, body))
        self.on_complete(usage_from_body(body) if status < 300 else None)
        return True

    def on_rejected_body(self, body: bytes) -> None:
        """The body of the answer :meth:`on_response` rejected; kept to hand back if nothing better comes."""
        status, headers, upstream, leg = self._pending_response
        if status < 400:
            self._last_response = (*_redirect_answer(status, headers, upstream.endpoint), upstream, leg)
        else:
            self._last_response = (status, _response_headers(headers), body, upstream, leg)
        router = self._router
        if status == 429 and b"insufficient_quota" in body:
            # Out of credit is not a rate limit: no waiting fixes it, so never again in this call, and not for long.
            self._excluded.add(upstream.endpoint)
            router.transition(router.health.quota_exhausted(upstream.endpoint, router.clock()))
            if self._failure is not None:
                self._failure["reason"] = "429 insufficient_quota"
        self._end_attempt()

    def on_error(self, error: BaseException, *, timeout: bool) -> None:
        """The attempt raised a transport error (connection refused or reset, protocol error, timeout)."""
        upstream = self._current
        assert upstream is not None, "on_error without a Send"
        router = self._router
        kind = "timeout" if timeout else "connection error"
        label = type(error).__name__
        peers = self._last_leg.arm.endpoints if self._last_leg is not None else ()
        router.transition(router.health.failure(upstream.endpoint, label, router.clock(), peers, trial=self._trial))
        self._end_attempt()
        self._last_error = (error, timeout)
        self._failure = self._failure_fields(status=None, error=label, reason=f"{kind}: {label}")

    # ---- what the stream tap reports ----------------------------------------------------------------------------

    def on_first_byte(self) -> None:
        if self.stream and self._first_byte is None:
            self._first_byte = self._router.clock()

    def on_complete(
        self,
        usage: Usage | None,
        *,
        error: str | None = None,
        cancelled: bool = False,
        finish_reason: str | None = None,
    ) -> None:
        """The accepted answer's body ended (or broke, or was closed early); emit the call's one request event."""
        if self.done:
            return
        if finish_reason is not None:
            self._finish = finish_reason
        self._end_attempt()
        status = self._status
        if error is not None or status >= 400:
            outcome = "error"
        elif cancelled:
            outcome = "cancelled"
        else:
            outcome = "ok"
        self._emit_request(status, outcome, usage, error, self._request_id)

    # ---- the one owner of the call's end ------------------------------------------------------------------------

    @property
    def route(self) -> str:
        """The route this call belongs to (after its rules): the one whose retry budget it spends."""
        return self._plan.alias

    @contextlib.contextmanager
    def owned(self) -> Iterator[Call]:
        """Whatever the block raises (cancellation, ``KeyboardInterrupt``, a bug in an inner transport, a torn
        stream) ends the call through :meth:`abandon` before it propagates unchanged. Both drivers and both stream
        taps wrap their work in this one block, so no exception type needs to be listed anywhere."""
        try:
            yield self
        except BaseException as exc:
            self.abandon(exc)
            raise

    def abandon(self, error: BaseException) -> None:
        """The call stops with ``error`` that no step handled. Ends the open attempt (in-flight count, half-open
        trial) and emits the call's one ``holyroute.request``: outcome ``cancelled`` for a cancellation (anything
        that is not an ``Exception``: ``CancelledError``, trio's ``Cancelled``, ``KeyboardInterrupt``, a closed
        generator), else ``error``. Only an ``OSError`` during an attempt counts against the endpoint's health: a
        caller's cancel or a bug on this side is not the endpoint's fault. Safe to call more than once."""
        if self.done:
            return
        cancelled = not isinstance(error, Exception)
        upstream = self._current
        if self._open and upstream is not None and isinstance(error, OSError):
            router = self._router
            peers = self._last_leg.arm.endpoints if self._last_leg is not None else ()
            label = type(error).__name__
            router.transition(router.health.failure(upstream.endpoint, label, router.clock(), peers, trial=self._trial))
        self._end_attempt()
        outcome = "cancelled" if cancelled else "error"
        self._emit_request(self._status or None, outcome, None, f"{outcome}: {type(error).__name__}", self._request_id)

    def _end_attempt(self) -> None:
        """End the attempt begun by :meth:`_send`, exactly once whatever reports its end."""
        if self._open:
            self._open = False
            upstream = self._current
            assert upstream is not None
            self._router.health.end_attempt(upstream.endpoint, trial=self._trial)

    # ---- internals ----------------------------------------------------------------------------------------------

    def _latency(self, now: float) -> float | None:
        """This attempt's time to headers, for balance: latency (the only reader); None spares the health lock."""
        return now - self._sent_at if self._router.tracks_latency else None

    def _past_deadline(self, now: float) -> bool:
        if self._deadline is not None and now >= self._deadline:
            self._stop_reason = "deadline reached"
            return True
        return False

    def _unavailable(
        self, leg: Leg, upstream: Upstream, now: float, *, force: bool = False
    ) -> tuple[str, float | None] | None:
        """Why this endpoint cannot take the call now, and until when if that is known; None when it can.

        ``force``: health (ejection, active checks, cooldowns, rate-limit headroom) is ignored, as it is for a pass
        within the persistence floor; configured rpm/tpm limits still hold."""
        router = self._router
        health = router.health
        name = upstream.endpoint
        if self._check_size or self._ceiling is not None:
            why = self._size_cost(upstream)
            if why is not None:
                return why, None
        if name in self._excluded or health.out_of_quota(name, now):
            return "out of quota", None
        spend = router.spend
        if spend is not None:
            verdict = self._budget if leg.fallback is None else self._fallback_budget(spend, leg.fallback)
            if verdict is None and spend.has_endpoint_budgets:
                verdict = spend.over("endpoint", (name,))
            if verdict is not None:
                return verdict.reason, None
        if force or self._forced:
            return health.blocked(name, upstream.model, now, self._tokens, limits_only=True)
        if not self._panicking(leg, now):
            why = health.ejected(name, now)
            if why is None and router.probing and health.probe_status(name) == "unhealthy":
                why = "unhealthy (active health check)"
            if why is not None:
                return why, None
        return health.blocked(name, upstream.model, now, self._tokens)

    def _fallback_budget(self, spend: SpendBudgets, alias: str) -> Verdict | None:
        if alias not in self._fallback_budgets:
            self._fallback_budgets[alias] = spend.over("route", (alias,))
        return self._fallback_budgets[alias]

    def _next_available(self, now: float) -> Upstream | None:
        router = self._router
        while True:
            while self._cursor < len(self._sequence):
                leg, upstream = self._sequence[self._cursor]
                self._cursor += 1
                why = self._unavailable(leg, upstream, now)
                if why is None:
                    self._current_leg = leg
                    return upstream
                self._skipped[(upstream.endpoint, upstream.model)] = why
                if leg.fallback is None and why[1] is not None and not why[0].startswith("cooling"):
                    self._limited = True
            if self._fallbacks_added:
                return None
            # An arm out of rpm/tpm/headroom with `when_limited: wait` waits for it (if acceptable) before falling back.
            if self._limited and router.retry.when_limited == "wait":
                wait = self._wait_for_limits(now)
                if wait is not None:
                    self._limit_wait = wait
                    return None
            self._add_fallbacks()

    def _panicking(self, leg: Leg, now: float) -> bool:
        # Judged afresh at every step: an endpoint ejected while this call ran puts its arm in panic now.
        return self._router.panicking(leg, now)

    def _floor(self) -> int:
        """The attempts this call makes on transient errors whatever health and the retry budget say."""
        if self.shadow_of is not None:
            return 1
        retry = self._router.retry
        return min(retry.min_attempts, retry.max_attempts)

    def _add_fallbacks(self) -> None:
        self._fallbacks_added = True
        router = self._router
        for alias in self._plan.fallbacks:
            plan = router.routes[alias]
            picked = router.pick(plan, self._data, self._headers)
            leg = Leg(alias, picked.arm, alias, picked.sticky)
            self._legs.append(leg)
            self._extend_sequence(leg)

    def _extend_sequence(self, leg: Leg) -> None:
        arm = leg.arm
        upstreams = arm.upstreams if arm.balance == "ordered" and not self._router.probing else self._router.order(arm)
        self._sequence.extend((leg, upstream) for upstream in upstreams)

    def _wait_for_limits(self, now: float) -> float | None:
        untils = [until for _, until in self._skipped.values() if until is not None]
        if not untils:
            return None
        wait = max(min(untils) - now, _MIN_LIMIT_WAIT_S)
        if self._limit_waited + wait > self._router.retry.max_wait_s:
            return None
        return wait if self._acceptable_wait(wait, now) else None

    def _acceptable_wait(self, wait: float, now: float) -> bool:
        return wait <= self._router.retry.max_wait_s and (self._deadline is None or now + wait < self._deadline)

    def _wait_before_next_pass(self, now: float) -> float | None:
        """Seconds to wait before walking the endpoints again, or None to give up.

        Below the persistence floor (a call that has made fewer attempts than ``retry.min_attempts``, the SDK's
        own ``max_retries + 1``), a call never gives up while an endpoint could take it were health ignored: when
        nothing comes back within ``max_wait_s``, it walks again after the backoff (at once for its first attempt)
        with health ignored for that walk. Only the caller's deadline stops it: the router's bookkeeping alone never
        fails a call."""
        router = self._router
        # Bounded in passes too: a shared rpm/tpm limit may keep saying no to a forced walk.
        floor = self._attempts < self._floor() and self._passes < 2 * router.retry.max_attempts
        over = self._passes + 1 >= router.retry.max_attempts  # without the floor, the call would give up now
        if over and not floor:
            return None
        backoff = router.backoff(_WaitState(self._passes + 1)) if self._attempts else 0.0
        wait = backoff
        pool = [(leg, u) for leg, u in self._sequence if u.endpoint not in self._excluded]
        states = [self._unavailable(leg, u, now) for leg, u in pool]
        if all(state is not None for state in states):
            # Nothing is usable now: wait for the first to come back, if anything says when.
            known = [state[1] for state in states if state is not None and state[1] is not None]
            if known and not over:
                wait = max(wait, min(known) - now)
                if self._acceptable_wait(wait, now):
                    return wait
            if not floor or all(self._unavailable(leg, u, now, force=True) is not None for leg, u in pool):
                return None
            # Nothing comes back within max_wait_s: the backoff, then a walk with health ignored.
            self._forced = True
        elif self._acceptable_wait(wait, now):
            return wait
        elif not floor:
            return None
        return backoff if self._deadline is None or now + backoff < self._deadline else None

    def _send(self, upstream: Upstream, now: float) -> Send:
        router = self._router
        self._attempts += 1
        self._current = upstream
        self._last_leg = self._current_leg
        self._sent_at = now
        self._forced = False
        self._trial = router.health.begin_attempt(upstream.endpoint, now, self._tokens, self._debits)
        self._open = True
        # Ask for stream usage on the wire when the caller did not, so every stream is costed; the tap hides
        # the extra usage-only chunk again.
        inject = self._wants_usage_injected and upstream.stream_usage
        self._hide_usage = inject
        body = self._bodies.get((upstream.model, inject))
        if body is None and not inject:
            body = _swap_model(self._raw_body, self._alias_token, upstream.token)
        if body is None:
            data = dict(self._data)
            data["model"] = upstream.model
            if inject:
                options = data.get("stream_options")
                data["stream_options"] = {
                    **(options if isinstance(options, Mapping) else {}),
                    "include_usage": True,
                }
            body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        self._bodies[(upstream.model, inject)] = body
        query = _merge_query(self._query, upstream.query) if self._query else upstream.query
        url = f"{upstream.base_url}/{self._operation}"
        if query:
            url = f"{url}?{query}"
        timeout = upstream.timeout
        if self._deadline is not None:
            left = self._deadline - now
            timeout = left if timeout is None else min(timeout, left)
        retry = router.retry
        headers_timeout = retry.stream_headers_timeout_s if self.stream else retry.headers_timeout_s
        if headers_timeout is not None and timeout is not None:
            headers_timeout = min(headers_timeout, timeout)
        # Streams uncompressed (events pass as they come); JSON only in encodings the usage reader can open.
        encoding = _IDENTITY if self.stream else _GZIP_DEFLATE
        return Send(
            url,
            (*upstream.headers, encoding),
            body,
            timeout,
            upstream.endpoint,
            headers_timeout,
            _forwarding(router.dropped_headers, upstream.forward) if upstream.forward else router.dropped_headers,
        )

    def _cool(self, upstream: Upstream, seconds: float, reason: str, now: float) -> None:
        router = self._router
        cooldown = router.health.cool(upstream.endpoint, upstream.model, seconds, reason, now)
        if cooldown is not None:
            until = router.wall_clock() + seconds
            router.state.publish(HealthChange("cooldown", upstream.endpoint, upstream.model, until, reason))
            router.emit(
                "holyroute.cooldown",
                {
                    "endpoint": upstream.endpoint,
                    "upstream_model": upstream.model,
                    "cooldown_s": round(seconds, 3),
                    "reason": reason,
                },
            )

    def _settle(self, status: int | None, usage: Usage | None, now: float) -> None:
        """The call ended: correct its local tpm debits to what it used (the answer's usage), crediting back what
        attempts without a successful answer took."""
        if not self._debits:
            return
        upstream = self._current
        answered = upstream is not None and status is not None and 200 <= status < 300
        self._router.health.settle(
            self._debits,
            now,
            endpoint=upstream.endpoint if answered and upstream is not None else None,
            used=usage.prompt_tokens + usage.completion_tokens if usage is not None else None,
        )

    def _failure_fields(self, *, status: int | None, error: str | None, reason: str) -> dict[str, Any]:
        upstream, leg = self._current, self._last_leg
        assert upstream is not None
        assert leg is not None
        return {
            "call_id": self.id,
            "route": self._plan.alias,
            "arm": leg.arm.name,
            "endpoint": upstream.endpoint,
            "upstream_model": upstream.model,
            "attempt": self._attempts,
            "attempt_ms": round((self._router.clock() - self._sent_at) * 1000, 3),
            "status": status,
            "error": error,
            "reason": reason,
        }

    def _emit_failover(self, failure: dict[str, Any], wait: float, next_endpoint: str | None) -> None:
        failure["wait_s"] = round(wait, 3)
        failure["next_endpoint"] = next_endpoint
        self._router.emit("holyroute.failover", failure)

    def _give_up(self, now: float) -> Step:
        stop = f"; {self._stop_reason}" if self._stop_reason else ""
        if self._last_response is not None:
            status, headers, body, upstream, leg = self._last_response
            # The event names the endpoint whose answer is handed back, not a later one that raised.
            self._current, self._last_leg = upstream, leg
            self._status = status
            self._request_id = next((v for k, v in headers if k == "x-request-id"), None)
            self._emit_request(status, "error", None, f"upstream {status}{stop}", self._request_id)
            return Respond(status, (*headers, ("x-should-retry", "false")), body)
        if self._last_error is not None:
            error, timeout = self._last_error
            summary = (
                f"holyroute: {self._attempts} attempt(s) for '{self._plan.alias}' failed; "
                f"last: {type(error).__name__}{stop}"
            )
            self._emit_request(None, "error", None, f"{type(error).__name__}{stop}", None)
            return GiveUp(error, timeout, summary)
        # Nothing was sent: every endpoint is cooling down, ejected or out of budget for longer than we may wait.
        untils = [until - now for _, until in self._skipped.values() if until is not None and until > now]
        soonest = min(untils, default=None)
        detail = "; ".join(
            f"{endpoint}/{model} {why}" + (f" for {until - now:.1f}s" if until is not None and until > now else "")
            for (endpoint, model), (why, until) in self._skipped.items()
        )
        reasons = [why for why, _ in self._skipped.values()]
        if reasons and all(why.startswith(("context: ", "cost: ")) for why in reasons):
            # Nothing reachable can take this request at all: a client error, not a moment to wait out.
            cost = any(why.startswith("cost: ") for why in reasons)
            self._emit_request(400, "error", None, "no model can take this request", None)
            return self._local_answer(
                400,
                f"holyroute: no model for '{self._alias}' can take this request: {detail}"
                + (
                    "; raise the ceiling or lower max_tokens"
                    if cost
                    else "; shorten the input, lower max_tokens, or add a larger model to the route or its fallbacks"
                ),
                "invalid_request_error",
                "holyroute_cost_ceiling" if cost else "context_length_exceeded",
            )
        over_budget = bool(reasons) and all(why.startswith("budget ") for why in reasons)
        answer = self._local_answer(
            429,
            f"holyroute: no endpoint for '{self._plan.alias}' can take a call now: {detail or self._stop_reason}",
            "budget_exceeded" if over_budget else "rate_limit_exceeded",
            "holyroute_budget_exceeded" if over_budget else "holyroute_no_endpoint_available",
            retry_after=soonest,
        )
        self._emit_request(429, "error", None, f"no endpoint available{stop}", None)
        return answer

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

    def _emit_request(
        self, status: int | None, outcome: str, usage: Usage | None, error: str | None, request_id: str | None
    ) -> None:
        self.done = True
        router = self._router
        now = router.clock()
        upstream = self._current
        self._settle(status, usage, now)
        leg = self._last_leg if upstream is not None else self._legs[0]
        cost, price_source, price_tier = _cost(upstream, usage, router.wall_clock)
        latency_ms = round((now - self.started) * 1000, 3)
        ttft_ms = (
            round((self._first_byte - self.started) * 1000, 3) if self.stream and self._first_byte is not None else None
        )
        if self.shadow_of is not None:
            if cost:
                router.state.add_spend(f"shadow:{self._plan.alias}", cost)
        elif cost and router.spend is not None and upstream is not None and leg is not None:
            router.spend.charge(leg.fallback or self._plan.alias, upstream.endpoint, self._tags, cost)
        if (
            self.shadow_of is None
            and self._budget is None
            and self._observe
            and router.rollouts is not None
            and outcome != "cancelled"
        ):
            # A call kept off the route's own arms by a spent budget says nothing about them: not measured.
            engine = router.rollouts.get(self._plan.alias)
            if engine is not None:
                # Judged on the arm the split chose: a candidate call rescued by a fallback still failed the candidate.
                primary = self._legs[0]
                ok = outcome == "ok" and leg is primary
                engine.observe(
                    primary.arm.name,
                    ok=ok,
                    latency_ms=latency_ms,
                    ttft_ms=ttft_ms,
                    cost_usd=cost,
                    quality=self._quality,
                )
        fields = {
            "call_id": self.id,
            "route": self._plan.alias,
            "arm": leg.arm.name if leg is not None else None,
            "split_arm": self._legs[0].arm.name,  # the arm the split chose, even when a fallback served
            "model": self._alias,
            "rule": self._rule,
            "upstream_model": upstream.model if upstream is not None else None,
            "endpoint": upstream.endpoint if upstream is not None else None,
            "api": self._api,
            "status": status,
            "outcome": outcome,
            "error": error,
            "attempts": self._attempts,
            "attempt_ms": round((now - self._sent_at) * 1000, 3) if self._attempts else None,
            "fallback": leg.fallback if leg is not None else None,
            "sticky": leg.sticky if leg is not None else False,
            "stream": self.stream,
            "latency_ms": latency_ms,
            "ttft_ms": ttft_ms,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "cached_tokens": usage.cached_tokens if usage else None,
            "reasoning_tokens": usage.reasoning_tokens if usage else None,
            "cache_write_tokens": usage.cache_write_tokens if usage else None,
            "audio_tokens": usage.input_audio_tokens + usage.output_audio_tokens if usage else None,
            "image_tokens": usage.input_image_tokens + usage.output_image_tokens if usage else None,
            "service_tier": usage.service_tier if usage else None,
            "cost_usd": cost,
            "priced": price_source != "none",
            "price_source": price_source,
            "price_tier": price_tier,
            "request_id": request_id,
            "finish_reason": self._finish,
            "quality": self._quality,
            "shadow": self.shadow_of is not None,
        }
        router.emit("holyroute.request", fields)
        if router.alerts is not None:
            router.alerts.observe(fields)

    _pending_response: tuple[int, Mapping[str, str], Upstream, Leg | None]


@functools.lru_cache(maxsize=512)
def _merge_query(caller: str, own: str) -> str:
    """The caller's raw query string without its credentials (``DROPPED_QUERY``) and without the parameters the
    endpoint sets itself, then the endpoint's: one ``api-version``, the endpoint's. The caller's kept parameters are
    forwarded exactly as they were encoded."""
    replaced = DROPPED_QUERY.union(_query_name(part) for part in own.split("&") if part)
    kept = [part for part in caller.split("&") if part and _query_name(part) not in replaced]
    if own:
        kept.append(own)
    return "&".join(kept)


def _query_name(part: str) -> str:
    return unquote_plus(part.partition("=")[0]).lower()


@functools.lru_cache(maxsize=64)
def _forwarding(dropped: frozenset[str], forward: frozenset[str]) -> frozenset[str]:
    return dropped - forward


def cost_ceilings(named: RoutePlan, chosen: RoutePlan, asked: float | None) -> list[tuple[float, str]]:
    """Every cost ceiling that bounds a call, with where it comes from; the call is held to the smallest. A rule
    that sends the call to another alias never lifts the ceiling of the route the caller named."""
    found: list[tuple[float, str]] = []
    if asked is not None:
        found.append((asked, f"header {MAX_COST_HEADER}"))
    if named.max_cost_usd is not None:
        found.append((named.max_cost_usd, f"route {named.alias}"))
    if chosen is not named and chosen.max_cost_usd is not None:
        found.append((chosen.max_cost_usd, f"route {chosen.alias} (chosen by a rule)"))
    return found


def _usd(amount: float) -> str:
    """``0.00001`` rather than ``1e-05``: a price as people write it."""
    return f"{amount:.8f}".rstrip("0").rstrip(".") or "0"


def _looks_like_json(body: bytes) -> bool:
    """A cheap check that catches truncated bodies and HTML error pages without parsing the whole answer."""
    text = body.strip()
    return bool(text) and text[:1] in b"{[" and text[-1:] in b"}]"


def _estimate_tokens(body: bytes, data: Mapping[str, Any]) -> int:
    """A cheap upper-bound guess of a call's tokens: the body's size / 4 plus the output it asks for at most,
    within ``[0, MAX_TOKENS]`` (each bucket takes at most its capacity of it)."""
    return clamp_tokens(len(body) // 4 + (_requested_output(data) or 0))


class _NoHeaders:
    """An empty header view: shadow copies ignore the caller's pins and header-based stickiness."""

    def get(self, key: str, /) -> str | None:
        return None


_NO_HEADERS: Final = _NoHeaders()
_FRAMING_HEADERS: Final = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection"})


def _redirect_answer(
    status: int, headers: Mapping[str, str], endpoint: str
) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
    """What the caller gets for an endpoint's redirect when nothing better came: a 502 without ``Location`` (so a
    client that follows redirects cannot carry the prompt there) whose JSON error names the redirect."""
    message = (
        f"holyroute: endpoint '{endpoint}' answered {status} (a redirect); routed requests never follow redirects. "
        "Fix the endpoint's base_url (scheme, host, path, trailing segments)"
    )
    body = {"error": {"message": message, "type": "upstream_redirect", "param": None, "code": "holyroute_redirect"}}
    kept = [("content-type", "application/json")]
    request_id = headers.get("x-request-id")
    if request_id is not None:
        kept.append(("x-request-id", request_id))
    return 502, tuple(kept), json.dumps(body).encode()


def _response_headers(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    # The body is handed back decoded, so framing and encoding headers would lie about it.
    return tuple((k.lower(), v) for k, v in headers.items() if k.lower() not in _FRAMING_HEADERS)


def _swap_model(body: bytes, alias: bytes, model: bytes) -> bytes | None:
    """``body`` with its top-level model replaced, without re-serialising; ``None`` when that is not certain.

    ``alias`` and ``model`` are JSON string tokens (``b'"chat-default"'``). The top-level ``"model": "<alias>"``
    value is always in the body, so if the alias token occurs exactly once, that occurrence is the model's value (an
    escaped quote inside a longer string could only add a second occurrence, never remove this one).
    """
    if body.count(alias) != 1:
        return None
    return body.replace(alias, model)


def _operation(path: str) -> tuple[str, str] | None:
    """The API family and operation path of a request path, e.g. ``/v1/chat/completions`` -> chat."""
    trimmed = path.rstrip("/")
    for suffix, api in OPERATIONS.items():
        if trimmed.endswith(suffix) and (len(trimmed) == len(suffix) or trimmed[-len(suffix) - 1] == "/"):
            return api, suffix
    return None


def _sticky_key(spec: str, data: Mapping[str, Any], headers: HeaderLookup) -> str | None:
    if spec == "user":
        value = data.get("user") or data.get("safety_identifier")
    elif spec.startswith("header:"):
        value = headers.get(spec[7:].lower())
    else:
        value = data
        for part in spec[5:].split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    if value is None or value == "" or isinstance(value, dict | list):
        return None
    return str(value)


def _compile(config: Config) -> dict[str, RoutePlan]:
    prices = {name: p.row() for name, p in config.prices.items()}
    routes = {}

    def arm_of(target: Target) -> Arm:
        upstreams = []
        for entry in target.endpoints:
            ref = EndpointRef(endpoint=entry) if isinstance(entry, str) else entry
            upstream = _upstream(config, ref.endpoint, ref.model or target.model, prices)
            limits = limits_for(
                upstream.model, context_window=target.context_window, max_output_tokens=target.max_output_tokens
            )
            upstreams.append(dataclasses.replace(upstream, limits=limits) if limits is not None else upstream)
        return Arm(target.arm, target.model, tuple(upstreams), target.balance)

    def resolve(use: str | Target) -> str | Arm:
        return use if isinstance(use, str) else arm_of(use)

    for alias, route in config.routes.items():
        arms = [arm_of(target) for target in route.arms]
        rules = None
        if route.rules:
            rules, problems = compile_rules(
                route.rules, known_aliases=config.routes, at=f"routes.{alias}.rules", resolve=resolve
            )
            assert not problems, problems  # load_config checked them
        # A rollout's split comes from its engine at each call; this one (all stable) is only its shape.
        weights = [t.weight for t in route.targets] if route.rollout is None else [100.0, 0.0]
        picker = SplitPicker(alias, [a.name for a in arms], weights)
        token = json.dumps(alias).encode("utf-8")
        shadow = route.shadow
        shadow_arm = None
        if shadow is not None:
            shadow_ups = []
            for entry in shadow.endpoints:
                ref = EndpointRef(endpoint=entry) if isinstance(entry, str) else entry
                shadow_ups.append(_upstream(config, ref.endpoint, ref.model or shadow.model, prices))
            shadow_arm = Arm(shadow.arm, shadow.model, tuple(shadow_ups))
        routes[alias] = RoutePlan(
            alias,
            tuple(arms),
            picker,
            route.sticky,
            tuple(route.fallbacks),
            token,
            shadow_arm,
            shadow.sample if shadow is not None else 0.0,
            shadow.max_cost_usd_per_day if shadow is not None else None,
            rules,
            route.max_cost_usd,
        )
    return {alias: _with_floors(plan, routes) for alias, plan in routes.items()}


def _with_floors(plan: RoutePlan, routes: Mapping[str, RoutePlan]) -> RoutePlan:
    """``plan`` with the smallest context window and output cap among every upstream a call to it may reach."""
    arms = list(plan.arms)
    for alias in plan.fallbacks:
        arms.extend(routes[alias].arms)
    if plan.rules is not None:
        for verdict_use in plan.rules.uses:
            arms.extend(routes[verdict_use].arms if isinstance(verdict_use, str) else (verdict_use,))
    windows = [1 << 62]
    outputs = [1 << 62]
    for arm in arms:
        for upstream in arm.upstreams:
            limits = upstream.limits
            if limits is not None:
                windows.append(min(limits.context_window, limits.max_input_tokens or limits.context_window))
                if limits.max_output_tokens is not None:
                    outputs.append(limits.max_output_tokens)
    return dataclasses.replace(plan, fit_floor=min(windows), out_floor=min(outputs))


def _cost(
    upstream: Upstream | None, usage: Usage | None, wall_clock: Callable[[], float]
) -> tuple[float | None, str, str | None]:
    """What the call cost, where the price came from (``config``, ``endpoint``, ``catalogue@<version>``, ``none``)
    and the price context applied (the answer's ``service_tier`` when it changed the rates)."""
    if upstream is None:
        return None, "none", None
    if upstream.price_source != "catalogue" and upstream.price is not None:
        return (cost_usd(usage, upstream.price) if usage is not None else None), upstream.price_source, None
    if usage is None:
        known = catalogue_model(upstream.model, provider=upstream.provider, base_url=upstream.base_url)
        return None, catalogue_source() if known is not None else "none", None
    models = (usage.model, upstream.model) if usage.model and usage.model != upstream.model else (upstream.model,)
    found = catalogue_cost(usage, models, provider=upstream.provider, base_url=upstream.base_url, when=wall_clock())
    if found is None:
        return None, "none", None
    return found.cost_usd, found.source, found.service_tier


def _price(endpoint: Endpoint, model: str, prices: Mapping[str, PriceRow]) -> tuple[PriceRow | None, str]:
    """The endpoint's own price for the model, then the configuration's, each winning over the catalogue; without
    either, the built-in row (only to bound a call's cost before it is sent) and the catalogue prices the call."""
    if endpoint.prices:
        own = find_price(model, {name: p.row() for name, p in endpoint.prices.items()}, builtin=False)
        if own is not None:
            return own, "endpoint"
    configured = find_price(model, prices, builtin=False)
    if configured is not None:
        return configured, "config"
    return find_price(model, {}), "catalogue"


def _upstream(config: Config, name: str, model: str, prices: Mapping[str, PriceRow]) -> Upstream:
    endpoint = config.endpoints[name]
    price, source = _price(endpoint, model, prices)
    return Upstream(
        endpoint=name,
        model=model,
        base_url=endpoint.base_url,
        headers=endpoint.request_headers(),
        query=endpoint.query_string(),
        timeout=endpoint.timeout,
        price=price,
        stream_usage=endpoint.stream_usage,
        token=json.dumps(model).encode("utf-8"),
        forward=frozenset(endpoint.forward_headers),
        price_source=source,
        provider=endpoint.provider,
    )
